"""Data lifecycle: delete what no replica can need any more, in bounded batches.

Safe with several replicas running it at once: every predicate is a pure function of stored
timestamps and ``now`` (with margins for clock skew), so two purgers agree on what is dead;
each batch is one short ``DELETE ... WHERE key IN (SELECT key ... LIMIT n) AND <predicate>``
transaction, so a row another purger deleted first is simply not matched again, and no
transaction holds locks on more than ``batch`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, delete, select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, sessionmaker

from attester.storage.models import (
    AuditRecord,
    IssuedAttestation,
    RedeemedChallenge,
    StatusEntry,
)

DEFAULT_BATCH = 1000


@dataclass(frozen=True)
class PurgeCutoffs:
    """Rows older than these instants are deleted."""

    challenges: datetime  # redeemed challenges: their own expiry (plus skew) has passed
    attestations: datetime  # issued-attestation rows and status entries: the JWT has expired
    audit: datetime  # audit records past the retention


def purge(engine: Engine, cutoffs: PurgeCutoffs, *, batch: int = DEFAULT_BATCH) -> dict[str, int]:
    """Delete expired challenges, status entries, issued-attestation rows and old audit records."""
    targets: list[tuple[str, tuple[InstrumentedAttribute[object], ...], ColumnElement[bool]]] = [
        (
            "challenges",
            (RedeemedChallenge.digest,),
            RedeemedChallenge.expires_at < cutoffs.challenges,
        ),
        (
            "status_entries",
            (StatusEntry.list_id, StatusEntry.idx),
            StatusEntry.expires_at < cutoffs.attestations,
        ),
        (
            "issued_attestations",
            (IssuedAttestation.jti,),
            IssuedAttestation.expires_at < cutoffs.attestations,
        ),
        ("audit", (AuditRecord.id,), AuditRecord.at < cutoffs.audit),
    ]
    sessions = sessionmaker(engine)
    counts: dict[str, int] = {}
    for name, keys, condition in targets:
        total = 0
        while True:
            with sessions.begin() as session:
                chosen = select(*keys).where(condition).limit(batch)
                key = keys[0] if len(keys) == 1 else tuple_(*keys)
                table = keys[0].class_
                result = session.execute(delete(table).where(key.in_(chosen), condition))
                deleted = int(result.rowcount or 0)  # type: ignore[attr-defined]
            total += deleted
            if deleted < batch:
                break
        counts[name] = total
    return counts
