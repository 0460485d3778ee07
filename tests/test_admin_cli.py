"""CLI mirror of the admin API: instances, apps list/check, purge, admin token; and ``serve``
with the admin API on its own port."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from attester.service import build_service
from attester.settings import load_settings
from tests.e2e.e2e_support import write_config
from tests.support import free_port
from tests.test_cli import serving

ATTESTER = [sys.executable, "-m", "attester.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ATTESTER, *args], capture_output=True, text=True, timeout=60, check=False)


def _seed(data: Path) -> tuple[str, int]:
    """One registered instance with one status-list entry, made through the service."""
    service = build_service(load_settings(data_dir=data))
    try:
        record = service.store.register_instance(
            platform="android", client_id="https://wallet.example.com/client", key_thumbprint="t" * 43,
            instance_jwk={"kty": "EC"}, now=datetime.now(UTC),
        )
        claim = service.status_lists.allocate(record.id, expires_at=datetime.now(UTC) + timedelta(hours=1))
        return record.id, int(claim["status_list"]["idx"])
    finally:
        service.store.dispose()


def test_cli_instances_list_show_revoke_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    instance_id, idx = _seed(data)
    listed = _run("instances", "list", "--data-dir", str(data), "--status", "active")
    assert listed.returncode == 0, listed.stderr
    assert [i["id"] for i in json.loads(listed.stdout)["instances"]] == [instance_id]
    revoked = _run("instances", "revoke", instance_id, "--reason", "lost", "--data-dir", str(data))
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["status"] == "revoked"
    shown = json.loads(_run("instances", "show", instance_id, "--data-dir", str(data)).stdout)
    assert shown["status_entries"] == [{"list": 0, "idx": idx, "status": 1}]
    again = _run("instances", "reinstate", instance_id, "--reason", "x", "--data-dir", str(data))
    assert again.returncode == 1 and json.loads(again.stderr)["code"] == "instance_status_conflict"
    missing = _run("instances", "show", "nope", "--data-dir", str(data))
    assert missing.returncode == 1 and json.loads(missing.stderr)["code"] == "instance_not_found"
    from attester.storage import create_store
    from attester.storage.admin import AdminStore

    store = create_store(f"sqlite:///{(data / 'attester.db').resolve()}")
    audit = AdminStore(store.engine).audit_records(target=instance_id)
    store.dispose()
    refused, done = audit[:2]  # newest first: the refused reinstatement, then the revocation
    assert done.action == "instance.revoke" and done.actor.startswith("cli:")
    assert refused.action == "instance.reinstate.refused" and refused.actor == done.actor
    assert refused.after == {"code": "instance_status_conflict", "instance_status": "revoked"}


def test_cli_instances_revoke_needs_reason(tmp_path: Path) -> None:
    result = _run("instances", "revoke", "some-id", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2 and "--reason" in result.stderr


def test_cli_instances_bounds_checked_like_the_api(tmp_path: Path) -> None:
    data = tmp_path / "data"
    instance_id, _ = _seed(data)
    for limit in ("-1", "0", "1001"):
        listed = _run("instances", "list", "--limit", limit, "--data-dir", str(data))
        assert listed.returncode == 1 and json.loads(listed.stderr)["code"] == "invalid_request", limit
    for reason in ("x" * 501, "line\nbreak", "\x7f"):
        refused = _run("instances", "revoke", instance_id, "--reason", reason, "--data-dir", str(data))
        assert refused.returncode == 1 and json.loads(refused.stderr)["code"] == "invalid_request"
    shown = json.loads(_run("instances", "show", instance_id, "--data-dir", str(data)).stdout)
    assert shown["status"] == "active"


def test_cli_apps_list_and_check(tmp_path: Path) -> None:
    listed = _run("apps", "list", "--data-dir", str(tmp_path / "d"))
    assert listed.returncode == 0
    app = json.loads(listed.stdout)["apps"][0]
    assert app["client_id"] == "https://wallet.example.com/client" and app["status_list"] is True
    good = write_config(tmp_path / "good.toml", {"apps": [{"client_id": "a", "status_list": False}]})
    checked = _run("apps", "check", str(good))
    assert checked.returncode == 0 and json.loads(checked.stdout) == {"valid": True, "apps": ["a"]}
    bad = write_config(tmp_path / "bad.toml", {"apps": [{"client_id": "a"}, {"client_id": "a"}]})
    refused = _run("apps", "check", str(bad))
    assert refused.returncode == 2 and "configured twice" in refused.stderr
    assert _run("apps", "check", str(tmp_path / "missing.toml")).returncode == 2
    software = write_config(
        tmp_path / "software.toml",
        {"apps": [{"client_id": "a", "android": {
            "package_names": ["p"], "signing_cert_sha256": ["00" * 32], "min_security_level": "software",
        }}]},
    )
    platform_rule = _run("apps", "check", str(software))  # a rule the Android platform adds
    assert platform_rule.returncode == 2 and "allow_software_level" in platform_rule.stderr


def test_cli_purge_deletes_expired(tmp_path: Path) -> None:
    data = tmp_path / "data"
    service = build_service(load_settings(data_dir=data))
    old = datetime.now(UTC) - timedelta(days=2)
    record = service.store.register_instance(
        platform="android", client_id="c", key_thumbprint="t" * 43, instance_jwk={}, now=old
    )
    service.status_lists.allocate(record.id, expires_at=old)
    service.store.record_issued(jti="j", instance_id=record.id, kid="k", issued_at=old, expires_at=old)
    service.store.dispose()
    result = _run("purge", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted"] == {
        "challenges": 0, "status_entries": 1, "issued_attestations": 1, "audit": 0,
    }
    from attester.storage.admin import AdminStore

    service = build_service(load_settings(data_dir=data))
    audit = AdminStore(service.store.engine).audit_records()
    service.store.dispose()
    assert [(a.action, a.actor[:4]) for a in audit] == [("purge", "cli:")]
    assert audit[0].after == {"deleted": json.loads(result.stdout)["deleted"]}


def test_cli_keys_rotate_audited(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rotated = _run("keys", "rotate", "--data-dir", str(data))
    assert rotated.returncode == 0, rotated.stderr
    kid = json.loads(rotated.stdout)["kid"]
    from attester.storage.admin import AdminStore

    service = build_service(load_settings(data_dir=data))
    audit = AdminStore(service.store.engine).audit_records(target=kid)
    service.store.dispose()
    assert [(a.action, a.actor[:4], a.after["kid"]) for a in audit] == [("keys.rotate", "cli:", kid)]


def test_cli_admin_token_prints_matching_digest() -> None:
    result = _run("admin", "token", "--name", "ops")
    body = json.loads(result.stdout)
    assert body["name"] == "ops" and len(body["token"]) >= 43
    assert hashlib.sha256(body["token"].encode()).hexdigest() == body["sha256"]


def test_cli_serve_admin_on_own_port(tmp_path: Path) -> None:
    token = json.loads(_run("admin", "token").stdout)
    admin_port = free_port()
    config: dict[str, Any] = {
        "admin": {"enabled": True, "port": admin_port, "tokens": []},
    }
    path = tmp_path / "c.toml"
    write_config(path, {k: v for k, v in config.items()})
    # write_config has no array-of-tables support for admin.tokens: append it by hand
    text = path.read_text().replace("tokens = []\n", "")
    path.write_text(text + f'\n[[admin.tokens]]\nname = "ops"\nsha256 = "{token["sha256"]}"\n')
    with serving(tmp_path / "d", "--config", str(path)) as url:
        headers = {"Authorization": f"Bearer {token['token']}"}
        assert httpx.get(url + "/admin/v1/keys", headers=headers).status_code == 404
        side = f"http://127.0.0.1:{admin_port}/admin/v1/keys"
        deadline = time.monotonic() + 10  # the admin thread may start a moment later
        while True:
            try:
                response = httpx.get(side, headers=headers)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert response.status_code == 200 and response.json()["keys"][0]["state"] == "active"
        assert httpx.get(side).status_code == 401


def test_cli_instances_show_apple_fraud_metric(tmp_path: Path) -> None:
    """The risk metric of the latest exchanged receipt is what an operator sees (issue 10)."""
    data = tmp_path / "data"
    service = build_service(load_settings(data_dir=data))
    try:
        record = service.store.register_instance(
            platform="apple", client_id="https://wallet.example.com/client", key_thumbprint="a" * 43,
            instance_jwk={"kty": "EC"}, now=datetime.now(UTC), apple_key_id="k",
        )
        service.store.store_receipt(record.id, receipt=b"r", risk_metric=7, now=datetime.now(UTC))
    finally:
        service.store.dispose()
    shown = _run("instances", "show", record.id, "--data-dir", str(data))
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["apple_risk_metric"] == 7 and body["apple_receipt_refreshed_at"]
    assert "apple_receipt" not in body
