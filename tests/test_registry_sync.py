"""An app registry reload reaches every process of a replica (attester/registry_sync.py):
the follower alone, two services sharing a data directory in one process, and
``attester serve --workers 2`` over HTTP, where each worker holds its own registry."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from attester.admin import new_token
from attester.app import create_app
from attester.registry_sync import MARKER, RegistryFollower
from attester.settings import load_settings
from attester.workers import REUSE_PORT
from tests.android.status_server import StatusServer
from tests.android.synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, make_root
from tests.e2e.e2e_support import write_config
from tests.support import live_server
from tests.test_cli import serving

TOKEN, DIGEST = new_token()
FIRST, SECOND = "https://app.example/first", "https://app.example/second"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_publication_is_followed_once_by_the_others_and_not_by_itself(tmp_path: Path) -> None:
    clock = Clock()
    here, there = (RegistryFollower(tmp_path / MARKER, clock=clock) for _ in range(2))
    applied: list[str] = []
    here.published()
    clock.now += 1.0
    assert here.due() and there.due()
    assert not here.follow(lambda: applied.append("here"))  # its own reload: nothing to do
    assert there.follow(lambda: applied.append("there"))
    assert not there.follow(lambda: applied.append("there again"))  # no new publication
    there.published()
    assert here.follow(lambda: applied.append("here"))
    assert applied == ["there", "here"]


def test_a_look_is_due_once_a_second(tmp_path: Path) -> None:
    clock = Clock()
    follower = RegistryFollower(tmp_path / MARKER, clock=clock)
    assert not follower.due()
    clock.now += 0.99
    assert not follower.due()
    clock.now += 0.01
    assert follower.due()
    follower.follow(lambda: None)
    assert not follower.due()


def test_a_process_started_after_a_reload_does_not_apply_it_again(tmp_path: Path) -> None:
    RegistryFollower(tmp_path / MARKER).published()
    late = RegistryFollower(tmp_path / MARKER, interval=0)  # read the registry at its start
    assert not late.follow(lambda: pytest.fail("applied a reload it started with"))


def test_a_failed_apply_is_logged_and_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    follower = RegistryFollower(tmp_path / MARKER, interval=0)
    RegistryFollower(tmp_path / MARKER).published()
    tries: list[int] = []

    def broken() -> None:
        tries.append(1)
        raise ValueError("registry_invalid")

    with caplog.at_level(logging.ERROR, logger="attester"):
        assert not follower.follow(broken)
    assert "keeps its registry" in caplog.text
    assert not follower.follow(broken) and len(tries) == 1  # until the next publication


def _config(tmp_path: Path, status_url: str, apps: list[str]) -> Path:
    root_file = tmp_path / "root.pem"
    if not root_file.exists():
        root_file.write_bytes(make_root().certificate.public_bytes(serialization.Encoding.PEM))
    android = {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}
    return write_config(
        tmp_path / "attester.toml",
        {
            "issuer": "https://attester.test",
            "android": {"revocation_url": status_url, "test_root_files": [root_file]},
            "admin": {"enabled": True, "tokens": [{"name": "ops", "sha256": DIGEST}]},
            "apps": [{"client_id": c, "android": android} for c in apps],
        },
    )


def _apps(client: Any) -> list[str]:
    response = client.get("/admin/v1/apps", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return [a["client_id"] for a in response.json()["apps"]]


def test_two_services_on_one_data_directory_follow_each_others_reload(tmp_path: Path) -> None:
    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _config(tmp_path, status.url, [FIRST])
    apps = [create_app(load_settings(config, data_dir=tmp_path / "data")) for _ in range(2)]
    for app in apps:  # no second to wait in a test
        app.state.service.registry = RegistryFollower(tmp_path / "data" / MARKER, interval=0)
    try:
        with live_server(apps[0]) as one, live_server(apps[1]) as other:
            with httpx.Client(base_url=one.url) as a, httpx.Client(base_url=other.url) as b:
                assert _apps(a) == _apps(b) == [FIRST]
                _config(tmp_path, status.url, [FIRST, SECOND])
                reload = a.post("/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
                assert reload.status_code == 200 and reload.json() == {"apps": [FIRST, SECOND]}
                assert _apps(b) == [FIRST, SECOND]  # followed before answering
                audit = a.get("/admin/v1/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()
                # one reload, one audit record: following it is not another action
                assert [r["action"] for r in audit["audit"]].count("apps.reload") == 1
    finally:
        status.close()
        for app in apps:
            app.state.service.store.dispose()


@pytest.mark.skipif(not REUSE_PORT, reason="SO_REUSEPORT (Linux): connections spread over workers")
def test_a_reload_reaches_every_worker_of_serve(tmp_path: Path) -> None:
    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _config(tmp_path, status.url, [FIRST])
    try:
        with serving(tmp_path / "data", "--config", str(config), "--workers", "2") as url:
            _config(tmp_path, status.url, [FIRST, SECOND])
            reload = httpx.post(url + "/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert reload.status_code == 200 and reload.json() == {"apps": [FIRST, SECOND]}
            time.sleep(1.1)  # each worker looks at the marker at most once a second
            # a new connection each: the kernel spreads them over both workers' sockets
            # (all 24 on one worker: a chance of 2**-23)
            seen = []
            for _ in range(24):
                with httpx.Client(base_url=url) as fresh:
                    seen.append(_apps(fresh))
            assert seen == [[FIRST, SECOND]] * 24
    finally:
        status.close()
