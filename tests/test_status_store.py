"""Status-list storage on SQLite and PostgreSQL: unique random indexes, status changes with
audit, two replicas allocating and revoking concurrently, and the purge."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from attester.storage import create_store
from attester.storage.admin import AdminStore, InstanceMissing, TransitionRefused
from attester.storage.models import AuditRecord, IssuedAttestation, StatusEntry
from attester.storage.purge import PurgeCutoffs, purge
from attester.storage.status_entries import InstanceNotActive, StatusEntries, StatusListFull

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def _instance(store: Any, n: int) -> str:
    record = store.register_instance(
        platform="android", client_id="c", key_thumbprint=f"{n:043d}", instance_jwk={"kty": "EC"}, now=NOW
    )
    return str(record.id)


def test_status_allocate_unique_random_indexes(database_url: str) -> None:
    store = create_store(database_url)
    entries = StatusEntries(store.engine)
    instance = _instance(store, 1)
    got = [entries.allocate(instance, expires_at=LATER, lists=2, size=10_000) for _ in range(200)]
    assert len(set(got)) == 200
    assert {list_id for list_id, _ in got} == {0, 1}
    # random, not sequential: sorted order differs from allocation order and spans the list
    idxs = [idx for _, idx in got]
    assert idxs != sorted(idxs) and max(idxs) - min(idxs) > 5000
    store.dispose()


def test_status_allocate_full_list_refused(database_url: str) -> None:
    store = create_store(database_url)
    entries = StatusEntries(store.engine)
    instance = _instance(store, 1)
    assert {entries.allocate(instance, expires_at=LATER, lists=1, size=1)} == {(0, 0)}
    with pytest.raises(StatusListFull):
        entries.allocate(instance, expires_at=LATER, lists=1, size=1)
    store.dispose()


def test_status_allocate_for_suspended_instance_refused(database_url: str) -> None:
    store = create_store(database_url)
    entries, admin = StatusEntries(store.engine), AdminStore(store.engine)
    instance = _instance(store, 1)
    admin.change_status(instance, "suspend", actor="ops", reason="lost phone", now=NOW)
    with pytest.raises(InstanceNotActive):
        entries.allocate(instance, expires_at=LATER, lists=1, size=10_000)
    with pytest.raises(InstanceNotActive):
        entries.allocate("no-such-instance", expires_at=LATER, lists=1, size=10_000)
    store.dispose()


def test_status_transitions_flip_entries_and_audit(database_url: str) -> None:
    store = create_store(database_url)
    entries, admin = StatusEntries(store.engine), AdminStore(store.engine)
    entries.ensure_lists(1)
    instance, other = _instance(store, 1), _instance(store, 2)
    mine = entries.allocate(instance, expires_at=LATER, lists=1, size=10_000)
    theirs = entries.allocate(other, expires_at=LATER, lists=1, size=10_000)
    v0 = entries.version(0)

    admin.change_status(instance, "suspend", actor="ops", reason="r1", now=NOW)
    assert entries.statuses(0) == {mine[1]: 2} and entries.version(0) == v0 + 1
    admin.change_status(instance, "reinstate", actor="ops", reason="r2", now=NOW)
    assert entries.statuses(0) == {}
    record, lists = admin.change_status(instance, "revoke", actor="ops", reason="r3", now=NOW)
    assert record.status == "revoked" and lists == [0]
    assert entries.statuses(0) == {mine[1]: 1} and theirs[1] not in entries.statuses(0)

    for action in ("reinstate", "suspend", "revoke"):  # revocation is final
        with pytest.raises(TransitionRefused):
            admin.change_status(instance, action, actor="ops", reason="x", now=NOW)
    with pytest.raises(InstanceMissing):
        admin.change_status("nope", "revoke", actor="ops", reason="x", now=NOW)

    audit = admin.audit_records(target=instance)
    assert [a.action for a in audit] == ["instance.revoke", "instance.reinstate", "instance.suspend"]
    assert audit[0].before == {"status": "active"} and audit[0].after["status"] == "revoked"
    assert audit[0].actor == "ops" and audit[0].reason == "r3" and audit[0].at == NOW
    store.dispose()


def test_status_two_replicas_allocate_and_revoke_concurrently(database_url: str) -> None:
    """Two service instances on one database: no duplicate index, no lost revocation."""
    replicas = [create_store(database_url), create_store(database_url)]
    entries = [StatusEntries(s.engine) for s in replicas]
    admins = [AdminStore(s.engine) for s in replicas]
    entries[0].ensure_lists(1)
    instances = [_instance(replicas[0], n) for n in range(8)]
    doomed = set(instances[:4])
    allocated: list[tuple[str, tuple[int, int]]] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def allocate(worker: int) -> None:
        start.wait()
        for round_ in range(40):
            instance = instances[(worker + round_) % len(instances)]
            try:
                got = entries[worker % 2].allocate(instance, expires_at=LATER, lists=1, size=10_000)
            except InstanceNotActive:
                with lock:
                    refused.append(instance)
                continue
            with lock:
                allocated.append((instance, got))

    def revoke(worker: int) -> None:
        start.wait()
        for i, instance in enumerate(sorted(doomed)):
            if i % 2 == worker:
                admins[worker].change_status(instance, "revoke", actor=f"r{worker}", reason="x", now=NOW)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(allocate, w) for w in range(4)] + [pool.submit(revoke, w) for w in range(2)]
        for future in futures:
            future.result()

    indexes = [got for _, got in allocated]
    assert len(indexes) == len(set(indexes)), "an index was handed out twice"
    assert set(refused) <= doomed
    final = entries[1].statuses(0)
    for instance, (_, idx) in allocated:
        assert final.get(idx, 0) == (1 if instance in doomed else 0), "a revocation was lost"
    with replicas[0].engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(StatusEntry)).scalar_one()
    assert stored == len(allocated)
    for store in replicas:
        store.dispose()


def test_status_purge_frees_expired_in_batches(database_url: str) -> None:
    store = create_store(database_url)
    entries, admin = StatusEntries(store.engine), AdminStore(store.engine)
    instance = _instance(store, 1)
    for i in range(25):
        entries.allocate(instance, expires_at=NOW + timedelta(seconds=i), lists=1, size=10_000)
        store.record_issued(
            jti=f"j{i}", instance_id=instance, kid="k", issued_at=NOW, expires_at=NOW + timedelta(seconds=i)
        )
    store.redeem_challenge("a" * 64, expires_at=NOW)
    store.redeem_challenge("b" * 64, expires_at=LATER)
    admin.audit(actor="ops", action="apps.reload", now=NOW - timedelta(days=500))
    admin.audit(actor="ops", action="apps.reload", now=NOW)
    cutoffs = PurgeCutoffs(
        challenges=NOW + timedelta(seconds=1),
        attestations=NOW + timedelta(seconds=20),
        audit=NOW - timedelta(days=400),
    )
    counts = purge(store.engine, cutoffs, batch=7)
    assert counts == {"challenges": 1, "status_entries": 20, "issued_attestations": 20, "audit": 1}
    assert len(entries.entries_for(instance)) == 5
    assert [e[2] for e in store.issued_for(instance)] == [NOW + timedelta(seconds=i) for i in range(20, 25)]
    assert purge(store.engine, cutoffs, batch=7) == dict.fromkeys(counts, 0)  # idempotent
    assert store.redeem_challenge("a" * 64, expires_at=NOW) is True  # freed
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(AuditRecord)).scalar_one() == 1
        assert connection.execute(select(func.count()).select_from(IssuedAttestation)).scalar_one() == 5
    store.dispose()


def test_status_purge_two_replicas_concurrently_delete_each_row_once(database_url: str) -> None:
    replicas = [create_store(database_url), create_store(database_url)]
    instance = _instance(replicas[0], 1)
    for i in range(300):
        replicas[0].record_issued(jti=f"j{i}", instance_id=instance, kid="k", issued_at=NOW, expires_at=NOW)
    cutoffs = PurgeCutoffs(challenges=NOW, attestations=LATER, audit=NOW)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: purge(s.engine, cutoffs, batch=50), replicas))
    assert sum(r["issued_attestations"] for r in results) == 300
    for store in replicas:
        store.dispose()
