"""SQLAlchemy's INSERTs through the driver's cursor (attester/storage/driver_sql.py): the
driver gets what SQLAlchemy would have given it, on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from attester.storage import create_store
from attester.storage.driver_sql import driver_statement, execute_many
from attester.storage.models import Instance
from attester.storage.status_entries import _CLAIM_MANY
from attester.storage.store import _INSERT_INSTANCES_MANY, _INSERT_ISSUED, _INSERT_REDEEMED

NOW = datetime(2026, 12, 3, 18, 30, 1, 250001, tzinfo=UTC)


def _instance(n: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": f"{n:036d}", "platform": "ios", "client_id": "c", "key_thumbprint": f"t{n:042d}",
        "instance_jwk": '{"kty": "EC"}', "status": "active", "registered_at": NOW,
        "renewed_at": None, "android_serials": None, "android_facts": '{"a": 1}',
        "apple_key_id": f"k{n}", "apple_public_key": b"\x00\x01\xff", "apple_counter": 2**40,
        "apple_receipt": b"", "apple_environment": "production", "apple_root": "r",
        "apple_risk_metric": 3,
        "apple_receipt_refreshed_at": NOW.astimezone(timezone(timedelta(hours=-5))),
    }
    return {**row, **changes}


def _rows() -> list[tuple[Any, dict[str, Any]]]:
    """A row for each hot INSERT (the batch's), with every kind of value they carry."""
    return [
        (_INSERT_REDEEMED, {"digest": "d" * 64, "expires_at": NOW}),
        (_INSERT_INSTANCES_MANY[0], _instance(1)),
        (_INSERT_ISSUED, {"jti": "j1", "instance_id": f"{1:036d}", "kid": "k",
                          "issued_at": NOW, "expires_at": NOW + timedelta(hours=1)}),
    ]


def test_the_driver_gets_what_sqlalchemy_gives_it(database_url: str) -> None:
    store = create_store(database_url)
    sent: list[Any] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda _c, _cur, _sql, parameters, *_: sent.append(parameters))
    dialect = store.engine.dialect
    claim = {"list_id": 0, "idx": 7, "instance_id": f"{1:036d}", "status": 0,
             "expires_at": NOW.astimezone(timezone(timedelta(hours=9)))}
    with store.engine.connect() as connection, connection.begin() as transaction:
        for statement, row in [*_rows(), (_CLAIM_MANY[dialect.name], claim)]:
            sent.clear()
            connection.execute(statement, row)
            ours = driver_statement(statement, dialect, row)
            assert [_plain(p) for p in sent] == [_plain(ours.parameters(row))], statement.table
        transaction.rollback()
    store.dispose()


def _plain(parameters: Any) -> Any:
    """Parameters with their binary wrappers (sqlite3's memoryview, psycopg's Binary, which
    compares by identity) as bytes."""
    def value(v: Any) -> Any:
        v = getattr(v, "obj", v)
        return bytes(v) if isinstance(v, memoryview) else v

    if isinstance(parameters, dict):
        return {k: value(v) for k, v in parameters.items()}
    return tuple(value(v) for v in parameters)


def test_rows_written_through_the_driver_read_back_as_written(database_url: str) -> None:
    store = create_store(database_url)
    dialect = store.engine.dialect
    rows = [_instance(1), _instance(2, apple_public_key=None, apple_receipt_refreshed_at=None)]
    with store.engine.begin() as connection:
        execute_many(connection.connection.driver_connection,
                     driver_statement(_INSERT_INSTANCES_MANY[0], dialect, rows[0]), rows)
    with store.engine.connect() as connection:
        read = connection.execute(select(Instance.__table__).order_by(Instance.id))
        got = [dict(r._mapping) for r in read]
    assert got == rows  # the same instants (aware, as UTCDateTime reads them), the same bytes
    store.dispose()


def test_a_naive_datetime_is_refused_as_sqlalchemy_refuses_it(database_url: str) -> None:
    store = create_store(database_url)
    row = {"digest": "d" * 64, "expires_at": NOW.replace(tzinfo=None)}
    statement = driver_statement(_INSERT_REDEEMED, store.engine.dialect, row)
    with pytest.raises(ValueError):
        statement.parameters(row)
    store.dispose()


def test_a_value_sqlalchemy_would_fill_in_is_not_taken() -> None:
    store = create_store("sqlite://")
    row = _instance(1)
    del row["status"]  # a Python-side default: SQLAlchemy would add 'active'
    with pytest.raises(TypeError, match="would fill in"):
        driver_statement(_INSERT_INSTANCES_MANY[0], store.engine.dialect, row)
    # a column the table does not have (SQLAlchemy's compiler leaves it out)
    with pytest.raises(TypeError, match="not the columns given"):
        driver_statement(insert(Instance.__table__), store.engine.dialect, [*_instance(1), "nope"])
    store.dispose()


def test_each_statement_is_compiled_once_per_dialect_and_columns() -> None:
    store = create_store("sqlite://")
    dialect = store.engine.dialect
    row = _rows()[0][1]
    first = driver_statement(_INSERT_REDEEMED, dialect, row)
    assert driver_statement(_INSERT_REDEEMED, dialect, dict(row)) is first
    assert driver_statement(_INSERT_REDEEMED, dialect, ["expires_at", "digest"]) is not first
    with contextlib.closing(store.engine.raw_connection()) as raw:
        execute_many(raw.driver_connection, first, [row])
        raw.commit()
    assert store.challenge_redeemed("d" * 64)
    store.dispose()
