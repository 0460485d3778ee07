"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from attester.app import create_app
from attester.logs import JsonFormatter
from attester.service import AttesterService, build_service
from attester.settings import Settings, load_settings
from tests import softhsm as softhsm_support
from tests.support import LiveServer, MutableClock, live_server, postgres_server, unavailable

ISSUER = "https://attester.test"


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A test that runs ``serve`` in this process (the CLI's own error paths) configures
    logging (attester/logs.py): a handler on the test's captured stderr, which pytest closes
    after the test. Left in place, every later record failed to write (``--- Logging error
    ---``, its ``Call stack:`` line reaching the terminal from a live server's thread).
    Afterwards the service's handlers are removed, the handlers ``configure`` dropped
    (pytest's own: its capture and report handlers, and the session's live-log and log-file
    ones) are back, and the levels and uvicorn's loggers are as the test found them."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    uvicorn = [
        (logger, logger.handlers[:], logger.propagate, logger.disabled)
        for logger in map(logging.getLogger, ("uvicorn", "uvicorn.error", "uvicorn.access"))
    ]
    yield
    for handler in root.handlers[:]:
        if handler not in before and isinstance(handler.formatter, JsonFormatter):
            root.removeHandler(handler)
    for handler in before - set(root.handlers):
        root.addHandler(handler)
    root.setLevel(level)
    for logger, handlers, propagate, disabled in uvicorn:
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def make_settings(tmp_path: Path) -> Any:
    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("issuer", ISSUER)
        # nothing leaves loopback: Google's list URL points at a closed local port by default
        overrides.setdefault("android", {"revocation_url": "http://127.0.0.1:9/status"})
        return load_settings(**overrides)

    return make


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    return make_settings()  # type: ignore[no-any-return]


@pytest.fixture
def service(settings: Settings, clock: MutableClock) -> Iterator[AttesterService]:
    svc = build_service(settings, clock=clock)
    yield svc
    svc.store.dispose()


@pytest.fixture
def server(settings: Settings, clock: MutableClock) -> Iterator[LiveServer]:
    app = create_app(settings, clock=clock)
    with live_server(app) as live:
        yield live
    app.state.service.store.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return _fresh_postgres_database(request)


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's PostgreSQL server (for PostgreSQL-only behaviour)."""
    return _fresh_postgres_database(request)


def _fresh_postgres_database(request: pytest.FixtureRequest) -> str:
    base = request.getfixturevalue("postgres_url")
    if base is None:
        unavailable(
            "PostgreSQL: no server could be started locally (initdb not found or not runnable); "
            ".ci/run installs the Debian 'postgresql' package so CI always runs these"
        )
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return str(base.rsplit("/", 1)[0] + "/" + name)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[softhsm_support.SoftHsm]:
    """SoftHSM2 tokens for the PKCS#11 tests, one set per session (see tests/softhsm.py)."""
    reason = softhsm_support.skip_reason()
    if reason is not None:
        unavailable(reason)
    with softhsm_support.softhsm(tmp_path_factory.mktemp("softhsm")) as hsm:
        yield hsm
