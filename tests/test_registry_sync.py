"""An app registry reload reaches every process of a replica (attester/registry_sync.py):
the follower alone, two services sharing a data directory in one process, and
``attester serve --workers 2`` over HTTP, where each worker holds its own registry."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from attester.admin import new_token
from attester.app import create_app
from attester.registry_sync import MARKER, Prepared, RegistryFollower
from attester.settings import load_settings
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


def _prepared(name: str, applied: list[str]) -> Prepared:
    return Prepared(name, lambda: applied.append(name))


def test_a_publication_is_followed_once_by_the_others_and_not_by_itself(tmp_path: Path) -> None:
    here, there = (RegistryFollower(tmp_path / MARKER, current="old") for _ in range(2))
    assert not there.follow(lambda: pytest.fail("nothing published: nothing to read"))
    applied: list[str] = []
    with here.reloading() as publish:
        publish(_prepared("new", applied))
    assert applied == ["new"] and here.applied == "new"
    assert json.loads((tmp_path / MARKER).read_text()) == {"digest": "new"}
    assert not here.follow(lambda: pytest.fail("its own reload: nothing to do"))
    assert there.follow(lambda: _prepared("new", applied))
    assert not there.follow(lambda: pytest.fail("followed already"))
    assert applied == ["new", "new"] and there.applied == "new"


def test_a_file_edited_since_the_reload_is_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    RegistryFollower(tmp_path / MARKER, current="old")._write("reloaded")
    follower = RegistryFollower(tmp_path / MARKER, current="old")
    applied: list[str] = []
    with caplog.at_level(logging.ERROR, logger="attester"):
        assert not follower.follow(lambda: _prepared("edited", applied))
        assert not follower.follow(lambda: _prepared("edited", applied))  # tried again
    assert applied == [] and follower.applied == "old" and follower.behind
    assert caplog.text.count("edited since") == 1  # logged once per publication
    # the operator fixes the file back: the next look applies it
    assert follower.follow(lambda: _prepared("reloaded", applied))
    assert applied == ["reloaded"] and not follower.behind


def test_a_process_is_behind_only_while_a_newer_registry_is_published_and_not_applied(
    tmp_path: Path,
) -> None:
    here, there = (RegistryFollower(tmp_path / MARKER, current="old") for _ in range(2))
    assert not there.follow(lambda: pytest.fail("nothing published")) and not there.behind
    applied: list[str] = []
    with here.reloading() as publish:
        publish(_prepared("new", applied))
    assert not here.behind  # applied what it published
    assert not there.follow(lambda: _prepared("edited", applied)) and there.behind
    # the operator reloads the file as it is now: published again, and followed
    with here.reloading() as publish:
        publish(_prepared("edited", applied))
    assert there.follow(lambda: _prepared("edited", applied)) and not there.behind
    # a later reload that names this process's own registry: nothing to apply, not behind
    there._behind = True
    assert not there.follow(lambda: pytest.fail("its own registry")) and not there.behind


def test_a_failed_read_is_logged_with_its_errors_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from attester.errors import ProblemError

    RegistryFollower(tmp_path / MARKER, current="old")._write("new")
    follower = RegistryFollower(tmp_path / MARKER, current="old")

    def broken() -> Prepared:
        raise ProblemError("registry_invalid", "the app registry is invalid", errors=["apps.0: bad"])

    with caplog.at_level(logging.ERROR, logger="attester"):
        assert not follower.follow(broken)
    assert "apps.0: bad" in caplog.text and "keeps its registry" in caplog.text
    applied: list[str] = []
    assert follower.follow(lambda: _prepared("new", applied)) and applied == ["new"]


def test_a_process_that_starts_on_an_older_registry_follows_at_its_first_request(tmp_path: Path) -> None:
    """The marker is compared with the registry a process started with, not with the
    marker it saw at start: a reload published between the two is not missed."""
    RegistryFollower(tmp_path / MARKER, current="x")._write("new")
    clock = Clock()
    late = RegistryFollower(tmp_path / MARKER, current="old", clock=clock)
    assert late.claim()  # at once: no second to wait for the first look
    applied: list[str] = []
    assert late.follow(lambda: _prepared("new", applied)) and applied == ["new"]
    up_to_date = RegistryFollower(tmp_path / MARKER, current="new")
    assert not up_to_date.follow(lambda: pytest.fail("started with it"))


def test_a_process_started_on_the_edited_file_is_not_behind_an_older_reload(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker names an older reload; the file was edited since and the process started
    on it (a rolling restart): it runs the file as it is, nothing to apply, not behind."""
    RegistryFollower(tmp_path / MARKER, current="x")._write("older")
    restarted = RegistryFollower(tmp_path / MARKER, current="file")
    with caplog.at_level(logging.ERROR, logger="attester"):
        assert not restarted.follow(lambda: _prepared("file", []))
    assert not restarted.behind and restarted.applied == "file"
    assert caplog.text == ""


def test_a_reload_after_the_start_then_the_file_set_back_leaves_a_process_behind(
    tmp_path: Path,
) -> None:
    """The process started on R0; R1 was reloaded (its peers apply it) and the file set back
    to R0 before this process looked: it still applies what the reload replaced."""
    worker = RegistryFollower(tmp_path / MARKER, current="R0")
    RegistryFollower(tmp_path / MARKER, current="R0")._write("R1")
    assert not worker.follow(lambda: _prepared("R0", [])) and worker.behind


def test_an_unreadable_marker_leaves_a_process_behind(tmp_path: Path) -> None:
    RegistryFollower(tmp_path / MARKER, current="x")._write("new")
    follower = RegistryFollower(tmp_path / MARKER, current="old")
    assert not follower.follow(lambda: _prepared("edited", [])) and follower.behind
    (tmp_path / MARKER).write_text("not json")
    assert not follower.follow(lambda: pytest.fail("nothing readable to follow"))
    assert follower.behind  # unreadable is not "nothing published": it stays behind


def test_one_caller_claims_a_look_once_a_second(tmp_path: Path) -> None:
    clock = Clock()
    follower = RegistryFollower(tmp_path / MARKER, current="old", clock=clock)
    assert follower.claim() and not follower.claim()  # the others go on without waiting
    clock.now += 0.99
    assert not follower.claim()
    clock.now += 0.01
    assert follower.claim() and not follower.claim()


def test_reloads_wait_for_each_other(tmp_path: Path) -> None:
    """Serialised from reading the file to publishing (a lock file: other processes too;
    two followers stand in for two processes), so the marker names the newest reload."""
    first, second = (RegistryFollower(tmp_path / MARKER, current="old") for _ in range(2))
    order: list[str] = []
    entered = threading.Event()

    def other() -> None:
        with second.reloading() as publish:
            order.append("second")
            publish(_prepared("b", []))

    with first.reloading() as publish:
        thread = threading.Thread(target=other)
        thread.start()
        entered.wait(0.3)  # the other reload had time to get in, and must not have
        order.append("first")
        publish(_prepared("a", []))
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert json.loads((tmp_path / MARKER).read_text()) == {"digest": "b"}


def test_a_publication_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / MARKER).mkdir()  # a directory where the marker goes: the rename fails
    follower = RegistryFollower(tmp_path / MARKER, current="old")
    applied: list[str] = []
    with pytest.raises(OSError), follower.reloading() as publish:
        publish(_prepared("new", applied))
    assert applied == [] and follower.applied == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or ".reloaded." in p.name
            and not p.name.endswith(".lock")] == []  # no temporary file left behind


def _config(tmp_path: Path, status_url: str, apps: list[str], admin_port: int | None = None) -> Path:
    root_file = tmp_path / "root.pem"
    if not root_file.exists():
        root_file.write_bytes(make_root().certificate.public_bytes(serialization.Encoding.PEM))
    android = {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}
    return write_config(
        tmp_path / "attester.toml",
        {
            "issuer": "https://attester.test",
            "android": {"revocation_url": status_url, "test_root_files": [root_file]},
            "admin": {
                "enabled": True,
                "tokens": [{"name": "ops", "sha256": DIGEST}],
                **({"port": admin_port} if admin_port else {}),
            },
            "apps": [{"client_id": c, "android": android} for c in apps],
        },
    )


def _apps(client: Any) -> list[str]:
    response = client.get("/admin/v1/apps", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return [a["client_id"] for a in response.json()["apps"]]


def _registered_apps(client: Any, _: str) -> list[str]:
    """The apps the worker that answers knows, seen from the public port (the admin API is
    in the parent): a registration for SECOND is refused as app_not_registered only there
    where SECOND is unknown (the chain is garbage: any other worker refuses it later)."""
    challenge = client.post("/v1/challenge").json()["challenge"]
    response = client.post(
        "/v1/android/attestations",
        json={"certificate_chain": ["AAAA"], "challenge": challenge, "key_proof": "x", "client_id": SECOND},
    )
    assert response.status_code >= 400
    return [FIRST] if response.json()["code"] == "app_not_registered" else [FIRST, SECOND]


@contextmanager
def _two_services(tmp_path: Path) -> Iterator[tuple[str, httpx.Client, httpx.Client]]:
    """Two services on one data directory, serving [FIRST], over HTTP: (the status list's
    URL, for _config, and a client of each)."""
    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _config(tmp_path, status.url, [FIRST])
    apps = [create_app(load_settings(config, data_dir=tmp_path / "data")) for _ in range(2)]
    for app in apps:  # no second to wait in a test
        app.state.service.registry._interval = 0
    try:
        with live_server(apps[0]) as one, live_server(apps[1]) as other:
            with httpx.Client(base_url=one.url) as a, httpx.Client(base_url=other.url) as b:
                yield status.url, a, b
    finally:
        status.close()
        for app in apps:
            app.state.service.store.dispose()


def test_two_services_on_one_data_directory_follow_each_others_reload(tmp_path: Path) -> None:
    with _two_services(tmp_path) as (status_url, a, b):
        assert _apps(a) == _apps(b) == [FIRST]
        _config(tmp_path, status_url, [FIRST, SECOND])
        reload = a.post("/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
        assert reload.status_code == 200 and reload.json() == {"apps": [FIRST, SECOND]}
        assert _apps(b) == [FIRST, SECOND]  # followed before answering
        audit = a.get("/admin/v1/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        # one reload, one audit record: following it is not another action
        assert [r["action"] for r in audit["audit"]].count("apps.reload") == 1


def test_a_service_that_cannot_follow_a_reload_is_not_ready(tmp_path: Path) -> None:
    """The other service's file was edited after the reload: it keeps its registry and its
    /readyz says it is behind (503), until a reload of the file as it is reaches it."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _two_services(tmp_path) as (status_url, a, b):
        assert b.get("/readyz").status_code == 200
        _config(tmp_path, status_url, [FIRST, SECOND])
        assert a.post("/admin/v1/apps/reload", headers=auth).status_code == 200
        _config(tmp_path, status_url, [SECOND])  # edited after the reload
        behind = b.get("/readyz")
        assert behind.status_code == 503, behind.text
        assert behind.json()["code"] == "not_ready"
        assert behind.json()["not_ready"] == ["app_registry"]
        assert behind.json()["checks"]["app_registry"] == "behind"
        assert "attester_app_registry_behind 1.0" in b.get("/metrics").text
        assert _apps(b) == [FIRST]  # its own registry, still
        assert a.get("/readyz").status_code == 200  # the one that reloaded is current
        assert "attester_app_registry_behind 0.0" in a.get("/metrics").text
        assert a.post("/admin/v1/apps/reload", headers=auth).status_code == 200
        assert b.get("/readyz").status_code == 200
        assert "attester_app_registry_behind 0.0" in b.get("/metrics").text
        assert _apps(b) == [SECOND]


def test_a_reload_that_cannot_be_published_is_refused_and_audited(tmp_path: Path) -> None:
    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _config(tmp_path, status.url, [FIRST])
    app = create_app(load_settings(config, data_dir=tmp_path / "data"))
    (tmp_path / "data" / MARKER).mkdir()  # where the marker goes: its rename fails
    try:
        with live_server(app) as live, httpx.Client(base_url=live.url) as http:
            _config(tmp_path, status.url, [FIRST, SECOND])
            reload = http.post("/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert reload.status_code == 503 and reload.json()["code"] == "registry_unpublished"
            assert _apps(http) == [FIRST]  # nothing changed here either
            audit = http.get("/admin/v1/audit", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert audit["audit"][0]["action"] == "apps.reload.refused"
            assert audit["audit"][0]["after"] == {"code": "registry_unpublished"}
            assert audit["audit"][1]["action"] == "apps.reload"  # recorded first, then refused
    finally:
        status.close()
        app.state.service.store.dispose()


def test_a_reload_the_database_cannot_record_is_not_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the record came after the publication: a database outage left the new registry live
    # and unaudited, answered 503 (found in review)
    from sqlalchemy.exc import OperationalError

    from attester.storage.admin import AdminStore

    status = StatusServer()
    status.body = b'{"entries": {}}'
    config = _config(tmp_path, status.url, [FIRST])
    app = create_app(load_settings(config, data_dir=tmp_path / "data"))
    try:
        with live_server(app) as live, httpx.Client(base_url=live.url) as http:
            _config(tmp_path, status.url, [FIRST, SECOND])

            def outage(*_args: object, **_kwargs: object) -> None:
                raise OperationalError("INSERT INTO audit_log", {}, Exception("database is locked"))

            monkeypatch.setattr(AdminStore, "audit", outage)
            reload = http.post("/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            monkeypatch.undo()
            assert reload.status_code == 503 and reload.json()["code"] == "storage_unavailable"
            assert _apps(http) == [FIRST]
            assert app.state.service.registry.published() is None  # nor told the others
    finally:
        status.close()
        app.state.service.store.dispose()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                    reason="/proc (Linux): which worker holds a connection")
@pytest.mark.parametrize("admin_port", [False, True], ids=["admin-on-the-public-port", "admin-in-the-parent"])
def test_a_reload_reaches_every_worker_of_serve(tmp_path: Path, admin_port: bool) -> None:
    from tests.support import free_port
    from tests.test_workers import _held, _until_both_serve, _wait_for_workers

    status = StatusServer()
    status.body = b'{"entries": {}}'
    port = free_port() if admin_port else None
    config = _config(tmp_path, status.url, [FIRST], admin_port=port)
    try:
        with serving(tmp_path / "data", "--config", str(config), "--workers", "2") as url:
            assert len(_wait_for_workers(int(url.rsplit(":", 1)[1]), 2)) == 2  # both started
            admin = f"http://127.0.0.1:{port}" if port else url
            _config(tmp_path, status.url, [FIRST, SECOND], admin_port=port)
            reload = httpx.post(admin + "/admin/v1/apps/reload", headers={"Authorization": f"Bearer {TOKEN}"})
            assert reload.status_code == 200 and reload.json() == {"apps": [FIRST, SECOND]}
            time.sleep(1.1)  # each worker looks at the marker at most once a second
            # connections held open together: the worker holding fewest takes the next one
            # (workers.py), so they are spread over both workers, which the test checks
            workers = _wait_for_workers(int(url.rsplit(":", 1)[1]), 2)
            _until_both_serve(int(url.rsplit(":", 1)[1]), workers)
            clients = [httpx.Client(base_url=url) for _ in range(4)]
            try:
                seen = []
                for fresh in clients:
                    seen.append(_apps(fresh) if not port else _registered_apps(fresh, url))
                    time.sleep(0.05)
                held = _held(int(url.rsplit(":", 1)[1]), workers)
            finally:
                for fresh in clients:
                    fresh.close()
            assert seen == [[FIRST, SECOND]] * 4
            assert min(held) >= 1, held  # both workers answered
    finally:
        status.close()


def test_a_worker_that_stops_leaves_the_behind_gauge_at_zero(tmp_path: Path) -> None:
    """The gauge is the maximum over every worker's file, a stopped worker's included: it
    sets 0 as it exits (app.py, lifespan)."""
    status = StatusServer()
    status.body = b'{"entries": {}}'
    app = create_app(load_settings(_config(tmp_path, status.url, [FIRST]), data_dir=tmp_path / "data"))
    gauge = app.state.service.metrics.registry_behind
    try:
        with live_server(app):  # uvicorn, lifespan included
            gauge.set(1)
        assert gauge._value.get() == 0
    finally:
        status.close()
        app.state.service.store.dispose()
