"""OpenAPI at /openapi.json and Swagger UI at /docs, with each endpoint's problem codes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from attester.app import create_app
from attester.errors import STATUS
from attester.openapi import problem_responses
from tests.support import LiveServer, MutableClock, live_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec_server(make_settings: Any, clock: MutableClock) -> Iterator[LiveServer]:
    app = create_app(make_settings(), clock=clock)
    with live_server(app) as live:
        yield live
    app.state.service.store.dispose()


@pytest.fixture
def spec(spec_server: LiveServer) -> dict[str, Any]:
    response = httpx.get(spec_server.url + "/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def documented(spec: dict[str, Any], path: str, method: str) -> dict[str, int]:
    """code -> status as documented for one operation."""
    out: dict[str, int] = {}
    for status, response in spec["paths"][path][method]["responses"].items():
        for code in response.get("x-problem-codes", []):
            out[code] = int(status)
            media = response["content"]["application/problem+json"]
            assert code in media["schema"]["properties"]["code"]["enum"]
            assert media["examples"][code]["value"]["status"] == int(status)
    return out


def _codes_in_source(*parts: str) -> set[str]:
    """Problem codes written as string literals in these source trees (STATUS keys only)."""
    found: set[str] = set()
    for part in parts:
        path = ROOT / part
        files = [path] if path.is_file() else list(path.rglob("*.py"))
        for file in files:
            found |= set(re.findall(r'"([a-z][a-z0-9_]+)"', file.read_text())) & STATUS.keys()
    return found


def test_openapi_every_endpoint_documents_problem_codes_with_table_status(spec: dict[str, Any]) -> None:
    operations = [
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/.well-known/jwks.json", "get"),
        ("/v1/challenge", "post"),
        ("/v1/attestations/renew", "post"),
        ("/v1/android/attestations", "post"),
        ("/v1/apple/attestations", "post"),
    ]
    for path, method in operations:
        codes = documented(spec, path, method)
        assert codes, path
        assert all(STATUS[c] == s for c, s in codes.items()), path
    assert documented(spec, "/v1/challenge", "post")["rate_limited"] == 429
    assert documented(spec, "/readyz", "get") == {"not_ready": 503}
    # FastAPI's own 422 schema is replaced by the problem documentation
    renew = spec["paths"]["/v1/attestations/renew"]["post"]["responses"]["422"]
    assert "application/json" not in renew["content"]


@pytest.mark.parametrize(
    ("path", "sources"),
    [
        ("/v1/android/attestations", ("platform_verifiers/android", "attester/platforms/android.py")),
        ("/v1/apple/attestations", ("platform_verifiers/apple",)),
    ],
)
def test_openapi_platform_endpoints_document_every_verifier_code(
    spec: dict[str, Any], path: str, sources: tuple[str, ...]
) -> None:
    """Each code a platform's verifier can raise is documented for registration or renewal."""
    codes = documented(spec, path, "post")
    renewal = documented(spec, "/v1/attestations/renew", "post")
    missing = _codes_in_source(*sources) - codes.keys() - renewal.keys()
    # revocation_list_malformed is the fetcher's, kept server-side (the last good list is used)
    assert missing <= {"revocation_list_malformed"}, sorted(missing)
    for shared in ("challenge_replayed", "key_proof_wrong_audience", "rate_limited", "internal_error"):
        assert shared in codes


def test_openapi_renewal_documents_challenge_and_key_proof_codes(spec: dict[str, Any]) -> None:
    codes = documented(spec, "/v1/attestations/renew", "post")
    needed = _codes_in_source("attester/challenges.py", "attester/keyproof.py")
    assert needed <= codes.keys(), sorted(needed - codes.keys())


def test_openapi_problem_responses_unknown_code_raises() -> None:
    with pytest.raises(ValueError, match="no_such_code"):
        problem_responses("challenge_invalid", "no_such_code")


def test_openapi_problem_responses_groups_by_status() -> None:
    responses = problem_responses("challenge_invalid", "challenge_expired", "challenge_replayed")
    assert set(responses) == {400, 409}
    assert responses[400]["x-problem-codes"] == ["challenge_invalid", "challenge_expired"]


def test_openapi_docs_page_served(spec_server: LiveServer) -> None:
    response = httpx.get(spec_server.url + "/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text and "swagger-ui" in response.text


def test_openapi_docs_disabled_not_served(make_settings: Any, clock: MutableClock) -> None:
    app = create_app(make_settings(docs={"enabled": False}), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/openapi.json").json()["code"] == "not_found"
        assert http.get("/docs").json()["code"] == "not_found"
    app.state.service.store.dispose()
