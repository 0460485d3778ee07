"""The core HTTP interface on a real loopback server (uvicorn in a thread)."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.support import LiveServer

SECRET_MARKER = "SECRET-CALLER-BYTES-1234"


@pytest.fixture
def http(server: LiveServer) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def _problem(response: httpx.Response, status: int, code: str) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert SECRET_MARKER not in response.text
    return body  # type: ignore[no-any-return]


def test_http_healthz_ready(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


def test_http_request_id_echoed_when_sane(http: httpx.Client) -> None:
    assert http.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    bad = http.get("/healthz", headers={"X-Request-ID": "<script>"}).headers["x-request-id"]
    assert bad != "<script>" and len(bad) == 16


def test_http_jwks_cacheable_with_etag_and_304(http: httpx.Client) -> None:
    response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age=300" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert keys and all(k["use"] == "sig" and k["alg"] == "ES256" and "d" not in k for k in keys)
    etag = response.headers["etag"]
    again = http.get("/.well-known/jwks.json", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = http.get("/.well-known/jwks.json", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


def test_http_metadata_lists_endpoints(http: httpx.Client, server: LiveServer) -> None:
    meta = http.get("/.well-known/client-attester").json()
    assert meta["issuer"] == "https://attester.test"
    assert meta["jwks_uri"] == "https://attester.test/.well-known/jwks.json"
    assert meta["challenge_endpoint"] == "https://attester.test/v1/challenge"
    assert meta["client_attestation_signing_alg_values_supported"] == ["ES256"]
    assert set(meta["platforms_supported"]) == set(meta["attestation_endpoints"])


def test_http_challenge_no_store(http: httpx.Client) -> None:
    response = http.post("/v1/challenge")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert len(body["challenge"]) == 55 and body["expires_in"] == 300


def test_http_body_over_limit_413(http: httpx.Client) -> None:
    body = json.dumps({"challenge": SECRET_MARKER * 5000})
    response = http.post("/v1/attestations/renew", content=body, headers={"content-type": "application/json"})
    _problem(response, 413, "request_too_large")


def test_http_chunked_body_over_limit_413(http: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1024

    response = http.post("/v1/attestations/renew", content=chunks(), headers={"content-type": "application/json"})
    _problem(response, 413, "request_too_large")


def test_http_malformed_json_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/attestations/renew", content=b'{"a": ' + SECRET_MARKER.encode(), headers={"content-type": "application/json"}
    )
    _problem(response, 400, "malformed_request")


def test_http_wrong_types_422_without_echo(http: httpx.Client) -> None:
    response = http.post(
        "/v1/attestations/renew", json={"key_thumbprint": [SECRET_MARKER], "challenge": 5, "key_proof": {}}
    )
    body = _problem(response, 422, "invalid_request")
    assert {e["field"] for e in body["errors"]} >= {"key_thumbprint", "challenge", "key_proof"}


def test_http_non_json_content_type_415(http: httpx.Client) -> None:
    response = http.post("/v1/attestations/renew", content=SECRET_MARKER, headers={"content-type": "text/plain"})
    _problem(response, 415, "unsupported_media_type")


def test_http_unknown_path_404_and_wrong_method_405(http: httpx.Client) -> None:
    _problem(http.get("/v1/" + SECRET_MARKER), 404, "not_found")
    _problem(http.get("/v1/challenge"), 405, "method_not_allowed")


def test_http_trailing_slash_404_not_a_redirect_to_the_host_header(http: httpx.Client) -> None:
    # Starlette's redirect_slashes answered 307 to http://<Host>/v1/..., which keeps the POST
    # and its body (found in review)
    for method, path in (("POST", "/v1/android/attestations/"), ("POST", "/v1/challenge/"),
                         ("GET", "/healthz/"), ("GET", "/.well-known/jwks.json/")):
        response = http.request(method, path, headers={"host": "evil.example"}, json={})
        assert "location" not in response.headers
        _problem(response, 404, "not_found")


def test_http_head_answers_as_get_without_content(http: httpx.Client) -> None:
    # caches and monitors ask with HEAD; the routes are GET only and answered 405 (review)
    for path in ("/.well-known/jwks.json", "/statuslists/0", "/healthz", "/.well-known/client-attester"):
        got, head = http.get(path), http.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("etag") == got.headers.get("etag")
    assert http.head("/v1/challenge").status_code == 405  # as GET: a POST-only route


def test_http_status_list_only_under_its_one_url(http: httpx.Client) -> None:
    assert http.get("/statuslists/0").status_code == 200
    for alias in ("00", "-0", "0.0", "+0", "1_0", "%200", "\u0660", "99999999999999999999", "9" * 5000):
        _problem(http.get("/statuslists/" + alias), 404, "not_found")


def test_http_json_body_not_utf8_400(http: httpx.Client) -> None:
    text = '{"key_thumbprint": "%s", "challenge": "c", "key_proof": "a.b.c"}' % ("A" * 43)
    for body in (text.encode("utf-16"), text.encode("utf-16-le"), text.encode("utf-32"),
                 text.encode() + b"\xff"):
        response = http.post("/v1/attestations/renew", content=body,
                             headers={"content-type": "application/json"})
        problem = _problem(response, 400, "malformed_request")
        assert "UTF-8" in problem["title"]
    # the same text in UTF-8 (and with its byte order mark, which RFC 8259 lets a parser skip)
    for body in (text.encode(), text.encode("utf-8-sig")):
        response = http.post("/v1/attestations/renew", content=body,
                             headers={"content-type": "application/json"})
        assert response.json()["code"] != "malformed_request", response.text


def test_http_renew_unknown_instance_404(http: httpx.Client) -> None:
    challenge = http.post("/v1/challenge").json()["challenge"]
    response = http.post(
        "/v1/attestations/renew",
        json={"key_thumbprint": "A" * 43, "challenge": challenge, "key_proof": "a.b.c"},
    )
    _problem(response, 404, "instance_not_found")


def test_http_renew_forged_challenge_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/attestations/renew",
        json={"key_thumbprint": "A" * 43, "challenge": SECRET_MARKER, "key_proof": "a.b.c"},
    )
    _problem(response, 400, "challenge_invalid")


def test_http_slow_client_does_not_block_others(server: LiveServer, http: httpx.Client) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        assert http.get("/healthz").status_code == 200


def test_http_logs_are_json_with_request_id(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    from attester.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="attester.http")
    http.get("/healthz", headers={"X-Request-ID": "trace-42"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "trace-42"]
        if records:
            break
        time.sleep(0.02)
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["msg"] == "request" and line["status"] == 200 and line["path"] == "/healthz"
    assert line["request_id"] == "trace-42"


def test_http_database_gone_is_503_storage_unavailable(make_settings, clock) -> None:  # type: ignore[no-untyped-def]
    """A database that cannot be opened (here the SQLite file replaced by a directory, after
    the pool let go of its connections) answers 503 storage_unavailable with Retry-After,
    without the driver's message (paths, SQL); a registration attempt likewise."""
    import shutil

    from attester.app import create_app
    from tests.support import live_server, make_key_proof, new_instance_key

    settings = make_settings()
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        store = app.state.service.store
        store.dispose()
        database = settings.data_dir / "attester.db"
        for path in database.parent.glob("attester.db*"):
            path.unlink() if path.is_file() else shutil.rmtree(path)
        database.mkdir()
        proof = make_key_proof(new_instance_key(), challenge=challenge, aud=settings.issuer,
                               iat=int(clock().timestamp()))
        response = http.post("/v1/attestations/renew", json={"key_thumbprint": "x" * 43, "challenge": challenge,
                                                "key_proof": proof})
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "storage_unavailable"
        assert response.headers["retry-after"] == "1"
        assert "attester.db" not in response.text and "sqlite" not in response.text.lower()
    store.dispose()


def test_http_database_fault_that_is_no_outage_stays_500(make_settings, clock) -> None:  # type: ignore[no-untyped-def]
    """A missing table is a fault of ours, not an outage: 500 internal_error (no Retry-After,
    no driver message), not storage_unavailable."""
    from sqlalchemy import text

    from attester.app import create_app
    from tests.support import live_server, make_key_proof, new_instance_key

    settings = make_settings()
    app = create_app(settings, clock=clock)
    store = app.state.service.store
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        with store.engine.begin() as connection:
            connection.execute(text("DROP TABLE redeemed_challenges"))
        proof = make_key_proof(new_instance_key(), challenge=challenge, aud=settings.issuer,
                               iat=int(clock().timestamp()))
        response = http.post("/v1/attestations/renew", json={
            "key_thumbprint": "x" * 43, "challenge": challenge, "key_proof": proof})
        assert response.status_code == 500 and response.json()["code"] == "internal_error"
        assert "retry-after" not in response.headers and "redeemed" not in response.text
    store.dispose()


def test_storage_outage_classification() -> None:
    """Which database errors are outages (503, retry) and which are faults (500)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from attester.storage.group_commit import StorageBusy, storage_outage

    def sqlite_error(message: str) -> OperationalError:
        return OperationalError("SELECT 1", {}, sqlite3.OperationalError(message))

    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert storage_outage(sqlite_error("database is locked"))
    assert storage_outage(sqlite_error("unable to open database file"))
    assert not storage_outage(sqlite_error("no such table: instances"))
    assert not storage_outage(sqlite_error("database disk image is malformed"))
    assert storage_outage(OperationalError("x", {}, PgError("08006")))  # connection failure
    assert storage_outage(OperationalError("x", {}, PgError("40P01")))  # deadlock
    assert storage_outage(OperationalError("x", {}, PgError("57P01")))  # admin shutdown
    assert not storage_outage(OperationalError("x", {}, PgError("42P01")))  # undefined table
    assert storage_outage(StorageBusy("waited"))
    assert not storage_outage(ValueError("x"))
    # a real failed connect: psycopg sets no SQLSTATE when no server answers
    from sqlalchemy import create_engine

    from tests.support import free_port

    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(OperationalError) as refused:
            engine.connect()
    finally:
        engine.dispose()
    assert storage_outage(refused.value)


def test_fastapi_opentelemetry_hooks_are_off(tmp_path: Path) -> None:
    """Neither app asks for OpenTelemetry providers per request (our metrics and access
    log are our own); FastAPI's flag, read the way FastAPI reads it."""
    from attester.app import create_admin_app, create_app
    from attester.settings import Settings

    app = create_app(Settings(data_dir=tmp_path))
    admin = create_admin_app(app.state.service)
    assert not app._native_telemetry.enabled() and not admin._native_telemetry.enabled()
    app.state.service.store.dispose()
