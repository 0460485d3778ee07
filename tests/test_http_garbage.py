"""Bad input never yields a 5xx, never hangs, never echoes the caller's bytes."""

from __future__ import annotations

import hashlib
import json
import random
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from attester.app import create_app
from tests.support import LiveServer, live_server

MARKER = "QmFkQnl0ZXNNYXJrZXI"  # would show up if a response echoed input


def _bodies(rng: random.Random) -> list[bytes]:
    shapes: list[object] = [
        {}, [], None, 0, "x", {"challenge": MARKER}, {"challenge": [MARKER]},
        {"certificate_chain": [MARKER, 5, None], "challenge": MARKER, "key_proof": MARKER},
        {"certificate_chain": MARKER, "challenge": {"a": MARKER}, "key_proof": 1.5},
        {"key_id": MARKER, "attestation_object": MARKER, "client_data": MARKER, "key_proof": MARKER},
        {"key_id": "", "attestation_object": "", "client_data": "", "key_proof": ""},
        {"key_thumbprint": MARKER * 2, "challenge": MARKER, "key_proof": MARKER + "." + MARKER + ".x"},
        {"key_thumbprint": "A" * 43, "challenge": "A" * 55, "key_proof": "a.b.c", "assertion": MARKER, "client_data": MARKER},
        {"certificate_chain": ["A" * 4000] * 12, "challenge": "A" * 55, "key_proof": "a.b.c"},
    ]
    bodies = [json.dumps(s).encode() for s in shapes]
    bodies += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))) for _ in range(20)]
    bodies += [b'{"challenge": "' + MARKER.encode() + b'"', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000]
    return bodies


@pytest.fixture
def post_paths(server: LiveServer) -> list[str]:
    with httpx.Client(base_url=server.url) as http:
        meta = http.get("/.well-known/client-attester").json()
    paths = ["/v1/challenge", "/v1/attestations/renew"]
    paths += [url.removeprefix("https://attester.test") for url in meta["attestation_endpoints"].values()]
    return paths


def test_http_garbage_bodies_get_4xx_problem_without_echo(server: LiveServer, post_paths: list[str]) -> None:
    rng = random.Random(20261122)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for path in post_paths:
            for body in _bodies(rng):
                response = http.post(path, content=body, headers={"content-type": "application/json"})
                if path == "/v1/challenge" and response.status_code == 200:
                    continue  # it reads no body: any JSON text will do (not UTF-8: below)
                assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                assert MARKER not in response.text
                assert isinstance(response.json()["code"], str)


# -- admin API (every route, both databases) -------------------------------------------
ADMIN_TOKEN = "garbage-test-admin-token-0123456789abcdef"
NASTY = ["\x00", "x\x00y", MARKER * 20, "é\u202e", "%", "'; DROP TABLE instances; --", "-1", "9" * 40, " "]


@pytest.fixture
def admin_server(make_settings: Any, database_url: str, clock: Any) -> Iterator[tuple[LiveServer, FastAPI]]:
    digest = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
    settings = make_settings(
        database_url=database_url, admin={"enabled": True, "tokens": [{"name": "ops", "sha256": digest}]}
    )
    app = create_app(settings, clock=clock)
    with live_server(app) as live:
        yield live, app
    app.state.service.store.dispose()


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves under /admin/v1 (its OpenAPI
    paths: every route of the app, included routers too)."""
    paths = app.openapi()["paths"]
    return [
        (method.upper(), path)
        for path, operations in sorted(paths.items())
        if path.startswith("/admin/v1")
        for method in sorted(operations)
    ]


def _fill(template: str, value: str) -> str:
    """The template with every {param} replaced by ``value`` (percent-encoded)."""
    quoted = urllib.parse.quote(value, safe="")
    return re.sub(r"\{[^}]+\}", quoted, template)


def test_http_garbage_admin_routes_get_4xx_problem_without_echo(
    admin_server: tuple[LiveServer, FastAPI],
) -> None:
    live, app = admin_server
    rng = random.Random(20261201)
    routes = admin_routes(app)
    assert len(routes) >= 7
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=live.url, timeout=10, headers=auth) as http:
        for method, template in routes:
            requests: list[tuple[str, dict[str, str], bytes | None]] = []
            for value in NASTY:
                path = _fill(template, value)
                params = {k: value for k in ("client_id", "platform", "key_thumbprint", "status", "after", "limit", "target")}
                requests.append((path, params, None))
            if method == "POST":
                path = _fill(template, "revoke" if "{action}" in template else "x")
                requests += [(path, {}, body) for body in _bodies(rng)]
                requests += [(path, {}, json.dumps({"reason": value}).encode()) for value in NASTY]
            for path, params, body in requests:
                response = http.request(
                    method, path, params=params, content=body, headers={"content-type": "application/json"}
                )
                assert 200 <= response.status_code < 500, (method, path, params, response.text)
                if response.status_code >= 400:
                    assert response.headers["content-type"].startswith("application/problem+json")
                    assert isinstance(response.json()["code"], str)
                assert MARKER not in response.text, (method, path)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Bearer " + ADMIN_TOKEN[:-1], "Basic x", ""])
def test_http_admin_every_route_without_valid_token_unauthorized(
    admin_server: tuple[LiveServer, FastAPI], authorization: str | None
) -> None:
    live, app = admin_server
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=live.url, timeout=10) as http:
        for method, template in admin_routes(app):
            # garbage bodies and parameters too: authentication comes before any parsing
            for body in (None, b"{", b'{"reason": "x"}'):
                response = http.request(
                    method,
                    _fill(template, "x"),
                    params={"limit": "-5"},
                    content=body,
                    headers={**headers, "content-type": "application/json"},
                )
                assert response.status_code == 401, (method, template, body, response.text)
                assert response.json()["code"] == "admin_unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"


def test_http_admin_disabled_every_route_not_found(
    admin_server: tuple[LiveServer, FastAPI], server: LiveServer
) -> None:
    _, enabled = admin_server
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.url, timeout=10, headers=auth) as http:
        for method, template in admin_routes(enabled):
            response = http.request(method, _fill(template, "x"), json={"reason": "x"})
            assert response.status_code == 404 and response.json()["code"] == "not_found", template


def test_http_garbage_renewal_nul_and_control_characters_4xx(
    admin_server: tuple[LiveServer, FastAPI],
) -> None:
    # both databases: PostgreSQL refuses NUL in text, which must not become a 500
    live, _ = admin_server
    with httpx.Client(base_url=live.url, timeout=10) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        for value in NASTY:
            body = {"key_thumbprint": value, "challenge": challenge, "key_proof": "a.b.c"}
            response = http.post("/v1/attestations/renew", json=body)
            assert 400 <= response.status_code < 500, (value, response.text)
            challenge = http.post("/v1/challenge").json()["challenge"]


# -- every public route (review): odd ids, odd methods, garbage query and body ----------------
ODD_IDS = [
    "-1", "99999999999999999999", "9223372036854775808", "x", "0x1", "1.5", "1e3", " 1", "01",
    "\x00", "%", MARKER, "0" * 300, "-0", "+1", "١",  # Arabic-Indic digit one
]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
DOCUMENTS = ["/.well-known/jwks.json", "/.well-known/client-attester"]


def public_routes(app: FastAPI) -> list[str]:
    """Every path template the app serves outside /admin (OpenAPI), plus the documents."""
    paths = [p for p in app.openapi()["paths"] if not p.startswith("/admin")]
    return sorted(set(paths) | set(DOCUMENTS))


def test_http_garbage_every_public_route_4xx_problem_without_echo(
    admin_server: tuple[LiveServer, FastAPI],
) -> None:
    live, app = admin_server
    templates = public_routes(app)
    assert "/statuslists/{list_id}" in templates and "/healthz" in templates
    rng = random.Random(20261202)
    with httpx.Client(base_url=live.url, timeout=10) as http:
        for template in templates:
            paths = [_fill(template, value) for value in ODD_IDS] if "{" in template else [template]
            for path in paths:
                for method in METHODS:
                    bodies: list[bytes | None] = [None]
                    if method in ("POST", "PUT", "PATCH"):
                        bodies += rng.sample(_bodies(rng), 4)
                    for body in bodies:
                        response = http.request(
                            method,
                            path,
                            params={"list_id": MARKER, "x": "\x00"},
                            content=body,
                            headers={"content-type": "application/json", "if-none-match": MARKER},
                        )
                        where = (method, path, response.status_code, response.text[:200])
                        # /readyz honestly reports this test server's missing revocation list
                        not_ready = path == "/readyz" and response.status_code == 503
                        assert response.status_code < 500 or not_ready, where
                        if not_ready and method != "HEAD":  # (HEAD: as GET, no content)
                            assert response.json()["code"] == "not_ready", where
                        if response.status_code >= 400 and method != "HEAD":
                            assert response.headers["content-type"].startswith(
                                "application/problem+json"
                            ), where
                            assert isinstance(response.json()["code"], str), where
                        assert MARKER not in response.text, where


@pytest.mark.parametrize("list_id", ["-1", "99999999999999999999", "9223372036854775808", "x", "1.5"])
def test_http_status_list_odd_id_not_found_or_invalid(
    admin_server: tuple[LiveServer, FastAPI], list_id: str
) -> None:
    live, _ = admin_server
    with httpx.Client(base_url=live.url, timeout=10) as http:
        response = http.get(f"/statuslists/{list_id}")
    assert response.status_code in (404, 422), response.text
    assert response.json()["code"] in ("not_found", "invalid_request")
