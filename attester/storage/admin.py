"""Operator reads and writes: instance queries, status changes with their audit record.

A status change, the flip of the instance's status-list entries, the version bump that
tells other replicas to re-sign their lists, and the audit record are one transaction:
either all of it is stored or none of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from attester.storage.models import AuditRecord, Instance, StatusEntry, StatusListVersion
from attester.storage.status_entries import lock_instance
from attester.storage.store import InstanceRecord

# status values of draft-ietf-oauth-status-list section 7.1
VALID, INVALID, SUSPENDED = 0, 1, 2

# action -> (instance states it applies to, new instance state, entry values it flips, new value)
TRANSITIONS: dict[str, tuple[frozenset[str], str, frozenset[int], int]] = {
    # revocation is final: INVALID entries never become valid again
    "revoke": (
        frozenset({"active", "suspended"}),
        "revoked",
        frozenset({VALID, SUSPENDED}),
        INVALID,
    ),
    "suspend": (frozenset({"active"}), "suspended", frozenset({VALID}), SUSPENDED),
    "reinstate": (frozenset({"suspended"}), "active", frozenset({SUSPENDED}), VALID),
}


class InstanceMissing(Exception):
    """No instance has this id."""


class TransitionRefused(Exception):
    """The action does not apply to the instance's current status (e.g. reinstate a revoked one)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    reason: str | None
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
        }


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _audit_row(
    now: datetime,
    actor: str,
    action: str,
    target: str | None,
    reason: str | None,
    before: Any,
    after: Any,
) -> AuditRecord:
    return AuditRecord(
        at=now,
        actor=actor,
        action=action,
        target=target,
        reason=reason,
        before=_dump(before),
        after=_dump(after),
    )


class AdminStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # -- instances -------------------------------------------------------------------
    def instances(
        self,
        *,
        client_id: str | None = None,
        platform: str | None = None,
        key_thumbprint: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[InstanceRecord]:
        """Instances matching every given filter, ordered by id (``after`` pages)."""
        query = select(Instance).order_by(Instance.id).limit(limit)
        for column, value in (
            (Instance.client_id, client_id),
            (Instance.platform, platform),
            (Instance.key_thumbprint, key_thumbprint),
            (Instance.status, status),
        ):
            if value is not None:
                query = query.where(column == value)
        if after is not None:
            query = query.where(Instance.id > after)
        with self._sessions() as session:
            return [InstanceRecord.of(row) for row in session.scalars(query)]

    def instance(self, instance_id: str) -> InstanceRecord | None:
        with self._sessions() as session:
            row = session.get(Instance, instance_id)
            return None if row is None else InstanceRecord.of(row)

    def change_status(
        self, instance_id: str, action: str, *, actor: str, reason: str, now: datetime
    ) -> tuple[InstanceRecord, list[int]]:
        """Apply ``action`` (revoke, suspend, reinstate); return the record and changed lists."""
        allowed, new_status, flips, value = TRANSITIONS[action]
        with self._sessions.begin() as session:
            if not lock_instance(session, instance_id, only_active=False):
                raise InstanceMissing(instance_id)
            row = session.get(Instance, instance_id, populate_existing=True)
            assert row is not None
            before = {"status": row.status}
            if row.status not in allowed:
                raise TransitionRefused(row.status)
            row.status = new_status
            changed = session.scalars(
                select(StatusEntry.list_id)
                .where(StatusEntry.instance_id == instance_id, StatusEntry.status.in_(flips))
                .distinct()
            ).all()
            flipped = session.execute(
                update(StatusEntry)
                .where(StatusEntry.instance_id == instance_id, StatusEntry.status.in_(flips))
                .values(status=value)
            )
            lists = sorted(int(x) for x in changed)
            if lists:
                session.execute(
                    update(StatusListVersion)
                    .where(StatusListVersion.list_id.in_(lists))
                    .values(version=StatusListVersion.version + 1)
                )
            after = {"status": new_status, "status_entries_changed": int(flipped.rowcount or 0)}  # type: ignore[attr-defined]
            session.add(
                _audit_row(now, actor, f"instance.{action}", instance_id, reason, before, after)
            )
            session.flush()
            return InstanceRecord.of(row), lists

    # -- audit -----------------------------------------------------------------------
    def audit(
        self,
        *,
        actor: str,
        action: str,
        now: datetime,
        target: str | None = None,
        reason: str | None = None,
        before: Any = None,
        after: Any = None,
    ) -> None:
        with self._sessions.begin() as session:
            session.add(_audit_row(now, actor, action, target, reason, before, after))

    def audit_records(self, *, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest audit records first."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        if target is not None:
            query = query.where(AuditRecord.target == target)
        with self._sessions() as session:
            return [
                AuditEntry(
                    id=r.id,
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    target=r.target,
                    reason=r.reason,
                    before=None if r.before is None else json.loads(r.before),
                    after=None if r.after is None else json.loads(r.after),
                )
                for r in session.scalars(query)
            ]
