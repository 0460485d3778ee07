"""The lean JSON routes (attester/json_routes.py) answer as FastAPI's own routes do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from attester.app import create_app
from attester.json_routes import lean, lean_endpoints
from attester.settings import Settings

LEAN_PATHS = ("/v1/android/attestations", "/v1/apple/attestations", "/v1/attestations/renew")

BODIES = [
    b"",
    b"[]",
    b"null",
    b'"text"',
    b"{",
    b'{"challenge": "x",}',
    b"\xff\xfe",
    b"[" * 5000 + b"]" * 5000,  # deeper than json.loads recurses
    b"{}",
    b'{"challenge": 5, "key_proof": [], "certificate_chain": "x"}',
    b'{"challenge": "' + b"a" * 5000 + b'", "key_proof": "k", "certificate_chain": ["AA=="]}',
    b'{"certificate_chain": [], "challenge": "c", "key_proof": "k"}',
    b'{"certificate_chain": ["!!"], "challenge": "c", "key_proof": "k"}',
    b'{"certificate_chain": ["AAAA"], "challenge": "not-a-challenge", "key_proof": "k"}',
    b'{"attestation": "AAAA", "key_id": "AAAA", "client_data": "e30", "challenge": "c"}',
    b'{"key_thumbprint": "' + b"t" * 43 + b'", "challenge": "c", "key_proof": "k"}',
    b'{"key_thumbprint": "short", "challenge": "c", "key_proof": "k", "extra": 1}',
]


def _post(
    app: Any, path: str, body: bytes, *, content_types: list[bytes] = [b"application/json"]  # noqa: B006
) -> tuple[int, dict[str, str], Any]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"t"), *((b"content-type", c) for c in content_types),
                    (b"content-length", str(len(body)).encode()), (b"x-request-id", b"rid-1")],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, json.loads(payload) if payload else None


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Two apps, each with its own service (own rate-limit counters, own database)."""
    lean_app = create_app(Settings(data_dir=tmp_path_factory.mktemp("lean")))
    plain = create_app(Settings(data_dir=tmp_path_factory.mktemp("plain")), lean=False)
    yield lean_app, plain
    for app in (lean_app, plain):
        app.state.service.store.dispose()


def test_the_lean_routes_are_the_registrations_and_the_renewal(apps: Any) -> None:
    lean_app, _ = apps
    middleware = lean_app.build_middleware_stack()
    while not hasattr(middleware, "endpoints"):
        middleware = middleware.app
    assert sorted(middleware.endpoints) == sorted(LEAN_PATHS)


@pytest.mark.parametrize("path", LEAN_PATHS)
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_a_lean_route_answers_what_fastapi_answers(apps: Any, path: str, body: bytes) -> None:
    """Same status, problem code and body (fields and error types, never the caller's
    values) for bodies that do not validate, that do not parse, and that the service
    refuses."""
    lean_app, plain = apps
    lean_status, lean_headers, lean_body = _post(lean_app, path, body)
    status, headers, expected = _post(plain, path, body)
    assert (lean_status, lean_body) == (status, expected)
    assert lean_status in (400, 401, 403, 409, 410, 422, 429)
    assert set(lean_headers) == set(headers)
    for name in set(headers) - {"content-length"}:
        assert lean_headers[name] == headers[name]


class Body(BaseModel):
    value: str


def test_a_lean_route_of_another_shape_is_refused_when_the_app_is_built() -> None:
    router = APIRouter()

    @router.post("/async")
    @lean
    async def wrong(body: Body, request: Request) -> JSONResponse:  # not a plain def
        return JSONResponse({})

    with pytest.raises(TypeError, match="lean route"):
        lean_endpoints([router])


@pytest.mark.parametrize(
    "content_types",
    [[b"text/x+json"], [b"foo+json"], [b"text/plain", b"application/json"], [b"application"]],
)
def test_a_body_not_sent_as_json_is_refused_before_either_path(apps: Any, content_types: list[bytes]) -> None:
    """Found in review: the media-type check took the last Content-Type and any ``+json``;
    FastAPI reads the first and wants ``application/``."""
    lean_app, plain = apps
    for app in (lean_app, plain):
        status, _, body = _post(app, LEAN_PATHS[0], b"{}", content_types=content_types)
        assert (status, body["code"]) == (415, "unsupported_media_type")
