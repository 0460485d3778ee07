"""Admin API over HTTP (SQLite and PostgreSQL): authentication, instance look-ups, revoke /
suspend / reinstate flipping the Token Status List bits of issued JWTs, renewal refused,
registry reload, keys, audit; and the admin API on its own port only."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws, jwt

from attester.admin import authenticate, new_token
from attester.app import create_admin_app, create_app
from attester.settings import AdminToken
from tests.android.status_server import StatusServer
from tests.android.synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, make_root
from tests.android.test_android_http import Device, _problem
from tests.support import LiveServer, MutableClock, live_server
from tests.test_status_list import read_status

CLIENT_ID = "https://app.example/android"
TOKEN, DIGEST = new_token()


@dataclass
class Admin:
    live: LiveServer
    http: httpx.Client
    admin: httpx.Client
    device: Device
    config: Path


def _app(**extra: Any) -> dict[str, Any]:
    return {
        "client_id": CLIENT_ID,
        "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]},
        **extra,
    }


def _write_config(path: Path, root_file: Path, status_url: str, apps: list[dict[str, Any]]) -> Path:
    from tests.e2e.e2e_support import write_config

    return write_config(
        path,
        {
            "issuer": "https://attester.test",
            "android": {"revocation_url": status_url, "test_root_files": [root_file]},
            "apps": apps,
        },
    )


@pytest.fixture
def stack(tmp_path: Path, database_url: str, clock: MutableClock) -> Iterator[Admin]:
    from attester.settings import load_settings

    root = make_root()
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _write_config(tmp_path / "attester.toml", root_file, status.url, [_app()])
    settings = load_settings(
        config,
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin={"enabled": True, "tokens": [{"name": "ops", "sha256": DIGEST}]},
    )
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=20) as http, httpx.Client(
        base_url=live.url + "/admin/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=20
    ) as admin:
        yield Admin(live, http, admin, Device(http, root, clock), config)
    app.state.service.store.dispose()
    status.close()


def _claims(token: str) -> dict[str, Any]:
    return dict(json.loads(jwt.JWT(jwt=token).token.objects["payload"]))


def _status_of(stack: Admin, attestation: str) -> int:
    """What an AS would do: fetch the list at the JWT's uri, verify it, read the JWT's index."""
    ref = _claims(attestation)["status"]["status_list"]
    assert ref["uri"].startswith("https://attester.test/statuslists/")
    response = stack.http.get(ref["uri"].removeprefix("https://attester.test"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/statuslist+jwt"
    assert response.headers["cache-control"] == "public, max-age=300"
    token = jws.JWS()
    token.deserialize(response.text)
    keys = jwk.JWKSet.from_json(stack.http.get("/.well-known/jwks.json").text)
    token.verify(keys.get_key(token.jose_header["kid"]))
    claims = json.loads(token.payload)
    assert claims["sub"] == ref["uri"]
    return read_status(claims["status_list"], ref["idx"])


def _registered(stack: Admin) -> tuple[str, str]:
    response = stack.device.register()
    assert response.status_code == 200, response.text
    thumb = response.json()["key_thumbprint"]
    listed = stack.admin.get("/instances", params={"key_thumbprint": thumb}).json()["instances"]
    return listed[0]["id"], response.json()["client_attestation"]


def test_admin_token_matches_only_its_digest() -> None:
    tokens = (AdminToken(name="a", sha256=DIGEST), AdminToken(name="b", sha256="0" * 64))
    assert authenticate(tokens, TOKEN) == "a"
    assert authenticate(tokens, TOKEN + "x") is None and authenticate(tokens, "") is None


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"bearer {TOKEN}x"]
)
def test_admin_http_without_valid_token_unauthorized(stack: Admin, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = stack.http.get("/admin/v1/instances", headers=headers)
    _problem(response, 401, "admin_unauthorized")


def test_admin_http_disabled_by_default_not_found(server: LiveServer) -> None:
    response = httpx.get(server.url + "/admin/v1/instances", headers={"Authorization": f"Bearer {TOKEN}"})
    _problem(response, 404, "not_found")


def test_admin_http_jwt_carries_status_reference_valid(stack: Admin) -> None:
    _, attestation = _registered(stack)
    assert _status_of(stack, attestation) == 0


def test_admin_http_lookups_by_filters(stack: Admin) -> None:
    instance_id, _ = _registered(stack)
    for params in ({"client_id": CLIENT_ID}, {"platform": "android"}, {"status": "active"}, {}):
        ids = [i["id"] for i in stack.admin.get("/instances", params=params).json()["instances"]]
        assert ids == [instance_id], params
    assert stack.admin.get("/instances", params={"status": "revoked"}).json()["instances"] == []
    assert stack.admin.get("/instances", params={"platform": "apple"}).json()["instances"] == []
    shown = stack.admin.get(f"/instances/{instance_id}").json()
    assert shown["client_id"] == CLIENT_ID and len(shown["status_entries"]) == 1
    assert "apple_public_key" not in shown and "instance_jwk" not in shown
    assert shown["android_facts"]["provisioning_rule"] and shown["apple_risk_metric"] is None
    _problem(stack.admin.get("/instances/nope"), 404, "instance_not_found")
    _problem(stack.admin.get("/instances", params={"status": "weird"}), 422, "invalid_request")


def test_admin_http_revoke_flips_status_and_refuses_renewal(stack: Admin) -> None:
    instance_id, first = _registered(stack)
    renewed = stack.device.renew()
    assert renewed.status_code == 200, renewed.text
    second = renewed.json()["client_attestation"]
    response = stack.admin.post(f"/instances/{instance_id}/revoke", json={"reason": "stolen device"})
    assert response.status_code == 200 and response.json()["status"] == "revoked"
    assert _status_of(stack, first) == 1 and _status_of(stack, second) == 1
    _problem(stack.device.renew(), 403, "instance_revoked")
    _problem(stack.admin.post(f"/instances/{instance_id}/reinstate", json={"reason": "x"}), 409, "instance_status_conflict")
    refused, audit = stack.admin.get("/audit", params={"target": instance_id}).json()["audit"]
    assert audit["actor"] == "ops" and audit["action"] == "instance.revoke"
    assert audit["reason"] == "stolen device"
    assert audit["before"] == {"status": "active"}
    assert audit["after"] == {"status": "revoked", "status_entries_changed": 2}
    # the refused reinstatement is on record too, newest first, with its problem code
    assert refused["actor"] == "ops" and refused["action"] == "instance.reinstate.refused"
    assert refused["reason"] == "x" and refused["before"] is None
    assert refused["after"] == {"code": "instance_status_conflict", "instance_status": "revoked"}


def test_admin_http_suspend_then_reinstate(stack: Admin) -> None:
    instance_id, attestation = _registered(stack)
    assert stack.admin.post(f"/instances/{instance_id}/suspend", json={"reason": "check"}).status_code == 200
    assert _status_of(stack, attestation) == 2
    _problem(stack.device.renew(), 403, "instance_suspended")
    assert stack.admin.post(f"/instances/{instance_id}/reinstate", json={"reason": "ok"}).status_code == 200
    assert _status_of(stack, attestation) == 0
    renewed = stack.device.renew()
    assert renewed.status_code == 200 and _status_of(stack, renewed.json()["client_attestation"]) == 0


def test_admin_http_status_change_needs_reason(stack: Admin) -> None:
    instance_id, _ = _registered(stack)
    for body in ({}, {"reason": ""}, {"reason": "x" * 501}, {"reason": "x", "extra": 1}):
        _problem(stack.admin.post(f"/instances/{instance_id}/revoke", json=body), 422, "invalid_request")
    _problem(stack.admin.post(f"/instances/{instance_id}/delete", json={"reason": "x"}), 422, "invalid_request")
    _problem(stack.admin.post("/instances/nope/revoke", json={"reason": "x"}), 404, "instance_not_found")
    # the refusal on an unknown instance is audited; the requests the API refused before
    # reaching the action (an invalid body or action) are not actions and are not
    audit = stack.admin.get("/audit").json()["audit"]
    assert [(a["action"], a["target"], a["after"]) for a in audit] == [
        ("instance.revoke.refused", "nope", {"code": "instance_not_found"})
    ]


def test_admin_http_status_list_etag_not_modified(stack: Admin) -> None:
    instance_id, _ = _registered(stack)
    first = stack.http.get("/statuslists/0")
    again = stack.http.get("/statuslists/0", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"]
    for header in ("W/" + first.headers["etag"], '"other", ' + first.headers["etag"], "*"):
        assert stack.http.get("/statuslists/0", headers={"If-None-Match": header}).status_code == 304
    assert stack.http.get("/statuslists/0", headers={"If-None-Match": '"other"'}).status_code == 200
    # a revocation changes the list: the old tag no longer matches
    assert stack.admin.post(f"/instances/{instance_id}/revoke", json={"reason": "x"}).status_code == 200
    changed = stack.http.get("/statuslists/0", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
    _problem(stack.http.get("/statuslists/7"), 404, "not_found")
    _problem(stack.http.get("/statuslists/x"), 404, "not_found")


def test_admin_http_app_without_status_list_issues_no_status(
    tmp_path: Path, stack: Admin
) -> None:
    stack_config = stack.config.read_text().replace(
        f'client_id = "{CLIENT_ID}"', f'client_id = "{CLIENT_ID}"\nstatus_list = false'
    )
    stack.config.write_text(stack_config)
    response = stack.admin.post("/apps/reload")
    assert response.status_code == 200 and response.json() == {"apps": [CLIENT_ID]}
    apps = stack.admin.get("/apps").json()["apps"]
    assert apps[0]["status_list"] is False and apps[0]["android"]["min_security_level"] == "tee"
    assert apps[0]["effective_attestation_lifetime"] == 3600
    _, attestation = _registered(stack)
    assert "status" not in _claims(attestation)
    audit = stack.admin.get("/audit").json()["audit"]
    assert audit[0]["action"] == "apps.reload" and audit[0]["actor"] == "ops"
    # the policy change itself is in the record, not only the app ids
    assert audit[0]["before"]["apps"][CLIENT_ID]["status_list"] is True
    assert audit[0]["after"]["apps"][CLIENT_ID]["status_list"] is False


def test_admin_http_reload_invalid_registry_refused(stack: Admin) -> None:
    stack.config.write_text(stack.config.read_text() + "\nunknown_setting = 1\n")
    response = stack.admin.post("/apps/reload")
    _problem(response, 422, "registry_invalid")
    assert any("unknown_setting" in e for e in response.json()["errors"])
    assert [a["client_id"] for a in stack.admin.get("/apps").json()["apps"]] == [CLIENT_ID]
    refused = stack.admin.get("/audit").json()["audit"][0]
    assert refused["action"] == "apps.reload.refused" and refused["actor"] == "ops"
    assert refused["after"] == {"code": "registry_invalid", "errors": response.json()["errors"]}


def test_admin_http_keys_listed(stack: Admin) -> None:
    keys = stack.admin.get("/keys").json()["keys"]
    jwks = stack.http.get("/.well-known/jwks.json").json()["keys"]
    assert [k["state"] for k in keys] == ["active"] and keys[0]["kid"] == jwks[0]["kid"]


def test_admin_http_own_port_only(make_settings: Any, clock: MutableClock) -> None:
    settings = make_settings(admin={"enabled": True, "port": 1, "tokens": [{"name": "ops", "sha256": DIGEST}]})
    public = create_app(settings, clock=clock)
    admin = create_admin_app(public.state.service)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with live_server(public) as main, live_server(admin) as side:
        _problem(httpx.get(main.url + "/admin/v1/keys", headers=headers), 404, "not_found")
        assert httpx.get(side.url + "/admin/v1/keys", headers=headers).status_code == 200
        _problem(httpx.get(side.url + "/v1/challenge"), 404, "not_found")
    public.state.service.store.dispose()


def test_admin_http_reload_platform_rule_violation_refused(stack: Admin) -> None:
    text = stack.config.read_text().replace("[apps.android]", '[apps.android]\nmin_security_level = "software"')
    stack.config.write_text(text)
    response = stack.admin.post("/apps/reload")
    _problem(response, 422, "registry_invalid")
    assert stack.admin.get("/apps").json()["apps"][0]["android"]["min_security_level"] == "tee"


def _no_active_key(stack: Admin) -> None:
    """Every signing key activates in a year: the key store has no active key now."""
    store = stack.live.server.config.app.state.service.key_store  # type: ignore[attr-defined]
    path = store.directory / "keys.json"
    data = json.loads(path.read_text())
    for record in data["keys"]:
        record["activates_at"] = "2099-01-01T00:00:00+00:00"
    path.write_text(json.dumps(data))
    time.sleep(1.1)  # issuance looks at keys.json at most once a second (KeyStore.reload)


def test_admin_http_no_active_key_issuance_unavailable(stack: Admin) -> None:
    _no_active_key(stack)
    response = stack.device.register()
    _problem(response, 503, "signing_key_unavailable")
    _problem(stack.http.get("/statuslists/0"), 503, "signing_key_unavailable")
    _problem(stack.http.get("/readyz"), 503, "not_ready")
    assert stack.http.get("/healthz").status_code == 200  # liveness: the process answers


def test_admin_http_tokens_and_keys_never_in_responses_or_logs(
    stack: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    instance_id, _ = _registered(stack)
    wrong = "Bearer " + TOKEN[::-1]
    bodies = [stack.admin.get(path).text for path in ("/instances", f"/instances/{instance_id}", "/apps", "/keys")]
    bodies.append(stack.admin.post(f"/instances/{instance_id}/suspend", json={"reason": "x"}).text)
    bodies.append(stack.admin.get("/audit").text)
    bodies.append(stack.http.get("/admin/v1/keys", headers={"Authorization": wrong}).text)
    key_dir = stack.live.server.config.app.state.service.key_store.directory  # type: ignore[attr-defined]
    private = [p.read_text().splitlines()[1] for p in key_dir.glob("*.pem")]  # a line of each PEM key
    assert private
    logged = "\n".join(r.getMessage() + repr(getattr(r, "fields", "")) for r in caplog.records)
    for secret in (TOKEN, TOKEN[::-1], DIGEST, *private):
        assert all(secret not in body for body in bodies)
        assert secret not in logged
    assert "admin authentication failed" in logged


def test_admin_http_key_store_unreadable_jwks_problem_503(stack: Admin) -> None:
    """The cached-documents layer hands a JWKS it cannot build to the route, whose error
    handling answers 503 problem+json (never a bare 500)."""
    store = stack.live.server.config.app.state.service.key_store  # type: ignore[attr-defined]
    (store.directory / "keys.json").write_text("not json")
    _problem(stack.http.get("/.well-known/jwks.json"), 503, "signing_key_unavailable")
