"""Storage on SQLite and on a real PostgreSQL server: migrations, atomic single use, CAS."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from attester.storage import AlreadyRegistered, Store, create_store

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def test_storage_migrations_create_schema_idempotently(database_url: str) -> None:
    store = create_store(database_url)
    create_store(database_url).dispose()  # second start-up: nothing to do, no error
    tables = set(inspect(store.engine).get_table_names())
    assert {"redeemed_challenges", "instances", "issued_attestations", "alembic_version"} <= tables
    store.dispose()


def test_storage_redeem_is_single_use_under_concurrency(database_url: str) -> None:
    store = create_store(database_url)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.redeem_challenge("d" * 64, expires_at=NOW), range(16)))
    assert results.count(True) == 1 and results.count(False) == 15
    store.dispose()


def test_storage_purge_drops_only_expired(database_url: str) -> None:
    store = create_store(database_url)
    store.redeem_challenge("a" * 64, expires_at=NOW)
    store.redeem_challenge("b" * 64, expires_at=NOW + timedelta(hours=1))
    assert store.purge_expired(NOW + timedelta(minutes=1)) == 1
    assert store.redeem_challenge("b" * 64, expires_at=NOW) is False
    store.dispose()


def _register(store, **kw):  # type: ignore[no-untyped-def]
    args = {
        "platform": "apple", "client_id": "c", "key_thumbprint": "t" * 43, "instance_jwk": {"kty": "EC"},
        "now": NOW, "apple_key_id": "k" * 43, "apple_public_key": b"\x04" + b"\x01" * 64,
        "apple_counter": 0, "apple_receipt": b"receipt", "apple_environment": "production",
    }
    args.update(kw)
    return store.register_instance(**args)


def test_storage_instance_round_trip_keeps_utc_times(database_url: str) -> None:
    store = create_store(database_url)
    record = _register(store)
    loaded = store.instance_by_thumbprint("t" * 43)
    assert loaded == record and loaded.registered_at == NOW and loaded.registered_at.tzinfo is not None
    store.dispose()


def test_storage_same_apple_key_id_refused(database_url: str) -> None:
    store = create_store(database_url)
    _register(store)
    with pytest.raises(AlreadyRegistered):
        _register(store, key_thumbprint="u" * 43)
    store.dispose()


def test_storage_android_same_key_re_registers(database_url: str) -> None:
    store = create_store(database_url)
    kw = {
        "platform": "android", "apple_key_id": None, "apple_public_key": None, "apple_counter": None,
        "apple_receipt": None, "apple_environment": None, "android_serials": ("01",),
    }
    first = _register(store, **kw)
    second = _register(store, **{**kw, "android_serials": ("02",), "now": NOW + timedelta(days=1)}, replace_same_key=True)
    assert second.id == first.id and second.android_serials == ("02",)
    with pytest.raises(AlreadyRegistered):
        _register(store, **kw)  # without replace_same_key
    store.dispose()


def test_storage_counter_compare_and_set_one_winner(database_url: str) -> None:
    store = create_store(database_url)
    record = _register(store)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.advance_counter(record.id, new_counter=5, now=NOW), range(16)))
    assert results.count(True) == 1
    assert store.advance_counter(record.id, new_counter=4, now=NOW) is False
    assert store.advance_counter(record.id, new_counter=6, now=NOW) is True
    assert store.instance_by_thumbprint("t" * 43).apple_counter == 6  # type: ignore[union-attr]
    store.dispose()


def test_storage_issued_attestations_recorded(database_url: str) -> None:
    store = create_store(database_url)
    record = _register(store)
    store.record_issued(jti="j1", instance_id=record.id, kid="kid", issued_at=NOW, expires_at=NOW + timedelta(hours=1))
    assert store.issued_for(record.id) == [("j1", "kid", NOW + timedelta(hours=1))]
    store.dispose()


def test_storage_replay_read_through_the_driver(database_url: str) -> None:
    """The replay read uses the driver's cursor (store.py): the same answer as a read
    through SQLAlchemy, a driver error raised as SQLAlchemy's, and the pooled connection
    left as it was found (PostgreSQL: out of autocommit, no transaction open)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    store = create_store(database_url)
    assert not store.challenge_redeemed("e" * 64)
    assert store.redeem_challenge("e" * 64, expires_at=NOW)
    assert store.challenge_redeemed("e" * 64) and not store.challenge_redeemed("f" * 64)
    raw = store.engine.raw_connection()
    try:
        if store.engine.dialect.name == "postgresql":
            assert raw.driver_connection.autocommit is False  # type: ignore[union-attr]
            assert raw.driver_connection.info.transaction_status.name == "IDLE"  # type: ignore[union-attr]
    finally:
        raw.close()
    with store.engine.begin() as connection:
        connection.execute(text("DROP TABLE redeemed_challenges"))
    with pytest.raises(DBAPIError) as refused:
        store.challenge_redeemed("e" * 64)
    assert not refused.value.connection_invalidated
    store.dispose()


def test_storage_replay_read_on_a_lost_connection_invalidates_it(postgres_database_url: str) -> None:
    """A PostgreSQL connection the server ended (after the pool's checkout ping): the read
    raises SQLAlchemy's error with the connection invalidated, and the next read gets a
    new connection."""
    from sqlalchemy import event, text
    from sqlalchemy.exc import DBAPIError

    store = create_store(postgres_database_url, pool_size=2)
    other = create_store(postgres_database_url, migrate=False)
    assert not store.challenge_redeemed("e" * 64)
    ended: list[int] = []

    def end_backend(dbapi_connection, record, proxy):  # type: ignore[no-untyped-def]
        if not ended:  # the first checkout only
            ended.append(dbapi_connection.info.backend_pid)
            with other.engine.connect() as connection:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": ended[0]})

    event.listen(store.engine.pool, "checkout", end_backend)
    try:
        with pytest.raises(DBAPIError) as lost:
            store.challenge_redeemed("e" * 64)
        assert lost.value.connection_invalidated
        assert not store.challenge_redeemed("e" * 64)  # a fresh connection
        assert len(ended) == 1
    finally:
        event.remove(store.engine.pool, "checkout", end_backend)
        other.dispose()
        store.dispose()


def _backend_pid(store: Store) -> int:
    raw = store.engine.raw_connection()
    try:
        return int(raw.driver_connection.info.backend_pid)  # type: ignore[union-attr]
    finally:
        raw.close()


def test_storage_pings_only_a_connection_that_sat_idle(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No round trip before each use of a pooled connection (store.py, _ping_when_idle):
    one back in the pool a moment ago is handed out as it is; one idle for longer than
    IDLE_PING_AFTER is pinged first."""
    from attester.storage import store as store_module

    store = create_store(postgres_database_url, pool_size=1)
    pings: list[object] = []
    ping = store.engine.dialect.do_ping
    monkeypatch.setattr(store.engine.dialect, "do_ping", lambda c: pings.append(c) or ping(c))
    try:
        for _ in range(5):
            assert not store.challenge_redeemed("e" * 64)
        assert pings == []
        monkeypatch.setattr(store_module, "IDLE_PING_AFTER", 0.0)
        assert not store.challenge_redeemed("e" * 64)
        with store.engine.begin() as connection:
            connection.exec_driver_sql("SELECT 1")
        assert len(pings) == 2
    finally:
        store.dispose()


def test_storage_replaces_an_idle_connection_the_server_ended(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection the server ended while it was idle: the ping finds it lost,
    the pool connects afresh, and the read is answered (nothing fails)."""
    from sqlalchemy import text

    from attester.storage import store as store_module

    store = create_store(postgres_database_url, pool_size=1)
    other = create_store(postgres_database_url, migrate=False)
    try:
        first = _backend_pid(store)
        with other.engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        monkeypatch.setattr(store_module, "IDLE_PING_AFTER", 0.0)  # (it sat idle long enough)
        assert not store.challenge_redeemed("e" * 64)
        assert _backend_pid(store) != first
    finally:
        other.dispose()
        store.dispose()


def test_storage_a_lost_connection_replaces_the_pools_older_ones(postgres_database_url: str) -> None:
    """The server restarted (every pooled connection ended) while the connections were in
    use a moment ago (no ping): the first read fails, 503 for its request, and the pool's
    other connections are replaced with it, so the next read is answered."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    store = create_store(postgres_database_url, pool_size=2)
    other = create_store(postgres_database_url, migrate=False)
    try:
        both = [store.engine.raw_connection() for _ in range(2)]
        pids = [int(raw.driver_connection.info.backend_pid) for raw in both]  # type: ignore[union-attr]
        for raw in both:
            raw.close()
        with other.engine.connect() as connection:
            for pid in pids:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as lost:
            store.challenge_redeemed("e" * 64)
        assert lost.value.connection_invalidated
        assert not store.challenge_redeemed("e" * 64)  # not the other ended connection
        assert _backend_pid(store) not in pids
    finally:
        other.dispose()
        store.dispose()
