"""Readiness (/readyz) separate from liveness (/healthz), on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx

from attester.app import create_app
from tests.support import MutableClock, live_server


def _not_ready(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == "not_ready"
    return body


def test_readyz_no_android_apps_ready_without_list(make_settings: Any, clock: MutableClock) -> None:
    app = create_app(make_settings(apps=[]), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        response = http.get("/readyz")
        assert response.status_code == 200
        assert response.json()["checks"] == {"database": "ok", "signing_key": "ok", "app_registry": "ok"}
    app.state.service.store.dispose()


def test_readyz_signing_key_missing_503_liveness_200(make_settings: Any, clock: MutableClock) -> None:
    settings = make_settings(apps=[])
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        (settings.resolved_key_dir / "keys.json").unlink()
        body = _not_ready(http.get("/readyz"))
        assert body["not_ready"] == ["signing_key"]
        assert body["checks"] == {"database": "ok", "signing_key": "unavailable", "app_registry": "ok"}
        assert http.get("/healthz").status_code == 200
    app.state.service.store.dispose()


def test_readyz_database_unreachable_503(
    make_settings: Any, database_url: str, clock: MutableClock, tmp_path: Path
) -> None:
    settings = make_settings(apps=[], database_url=database_url)
    app = create_app(settings, clock=clock)
    service = app.state.service
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/readyz").status_code == 200
        service.store.dispose()  # drop pooled connections: the next check must connect
        if database_url.startswith("sqlite"):
            path = Path(database_url.removeprefix("sqlite:///"))
            path.unlink()
            path.mkdir()  # a directory where the database file was: SQLite cannot open it
        else:
            import psycopg

            base, name = database_url.rsplit("/", 1)
            with psycopg.connect(base + "/postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        body = _not_ready(http.get("/readyz"))
        assert body["checks"]["database"] == "unreachable" and body["not_ready"] == ["database"]
        assert http.get("/healthz").status_code == 200
        if database_url.startswith("sqlite"):
            shutil.rmtree(path)
    service.store.dispose()
