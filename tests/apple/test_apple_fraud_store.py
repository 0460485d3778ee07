"""The fraud metric on the instance row (migration 0003), on SQLite and real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import inspect

from attester.storage import create_store

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
JWK = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}


def test_fraud_store_migration_adds_columns(database_url: str) -> None:
    store = create_store(database_url)
    columns = {c["name"] for c in inspect(store.engine).get_columns("instances")}
    assert {"apple_risk_metric", "apple_receipt_refreshed_at"} <= columns
    store.dispose()


def test_fraud_store_receipt_and_metric_round_trip(database_url: str) -> None:
    store = create_store(database_url)
    record = store.register_instance(
        platform="apple",
        client_id="c",
        key_thumbprint="t" * 43,
        instance_jwk=JWK,
        now=NOW,
        apple_key_id="k",
        apple_public_key=b"\x04" + b"\x01" * 64,
        apple_counter=0,
        apple_receipt=b"attest receipt",
        apple_environment="production",
        apple_risk_metric=2,
        apple_receipt_refreshed_at=NOW,
    )
    assert (record.apple_receipt, record.apple_risk_metric) == (b"attest receipt", 2)
    later = NOW + timedelta(days=1)
    store.store_receipt(record.id, receipt=b"fresh receipt", risk_metric=7, now=later)
    again = store.instance_by_thumbprint("t" * 43)
    assert again is not None
    assert (again.apple_receipt, again.apple_risk_metric) == (b"fresh receipt", 7)
    assert again.apple_receipt_refreshed_at == later
    store.dispose()
