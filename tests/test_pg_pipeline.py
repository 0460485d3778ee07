"""The PostgreSQL batch pipeline (storage/store.py, ``_Pipeline``) on its error paths.

Written by a review of the change (a helper's, 2026-12-03), kept as tests: what runs in
the pipeline (SQLAlchemy runs nothing there), a deadlock or serialisation failure and a
lost connection at each statement, a duplicate found only at the pipeline's end, the
claim's type conversions, a leader cancelled and the event loop shut down mid-pipeline.
After each, every pooled connection is out of pipeline mode with no transaction open."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from attester.storage import IssuedRow, Redemption, create_store
from attester.storage.group_commit import storage_outage
from attester.storage.store import Presigned
from tests.test_group_commit import _held, _wait_queued, driver_statements

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _reg(store: Any, n: int, *, digest: str | None = None, redeem: bool = True,
         candidate: tuple[int, int] | None = None, status_expires_at: Any = None,
         jti: str | None = None) -> Any:
    row = IssuedRow(jti or f"j{n}", "kid", NOW, NOW + timedelta(hours=1))
    issue = Presigned(lambda _c, _i: row, lambda: row, candidate=candidate,
                      status_expires_at=status_expires_at)
    return store.register_instance(
        platform="android", client_id="c", key_thumbprint=f"t{n:042d}", instance_jwk={"kty": "EC"},
        now=NOW, redemption=Redemption(digest or f"{n:064d}", NOW) if redeem else None,
        issue=issue,
    )


def _batch(store: Any, calls: list[dict[str, Any]]) -> list[Any]:
    """Run the registrations ``calls`` as one batch; each one's result or exception."""
    release = _held(store.writes)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(_reg, store, **c) for c in calls]
        _wait_queued(store.writes, len(calls))
        release.set()
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=60))
            except BaseException as exc:  # noqa: BLE001
                out.append(exc)
    return out


def _trigger(store: Any, table: str, condition: str, action: str) -> None:
    with store.engine.begin() as c:
        c.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS once")
        c.exec_driver_sql(
            f"CREATE FUNCTION f_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF {condition} AND nextval('once') = 1 THEN {action}; END IF; RETURN NEW; END $$"
        )
        c.exec_driver_sql(
            f"CREATE TRIGGER tr_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION f_{table}()"
        )


def _pool_is_clean(store: Any) -> None:
    """Every connection the pool holds: out of pipeline mode, no transaction open."""
    conns = [store.engine.raw_connection() for _ in range(store.engine.pool.checkedin())]
    try:
        for c in conns:
            d = c.driver_connection
            assert d.pgconn.pipeline_status == pq.PipelineStatus.OFF, "left in pipeline mode"
            assert d._pipeline is None
            assert d.pgconn.transaction_status == pq.TransactionStatus.IDLE
    finally:
        for c in conns:
            c.close()


def _in_pipeline(store: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """What psycopg has run in a pipeline for ``store`` since this call, when called."""
    seen = driver_statements(store, monkeypatch)
    return lambda: [sql for sql, piped in seen if piped]


# 1. what runs in the pipeline ----------------------------------------------------
def test_only_inserts_in_the_pipeline_and_sqlalchemy_reads_none(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy would read no result in a pipeline (psycopg has not fetched it yet): it
    runs nothing there; psycopg runs the INSERTs, RETURNING only on the claim, whose rows
    psycopg reads itself."""
    store = create_store(postgres_database_url)
    core: list[str] = []
    event.listen(
        store.engine, "before_cursor_execute",
        lambda conn, _c, sql, *_: core.append(sql)
        if conn.connection.driver_connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
        else None,
    )
    piped = _in_pipeline(store, monkeypatch)
    # one redemption only (a one-row INSERT), status candidates (the claim)
    out = _batch(store, [
        dict(n=1, candidate=(0, 1), status_expires_at=NOW),
        dict(n=2, redeem=False, candidate=(0, 2), status_expires_at=NOW),
    ])
    assert not any(isinstance(o, BaseException) for o in out), out
    assert core == []
    tables = sorted(sql.split()[2] for sql in piped())
    assert tables == ["instances"] * 2 + ["issued_attestations"] * 2 + ["redeemed_challenges"] + [
        "status_entries"] * 2, piped()
    assert all(("RETURNING" in sql) == sql.startswith("INSERT INTO status_entries")
               for sql in piped()), piped()
    _pool_is_clean(store)
    store.dispose()


# 2. error paths --------------------------------------------------------------------
@pytest.mark.parametrize("table", ["redeemed_challenges", "instances", "issued_attestations"])
@pytest.mark.parametrize("sqlstate", ["40P01", "40001"])
def test_a_conflict_in_the_pipeline_is_retried_unit_by_unit(
    postgres_database_url: str, table: str, sqlstate: str
) -> None:
    store = create_store(postgres_database_url)
    _trigger(store, table, "true", f"RAISE EXCEPTION 'conflict' USING ERRCODE = '{sqlstate}'")
    errors: list[BaseException] = []
    real = store.writes._together

    def spy(connection: Any, units: Any) -> None:
        try:
            real(connection, units)
        except BaseException as exc:
            errors.append(exc)
            raise

    store.writes._together = spy  # type: ignore[method-assign]
    out = _batch(store, [dict(n=1, candidate=(0, 1), status_expires_at=NOW), dict(n=2)])
    assert errors and isinstance(errors[0], DBAPIError), errors
    assert errors[0].orig.sqlstate == sqlstate
    assert not any(isinstance(o, BaseException) for o in out), out  # both landed alone
    _pool_is_clean(store)
    store.dispose()


@pytest.mark.parametrize("table", ["redeemed_challenges", "instances", "issued_attestations"])
def test_a_connection_lost_in_the_pipeline(postgres_database_url: str, table: str) -> None:
    store = create_store(postgres_database_url)
    _trigger(store, table, "true", "PERFORM pg_terminate_backend(pg_backend_pid())")
    out = _batch(store, [dict(n=1, candidate=(0, 1), status_expires_at=NOW), dict(n=2)])
    assert all(isinstance(o, DBAPIError) for o in out), out
    assert all(storage_outage(o) for o in out), [(type(o), o) for o in out]
    _pool_is_clean(store)
    # the next batch works
    out = _batch(store, [dict(n=3), dict(n=4)])
    assert not any(isinstance(o, BaseException) for o in out), out
    _pool_is_clean(store)
    store.dispose()


def test_a_duplicate_at_the_pipelines_end_falls_back(postgres_database_url: str) -> None:
    # the same jti twice: the issued_attestations INSERT fails at the pipeline's sync
    store = create_store(postgres_database_url)
    out = _batch(store, [dict(n=1, jti="same"), dict(n=2, jti="same")])
    assert store.writes.unbatched == 1
    assert sum(isinstance(o, DBAPIError) for o in out) == 1, out
    _pool_is_clean(store)
    store.dispose()


def test_many_aborted_pipelines_then_good_ones(postgres_database_url: str) -> None:
    # prepared statements (psycopg's executemany prepares at once) across aborted pipelines
    store = create_store(postgres_database_url)
    k = 100
    for round_ in range(8):
        out = _batch(store, [
            dict(n=k, candidate=(0, k), status_expires_at=NOW, digest="d" * 63 + str(round_)),
            dict(n=k + 1, candidate=(0, k + 1), status_expires_at=NOW, digest="d" * 63 + str(round_)),
        ])
        assert sum(isinstance(o, BaseException) for o in out) == 1, out
        k += 2
        out = _batch(store, [
            dict(n=k, candidate=(0, k), status_expires_at=NOW),
            dict(n=k + 1, candidate=(0, k + 1), status_expires_at=NOW),
        ])
        assert not any(isinstance(o, BaseException) for o in out), out
        k += 2
    _pool_is_clean(store)
    store.dispose()


# 3. the claim's types ----------------------------------------------------------------
def test_a_naive_status_expiry_is_refused_as_sqlalchemy_would(postgres_database_url: str) -> None:
    store = create_store(postgres_database_url)
    naive = datetime(2026, 11, 1, 12)
    out = _batch(store, [
        dict(n=1, candidate=(0, 1), status_expires_at=naive),
        dict(n=2, candidate=(0, 2), status_expires_at=naive),
    ])
    # alone (and on SQLite) UTCDateTime refuses a naive datetime; in the pipeline it is stored
    with store.engine.connect() as c:
        stored = c.execute(text("SELECT count(*) FROM status_entries")).scalar()
    assert stored == 0, (stored, out)
    store.dispose()


def test_an_aware_non_utc_expiry_is_the_same_instant(postgres_database_url: str) -> None:
    store = create_store(postgres_database_url)
    local = datetime(2026, 11, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    out = _batch(store, [
        dict(n=1, candidate=(0, 1), status_expires_at=local),
        dict(n=2, candidate=(0, 2), status_expires_at=local),
    ])
    assert not any(isinstance(o, BaseException) for o in out), out
    with store.engine.connect() as c:
        got = {r[0] for r in c.execute(text("SELECT expires_at FROM status_entries"))}
    assert got == {NOW}
    store.dispose()


# cancellation of the leader while the pipeline waits -------------------------------
@pytest.mark.parametrize("table", ["status_entries", "issued_attestations", "redeemed_challenges"])
def test_a_cancelled_leader_mid_pipeline(
    postgres_database_url: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from attester import cooperative

    store = create_store(postgres_database_url)
    _trigger(store, table, "true", "PERFORM pg_sleep(0.3)")
    piped = _in_pipeline(store, monkeypatch)

    async def main() -> tuple[Any, list[Any]]:
        tasks = [
            asyncio.create_task(cooperative.run(
                _reg, store=store, n=n, candidate=(0, n), status_expires_at=NOW))
            for n in range(3)
        ]
        while not piped():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        tasks[0].cancel()  # the leader (first to run)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        return outcomes[0], outcomes[1:]

    leader, others = asyncio.run(main())
    assert all(not isinstance(o, BaseException) for o in others), others
    _pool_is_clean(store)
    with store.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM instances")).scalar() == 3
    store.dispose()


@pytest.mark.parametrize("table", ["status_entries", "issued_attestations", "instances"])
def test_the_loop_shut_down_mid_pipeline(
    postgres_database_url: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from attester import cooperative

    store = create_store(postgres_database_url, pool_size=2)
    _trigger(store, table, "true", "PERFORM pg_sleep(0.5)")
    piped = _in_pipeline(store, monkeypatch)
    invalidated: list[Any] = []
    event.listen(store.engine, "invalidate", lambda *a: invalidated.append(a))
    outcomes: list[Any] = []

    def reg(**kw: Any) -> Any:
        try:
            outcomes.append(_reg(store, **kw))
        except BaseException as exc:
            outcomes.append(exc)
            raise

    async def main() -> None:
        for n in range(3):
            asyncio.create_task(cooperative.run(reg, n=n, candidate=(0, n), status_expires_at=NOW))
        while not piped():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        # main returns: asyncio.run cancels every task, the round trip's own among them

    asyncio.run(main())
    assert invalidated  # interrupted in a wait: not given back to the pool as it was
    _pool_is_clean(store)
    out = _batch(store, [dict(n=10), dict(n=11)])
    assert not any(isinstance(o, BaseException) for o in out), out
    store.dispose()


def test_a_postgres_driver_other_than_psycopg_is_not_piped() -> None:
    """dialect.name is "postgresql" for psycopg2, pg8000 ... too: _Pipeline then calls
    .pipeline() on a connection that has none (AttributeError: every batch Unbatched)."""
    from types import SimpleNamespace

    from attester.storage.store import _Pipeline

    dialect = SimpleNamespace(
        name="postgresql", driver="pg8000", loaded_dbapi=SimpleNamespace(Error=Exception)
    )
    fake = SimpleNamespace(dialect=dialect, connection=SimpleNamespace(driver_connection=object()))
    with _Pipeline(fake) as pipeline:  # type: ignore[arg-type]
        assert pipeline.driver is None  # plain statements, as the docstring says
