"""Group commit: concurrent write units share a transaction; each answers after the commit,
and a unit that fails leaves the others' writes intact (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError

from attester.storage import (
    AlreadyRegistered,
    ChallengeAlreadyRedeemed,
    IssuedRow,
    Redemption,
    create_store,
)
from attester.storage.group_commit import GroupCommit
from attester.storage.status_entries import claim_entries
from attester.storage.store import Presigned, _redeem_in

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _register(store: Any, n: int, *, digest: str | None = None) -> Any:
    return store.register_instance(
        platform="android", client_id="c", key_thumbprint=f"t{n:042d}", instance_jwk={"kty": "EC"},
        now=NOW, redemption=Redemption(digest or f"{n:064d}", NOW + timedelta(minutes=5)),
        issued=IssuedRow(f"j{n}", "kid", NOW, NOW + timedelta(hours=1)),
    )


def _missing_table(connection: Connection) -> None:
    """A unit the database refuses (a statement it cannot run)."""
    connection.execute(text("SELECT * FROM no_such_table"))


def _held(group: GroupCommit) -> threading.Event:
    """Make the next transaction wait (inside its unit) until the returned event is set,
    so the units submitted meanwhile queue behind it and commit together."""
    release = threading.Event()
    entered = threading.Event()

    def hold(_: Connection) -> None:
        entered.set()
        release.wait(10)

    threading.Thread(target=group.run, args=(hold,), daemon=True).start()
    assert entered.wait(10)
    return release


def _wait_queued(group: GroupCommit, count: int) -> None:
    for _ in range(1000):
        if len(group._queue) >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"{len(group._queue)} of {count} units queued")


def test_concurrent_registrations_share_commits_and_all_land(database_url: str) -> None:
    store = create_store(database_url)
    release = _held(store.writes)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_register, store, n) for n in range(8)]
        _wait_queued(store.writes, 8)
        assert not any(f.done() for f in futures)  # nobody answered before a commit
        release.set()
        records = [f.result(timeout=30) for f in futures]
    # the held transaction, then the eight queued registrations in one
    assert store.writes.commits == 2 and store.writes.units == 9
    for n, record in enumerate(records):
        assert store.instance_by_thumbprint(f"t{n:042d}").id == record.id
        assert [jti for jti, _, _ in store.issued_for(record.id)] == [f"j{n}"]
        assert store.challenge_redeemed(f"{n:064d}")
    store.dispose()


def _ids_or(futures: list[Any], refusal: type[Exception], label: str) -> list[str]:
    """Each registration's instance id, or ``label`` where it raised ``refusal``."""
    outcomes = []
    for future in futures:
        try:
            outcomes.append(future.result(timeout=30).id)
        except refusal:
            outcomes.append(label)
    return outcomes


def _inserts(store: Any) -> list[str]:
    """The tables of the INSERT statements SQLAlchemy runs for ``store`` from now on."""
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO"):
            seen.append(statement.split()[2])

    event.listen(store.engine, "before_cursor_execute", count)
    return seen


def driver_statements(store: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """``(statement, in a pipeline)`` of each statement the driver runs for ``store`` from
    now on, once per row run, whoever hands it to the driver: SQLite's trace callback on
    each connection checked out; psycopg's cursor's execute and executemany, watched."""
    seen: list[tuple[str, bool]] = []
    if store.engine.dialect.name == "sqlite":
        event.listen(
            store.engine, "checkout",
            lambda dbapi, *_: dbapi.set_trace_callback(lambda sql: seen.append((sql, False))),
        )
        return seen
    for name in ("execute", "executemany"):
        real = getattr(psycopg.Cursor, name)

        def watched(cursor: Any, query: Any, params: Any = None, *a: Any, _real: Any = real,
                    _many: bool = name == "executemany", **k: Any) -> Any:
            piped = cursor.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
            seen.extend([(str(query), piped)] * (len(params) if _many else 1))
            return _real(cursor, query, params, *a, **k)

        monkeypatch.setattr(psycopg.Cursor, name, watched)
    return seen


def inserted(seen: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """``(table, in a pipeline)`` of the INSERTs among :func:`driver_statements`."""
    inserts = [(sql, piped) for sql, piped in seen if sql.lstrip().upper().startswith("INSERT")]
    return sorted((sql.split()[2], piped) for sql, piped in inserts)


def test_registrations_in_a_batch_are_written_with_one_statement_per_table(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight registrations in one batch: one statement per table, not a few per request,
    run through the driver's cursor (driver_sql.py): SQLAlchemy's Core runs none of them."""
    store = create_store(database_url)
    release = _held(store.writes)
    core = _inserts(store)
    driver = driver_statements(store, monkeypatch)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_register, store, n) for n in range(8)]
        _wait_queued(store.writes, 8)
        release.set()
        records = [f.result(timeout=30) for f in futures]
    assert store.writes.unbatched == 0 and core == []
    assert inserted(driver) == sorted(
        (table, store.engine.dialect.name == "postgresql")
        for table in ("instances", "issued_attestations", "redeemed_challenges")
        for _ in range(8)
    )
    assert len({record.id for record in records}) == 8
    for n, record in enumerate(records):
        assert store.instance_by_thumbprint(f"t{n:042d}").id == record.id
        assert [jti for jti, _, _ in store.issued_for(record.id)] == [f"j{n}"]
    store.dispose()


def test_a_registration_alone_is_written_as_a_batch_is(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing else queued: the one registration is still written by ``run_many``, one
    statement a table through the driver (on PostgreSQL in its pipeline: three round trips
    where its own code's statements took seven), its index claimed with it."""
    store = create_store(database_url)
    core = _inserts(store)
    driver = driver_statements(store, monkeypatch)
    calls: list[str] = []
    record = store.register_instance(
        platform="android", client_id="c", key_thumbprint=f"t{1:042d}", instance_jwk={"kty": "EC"},
        now=NOW, redemption=Redemption(f"{1:064d}", NOW), issue=_presigned(1, (0, 5), calls),
    )
    assert store.writes.unbatched == 0 and core == [] and calls == []
    piped = store.engine.dialect.name == "postgresql"
    assert inserted(driver) == sorted(
        (table, piped)
        for table in ("instances", "issued_attestations", "redeemed_challenges", "status_entries")
    )
    assert store.instance_by_thumbprint(f"t{1:042d}").id == record.id
    with store.engine.connect() as connection:
        entries = connection.execute(text("SELECT idx, instance_id FROM status_entries")).all()
    assert [tuple(e) for e in entries] == [(5, record.id)]
    # the key again (a re-attestation): the batch's INSERT refuses it, its own code refreshes it
    again = store.register_instance(
        platform="android", client_id="c", key_thumbprint=f"t{1:042d}", instance_jwk={"kty": "EC"},
        now=NOW, redemption=Redemption(f"{2:064d}", NOW), replace_same_key=True,
        issued=IssuedRow("j2", "kid", NOW, NOW + timedelta(hours=1)),
    )
    assert again.id == record.id and store.writes.unbatched == 1
    assert [jti for jti, _, _ in store.issued_for(record.id)] == ["j1", "j2"]
    store.dispose()


def test_a_postgres_batch_sends_its_inserts_in_one_pipeline(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the batch's INSERTs go out in a psycopg pipeline (each would be a round
    trip of its own: six with BEGIN and COMMIT), the claimed status entries read through it."""
    store = create_store(postgres_database_url)
    release = _held(store.writes)
    seen = driver_statements(store, monkeypatch)
    calls: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(
                store.register_instance,
                platform="android", client_id="c", key_thumbprint=f"t{n:042d}",
                instance_jwk={"kty": "EC"}, now=NOW, redemption=Redemption(f"{n:064d}", NOW),
                issue=_presigned(n, (0, n), calls),
            )
            for n in range(4)
        ]
        _wait_queued(store.writes, 4)
        release.set()
        records = [f.result(timeout=30) for f in futures]
    assert calls == []  # every index was free: claimed through the pipeline
    assert inserted(seen) == sorted(
        (table, True)
        for table in ("instances", "issued_attestations", "redeemed_challenges", "status_entries")
        for _ in range(4)
    )
    with store.engine.connect() as connection:
        entries = dict(connection.execute(text("SELECT idx, instance_id FROM status_entries")).all())
    assert entries == {n: record.id for n, record in enumerate(records)}
    store.dispose()


def test_a_replay_in_a_postgres_batch_is_not_logged_twice(
    postgres_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # the duplicate aborts the pipeline; psycopg's own warning about ending it so is dropped
    # (store.py): the batch runs unit by unit and the replay is answered as such
    store = create_store(postgres_database_url)
    release = _held(store.writes)
    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_register, store, n, digest="e" * 64) for n in (1, 2)]
        _wait_queued(store.writes, 2)
        release.set()
        assert _ids_or(futures, ChallengeAlreadyRedeemed, "replayed").count("replayed") == 1
    assert store.writes.unbatched == 1
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    store.dispose()


def _presigned(n: int, candidate: tuple[int, int], calls: list[str]) -> Presigned:
    """An issuing step signed for status index ``candidate``; called (the index was taken),
    it records the call and reserves index ``1000 + n`` instead, as the service's would."""
    row = IssuedRow(f"j{n}", "kid", NOW, NOW + timedelta(hours=1))

    def again(connection: Connection, instance_id: str) -> IssuedRow:
        calls.append(f"j{n}")
        assert claim_entries(connection, [(0, 1000 + n, instance_id, NOW)]) == {(0, 1000 + n)}
        return IssuedRow(f"j{n}-again", "kid", NOW, NOW + timedelta(hours=1))

    return Presigned(again, lambda: row, candidate=candidate, status_expires_at=NOW + timedelta(hours=1))


def test_a_batch_reserves_free_status_indexes_at_once_and_only_the_taken_ones_again(
    database_url: str,
) -> None:
    """Of four registrations in a batch, one was signed for an index another JWT holds and
    two for the same index: the first of those two and the fourth keep their JWT as signed,
    the other two reserve another index and sign again; every entry names its instance."""
    store = create_store(database_url)
    with store.engine.begin() as connection:  # index (0, 5) is another JWT's
        connection.execute(text(
            "INSERT INTO instances (id, platform, client_id, key_thumbprint, instance_jwk, status, "
            "registered_at) VALUES ('other', 'android', 'c', 'other', '{}', 'active', '2026-11-01')"
        ))
        assert claim_entries(connection, [(0, 5, "other", NOW)]) == {(0, 5)}
    calls: list[str] = []
    candidates = {1: (0, 5), 2: (0, 7), 3: (0, 7), 4: (0, 9)}
    release = _held(store.writes)
    with ThreadPoolExecutor(4) as pool:
        futures = {
            n: pool.submit(
                store.register_instance,
                platform="android", client_id="c", key_thumbprint=f"t{n:042d}",
                instance_jwk={"kty": "EC"}, now=NOW,
                redemption=Redemption(f"{n:064d}", NOW), issue=_presigned(n, candidate, calls),
            )
            for n, candidate in candidates.items()
        }
        _wait_queued(store.writes, 4)
        release.set()
        records = {n: f.result(timeout=30) for n, f in futures.items()}
    assert store.writes.commits == 2  # the held unit, then the four together
    retried = {n for n in candidates if f"j{n}" in calls}
    assert len(retried) == 2 and 1 in retried and len(retried & {2, 3}) == 1
    with store.engine.connect() as connection:
        entries = dict(connection.execute(text("SELECT idx, instance_id FROM status_entries")).all())
    kept = ({2, 3} - retried).pop()
    assert entries[5] == "other"
    assert entries[7] == records[kept].id and entries[9] == records[4].id
    for n in retried:
        assert entries[1000 + n] == records[n].id
        assert [jti for jti, _, _ in store.issued_for(records[n].id)] == [f"j{n}-again"]
    for n in (kept, 4):
        assert [jti for jti, _, _ in store.issued_for(records[n].id)] == [f"j{n}"]
    store.dispose()


def test_a_batch_with_a_key_registered_before_falls_back_to_one_by_one(database_url: str) -> None:
    """A re-attested key (refreshed in place) and a key sent twice (the second refused) in a
    batch of new keys: the multi-row insert refuses them, and each write then runs alone."""
    store = create_store(database_url)
    before = _register(store, 1)
    release = _held(store.writes)
    inserts = _inserts(store)

    def again(n: int, digest: str, *, replace: bool) -> Any:
        return store.register_instance(
            platform="android", client_id="c", key_thumbprint=f"t{n:042d}", instance_jwk={"kty": "EC"},
            now=NOW, redemption=Redemption(digest, NOW), replace_same_key=replace,
            issued=IssuedRow(f"j{digest[:4]}", "kid", NOW, NOW + timedelta(hours=1)),
        )

    with ThreadPoolExecutor(4) as pool:
        new = pool.submit(_register, store, 2)
        refreshed = pool.submit(again, 1, "a" * 64, replace=True)
        twice = [pool.submit(again, 3, d * 64, replace=False) for d in "bc"]
        _wait_queued(store.writes, 4)
        release.set()
        assert refreshed.result(timeout=30).id == before.id
        assert new.result(timeout=30).id == store.instance_by_thumbprint(f"t{2:042d}").id
        outcomes = _ids_or(twice, AlreadyRegistered, "refused")
    assert outcomes.count("refused") == 1
    assert store.writes.unbatched == 1  # tried together, then one by one:
    assert inserts.count("instances") >= 4  # each through SQLAlchemy, alone (a refused one: again)
    store.dispose()


def test_failed_unit_is_taken_out_and_the_others_commit(database_url: str) -> None:
    store = create_store(database_url)
    assert store.redeem_challenge("f" * 64, expires_at=NOW)
    release = _held(store.writes)
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(_register, store, n) for n in (1, 2)]
        replay = pool.submit(_register, store, 3, digest="f" * 64)  # its challenge is used
        boom = pool.submit(store.writes.run, lambda _c: 1 / 0)
        _wait_queued(store.writes, 4)
        release.set()
        with pytest.raises(ChallengeAlreadyRedeemed):
            replay.result(timeout=30)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=30)
        records = [f.result(timeout=30) for f in good]
    assert store.instance_by_thumbprint(f"t{3:042d}") is None
    for n, record in zip((1, 2), records, strict=True):
        assert [jti for jti, _, _ in store.issued_for(record.id)] == [f"j{n}"]
    store.dispose()


def test_a_database_error_fails_the_batch_and_stores_nothing(database_url: str) -> None:
    """A statement the database cannot run (a fault of ours, or a lost or locked database)
    fails the whole batch: re-running each unit would make each wait its own timeout."""
    store = create_store(database_url)

    release = _held(store.writes)
    with ThreadPoolExecutor(2) as pool:
        registration = pool.submit(_register, store, 7)
        bad = pool.submit(store.writes.run, _missing_table)
        _wait_queued(store.writes, 2)
        release.set()
        with pytest.raises(DBAPIError):
            bad.result(timeout=30)
        with pytest.raises(DBAPIError):
            registration.result(timeout=30)
    assert store.instance_by_thumbprint(f"t{7:042d}") is None
    assert not store.challenge_redeemed(f"{7:064d}")
    store.dispose()


def test_postgres_deadlock_between_batches_fails_only_its_cause(postgres_database_url: str) -> None:
    """Two replicas' batches deadlock (each holds a challenge the other inserts next): the
    victim batch's units run again alone, so the innocent registration in it lands."""
    first, second = create_store(postgres_database_url), create_store(postgres_database_url)
    mine, theirs, other_committed = threading.Event(), threading.Event(), threading.Event()

    def make(own: str, other: str, signal: threading.Event, wait: threading.Event,
             delay: float) -> Any:
        runs = 0

        def unit(connection: Connection) -> None:
            nonlocal runs
            runs += 1
            if runs > 1:
                # run again alone once the other replica committed (else this new transaction
                # could take the row the other one waits for first, and deadlock it in turn)
                other_committed.wait(10)
            _redeem_in(connection, Redemption(own, NOW))
            signal.set()
            wait.wait(10)
            time.sleep(delay)
            _redeem_in(connection, Redemption(other, NOW))

        return unit

    def other_replica() -> None:
        mine.wait(10)
        second.writes.run(make("d2" * 32, "d1" * 32, theirs, mine, 0.6))
        other_committed.set()

    release = _held(first.writes)
    with ThreadPoolExecutor(3) as pool:
        # the first batch waits on the second's row 0.6 s earlier, so PostgreSQL's deadlock check
        # (deadlock_timeout after a wait began) aborts the first batch's transaction
        cause = pool.submit(first.writes.run, make("d1" * 32, "d2" * 32, mine, theirs, 0.0))
        innocent = pool.submit(_register, first, 8)
        _wait_queued(first.writes, 2)
        release.set()
        other = pool.submit(other_replica)
        other.result(timeout=60)
        with pytest.raises(ChallengeAlreadyRedeemed):  # alone, after the other committed
            cause.result(timeout=60)
        record = innocent.result(timeout=60)
    assert first.instance_by_thumbprint(f"t{8:042d}").id == record.id
    first.dispose()
    second.dispose()


def test_a_write_waiting_past_the_queue_timeout_fails_storage_busy(database_url: str) -> None:
    from attester.storage.group_commit import StorageBusy

    store = create_store(database_url)
    store.writes.queue_timeout = 0.2
    release = _held(store.writes)
    with ThreadPoolExecutor(1) as pool:
        late = pool.submit(_register, store, 9)
        _wait_queued(store.writes, 1)
        threading.Event().wait(0.4)
        release.set()
        with pytest.raises(StorageBusy):
            late.result(timeout=30)
    assert store.instance_by_thumbprint(f"t{9:042d}") is None
    store.dispose()


def test_a_lone_unit_refused_by_the_database_raises_and_stores_nothing(database_url: str) -> None:
    store = create_store(database_url)

    def half(connection: Connection) -> None:
        _redeem_in(connection, Redemption("9" * 64, NOW))
        _missing_table(connection)

    with pytest.raises(DBAPIError):
        store.writes.run(half)
    assert not store.challenge_redeemed("9" * 64)
    store.dispose()


def test_a_unit_cannot_start_another() -> None:
    from sqlalchemy import create_engine

    group = GroupCommit(create_engine("sqlite://"))
    with pytest.raises(RuntimeError, match="wait for itself"):
        group.run(lambda _c: group.run(lambda _d: None))


def test_sqlite_writers_queue_on_a_file_lock(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    _register(store, 1)
    assert (tmp_path / "a.db-writer.lock").exists()
    store.dispose()


def test_a_failed_batch_gives_every_unit_its_failure(database_url: str) -> None:
    """Found in review: B refused as already registered only because batch-mate A inserted
    the same key, then the batch failed on C: B must not answer instance_already_registered
    for a key that no transaction stored."""
    store = create_store(database_url)

    def same_key(n: int) -> Any:
        return store.register_instance(
            platform="android", client_id="c", key_thumbprint="s" * 43, instance_jwk={"kty": "EC"},
            now=NOW, redemption=Redemption(f"{n:064d}", NOW + timedelta(minutes=5)),
            issued=IssuedRow(f"j{n}", "kid", NOW, NOW + timedelta(hours=1)),
        )

    release = _held(store.writes)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(same_key, 1)
        _wait_queued(store.writes, 1)
        second = pool.submit(same_key, 2)
        _wait_queued(store.writes, 2)
        bad = pool.submit(store.writes.run, _missing_table)
        _wait_queued(store.writes, 3)
        release.set()
        for future in (first, second, bad):
            with pytest.raises(DBAPIError):
                future.result(timeout=30)
    assert store.instance_by_thumbprint("s" * 43) is None
    store.dispose()


def test_an_expired_write_is_answered_before_its_batch_ends(database_url: str) -> None:
    from attester.storage.group_commit import StorageBusy

    store = create_store(database_url)
    store.writes.queue_timeout = 0.2
    slow_started, slow_release = threading.Event(), threading.Event()

    def slow(_: Connection) -> None:
        slow_started.set()
        slow_release.wait(10)

    release = _held(store.writes)
    with ThreadPoolExecutor(2) as pool:
        late = pool.submit(_register, store, 10)
        _wait_queued(store.writes, 1)
        time.sleep(0.4)
        running = pool.submit(store.writes.run, slow)
        _wait_queued(store.writes, 2)
        release.set()
        assert slow_started.wait(10)
        with pytest.raises(StorageBusy):
            late.result(timeout=5)  # while the batch it was taken with still runs
        assert not running.done()
        slow_release.set()
        running.result(timeout=30)
    store.dispose()


def test_the_store_keeps_its_pool_of_connections_and_opens_no_more(database_url: str) -> None:
    """``database_pool_size`` connections at most: a third request for one waits for one
    of the two to come back (no connection opened and closed per request)."""
    store = create_store(database_url, pool_size=2)
    opened: list[object] = []
    event.listen(store.engine, "connect", lambda *_: opened.append(1))
    held = [store.engine.connect() for _ in range(2)]
    with ThreadPoolExecutor(1) as pool:
        third = pool.submit(lambda: store.engine.connect().close())
        time.sleep(0.3)
        assert not third.done()
        held.pop().close()
        third.result(timeout=10)
    held.pop().close()
    assert len(opened) <= 2
    store.dispose()


def test_the_pool_size_is_a_setting(tmp_path: Path) -> None:
    from attester.service import build_service
    from attester.settings import Settings

    service = build_service(Settings(data_dir=tmp_path, database_pool_size=3))
    assert service.store.engine.pool.size() == 3
    service.store.dispose()


def test_each_unit_of_a_failed_batch_raises_its_own_exception(database_url: str) -> None:
    """One exception object raised in several threads mixes their tracebacks: every other
    unit raises a copy (same type, same database error, caused by the batch's)."""
    store = create_store(database_url)
    release = _held(store.writes)
    with ThreadPoolExecutor(2) as pool:
        registration = pool.submit(_register, store, 5)
        _wait_queued(store.writes, 1)
        bad = pool.submit(store.writes.run, _missing_table)
        _wait_queued(store.writes, 2)
        release.set()
        errors = []
        for future in (registration, bad):
            with pytest.raises(DBAPIError) as caught:
                future.result(timeout=30)
            errors.append(caught.value)
    first, second = errors
    assert first is not second and type(first) is type(second)
    assert str(first.orig) == str(second.orig)
    assert (first.__cause__ is second) or (second.__cause__ is first)
    store.dispose()


def test_two_registrations_with_one_challenge_in_a_batch_one_is_a_replay(database_url: str) -> None:
    store = create_store(database_url)
    release = _held(store.writes)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(_register, store, n, digest="e" * 64) for n in (1, 2)]
        other = pool.submit(_register, store, 3)
        _wait_queued(store.writes, 3)
        release.set()
        outcomes = _ids_or(futures, ChallengeAlreadyRedeemed, "replayed")
        assert other.result(timeout=30).id == store.instance_by_thumbprint(f"t{3:042d}").id
    assert outcomes.count("replayed") == 1
    assert store.writes.unbatched == 1  # tried together, then one by one
    store.dispose()


def test_a_write_waiting_for_a_connection_does_not_hold_the_writer_lock(tmp_path: Path) -> None:
    """The pool is empty: the leader waits for a connection before it takes the file lock
    every process's writes queue on (so another worker's writes go on meanwhile)."""
    import fcntl

    store = create_store(f"sqlite:///{tmp_path / 'a.db'}", pool_size=1)
    held = store.engine.connect()
    with ThreadPoolExecutor(1) as pool:
        write = pool.submit(_register, store, 1)
        time.sleep(0.3)
        assert not write.done()
        fd = os.open(tmp_path / "a.db-writer.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises if the leader held it
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        held.close()
        assert write.result(timeout=10).id
    store.dispose()


def test_in_memory_sqlite_keeps_its_own_pool(tmp_path: Path) -> None:
    import warnings

    from sqlalchemy.pool import QueuePool, SingletonThreadPool

    from sqlalchemy.exc import SADeprecationWarning

    with warnings.catch_warnings():
        # SQLAlchemy's own choice of pool by the URL warns that it is deprecated
        warnings.simplefilter("error", SADeprecationWarning)
        for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:mem1?mode=memory&uri=true"):
            store = create_store(url, pool_size=3)
            assert isinstance(store.engine.pool, SingletonThreadPool)
            assert _register(store, 1).id
            store.dispose()
        store = create_store(f"sqlite:///{tmp_path / 'file.db'}", pool_size=3)
        assert isinstance(store.engine.pool, QueuePool) and store.engine.pool.size() == 3
        store.dispose()
