"""Token Status List entries: random, replica-safe index allocation and status reads.

An index is unique because ``(list_id, idx)`` is the primary key: the insert uses
``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), and a conflict means another JWT holds
that index, so a new random one is drawn. Allocation first takes the instance's row lock
(a no-op ``UPDATE ... WHERE status = 'active'``), as a status change does, so an allocation
and a revocation of the same instance are serialised: either the revocation sees the new
entry and flips it, or the allocation sees the revoked instance and is refused.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from attester.storage.driver_sql import driver_statement, returned_rows
from attester.storage.models import Instance, StatusEntry, StatusListVersion

ALLOCATION_TRIES = 32


class InstanceNotActive(Exception):
    """The instance is revoked or suspended (or gone): no new JWT may carry a status index."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(f"instance {instance_id} is {status}")
        self.status = status  # "revoked", "suspended" (a missing instance counts as revoked)


class StatusListFull(Exception):
    """No free index was found: the lists are too small for the JWTs alive at once."""


def lock_instance(session: Session | Connection, instance_id: str, *, only_active: bool) -> bool:
    """Take the instance's row lock (PostgreSQL) or the database write lock (SQLite).

    A write first, so SQLite's transaction holds the write lock from its first statement.
    """
    statement = _LOCK_ACTIVE if only_active else _LOCK_ANY
    result = session.execute(statement, {"target_id": instance_id})
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def lock_active_instance(session: Session | Connection, instance_id: str) -> None:
    """:func:`lock_instance` of an active instance; :class:`InstanceNotActive` (with the
    status it has: revoked, suspended, or gone) when it is not."""
    if not lock_instance(session, instance_id, only_active=True):
        status = session.scalar(_INSTANCE_STATUS, {"target_id": instance_id})
        raise InstanceNotActive(instance_id, status or "revoked")


def claim_entries(
    connection: Connection,
    rows: list[tuple[int, int, str, datetime | None]],
    *,
    driver: Any = None,
) -> set[tuple[int, int]]:
    """Reserve the indexes ``(list_id, idx, instance_id, expires_at)`` of several JWTs in
    one statement (status 0, valid); the ``(list_id, idx)`` that were free, now reserved.
    The caller holds the instances' locks (it inserted their rows in this transaction).

    ``driver``: the driver's connection of ``connection``, whose cursor runs the claim, one
    INSERT per row (store.py, ``_Pipeline``; in psycopg's pipeline they go out together
    and are answered in one round trip)."""
    if not rows:
        return set()
    values = [
        {"list_id": list_id, "idx": idx, "instance_id": instance_id, "status": 0, "expires_at": expires_at}
        for list_id, idx, instance_id, expires_at in rows
    ]
    dialect = connection.dialect
    statement = _CLAIM_MANY[dialect.name]
    if driver is None:
        return {(int(list_id), int(idx)) for list_id, idx in connection.execute(statement, values)}
    # (the caller raises driver errors as SQLAlchemy's)
    claimed = returned_rows(driver, driver_statement(statement, dialect, values[0]), values)
    return {(int(list_id), int(idx)) for list_id, idx in claimed}


_CLAIM_MANY = {
    dialect.dialect.name: dialect.insert(StatusEntry)
    .on_conflict_do_nothing()
    .returning(StatusEntry.list_id, StatusEntry.idx)
    for dialect in (sqlite, postgresql)
}
_INSTANCES = Instance.__table__
_LOCK_ANY = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("target_id"))
    .values(status=_INSTANCES.c.status)
)
_LOCK_ACTIVE = _LOCK_ANY.where(_INSTANCES.c.status == "active")
_INSTANCE_STATUS = select(_INSTANCES.c.status).where(_INSTANCES.c.id == bindparam("target_id"))


class StatusEntries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert
        # built once; a row back means the index was free
        self._claim = (
            dialect.insert(StatusEntry).on_conflict_do_nothing().returning(StatusEntry.idx)
        )

    def ensure_lists(self, count: int) -> None:
        """Create the version rows of lists ``0 .. count-1`` (idempotent, replica-safe)."""
        with self._sessions.begin() as session:
            for list_id in range(count):
                session.execute(
                    self._insert(StatusListVersion)
                    .values(list_id=list_id, version=0)
                    .on_conflict_do_nothing()
                )

    def extent(self) -> tuple[int, int]:
        """The highest list id and the highest index any stored entry holds (-1, -1: none)."""
        with self._sessions() as session:
            row = session.execute(select(func.max(StatusEntry.list_id), func.max(StatusEntry.idx))).one()
            return (-1 if row[0] is None else int(row[0]), -1 if row[1] is None else int(row[1]))

    def allocate(
        self, instance_id: str, *, expires_at: datetime, lists: int, size: int
    ) -> tuple[int, int]:
        """Reserve a random free ``(list_id, idx)`` for a JWT of an active instance."""
        with self._sessions.begin() as session:
            return self.allocate_in(
                session, instance_id, expires_at=expires_at, lists=lists, size=size
            )

    def allocate_in(
        self,
        session: Session | Connection,
        instance_id: str,
        *,
        expires_at: datetime,
        lists: int,
        size: int,
        locked: bool = False,
        prefer: tuple[int, int] | None = None,
    ) -> tuple[int, int]:
        """:meth:`allocate` inside the caller's transaction (registration, renewal).

        ``locked``: the caller holds the instance's lock and saw it active in this
        transaction (the store's registration and renewal do), so the check is not
        repeated. ``prefer``: the index to try first (one a JWT was signed with already).
        """
        if not locked:
            lock_active_instance(session, instance_id)
        for attempt in range(ALLOCATION_TRIES):
            if attempt == 0 and prefer is not None:
                list_id, idx = prefer
            else:
                list_id, idx = secrets.randbelow(lists), secrets.randbelow(size)
            result = session.execute(
                self._claim,
                {
                    "list_id": list_id,
                    "idx": idx,
                    "instance_id": instance_id,
                    "status": 0,
                    "expires_at": expires_at,
                },
            )
            if result.first() is not None:
                return list_id, idx
        raise StatusListFull(f"no free index after {ALLOCATION_TRIES} tries")

    def statuses(self, list_id: int, *, alive_after: datetime | None = None) -> dict[int, int]:
        """The non-zero statuses of one list (every other index is 0, valid); with
        ``alive_after``, only those of JWTs whose exp is later."""
        query = select(StatusEntry.idx, StatusEntry.status).where(
            StatusEntry.list_id == list_id, StatusEntry.status != 0
        )
        if alive_after is not None:
            query = query.where(StatusEntry.expires_at > alive_after)
        with self._sessions() as session:
            rows = session.execute(query)
            return {int(r[0]): int(r[1]) for r in rows}

    def version(self, list_id: int) -> int:
        with self._sessions() as session:
            found = session.scalar(
                select(StatusListVersion.version).where(StatusListVersion.list_id == list_id)
            )
            return int(found or 0)

    def entries_for(self, instance_id: str) -> list[tuple[int, int, int]]:
        """``(list_id, idx, status)`` of every entry an instance holds."""
        with self._sessions() as session:
            rows = session.execute(
                select(StatusEntry.list_id, StatusEntry.idx, StatusEntry.status)
                .where(StatusEntry.instance_id == instance_id)
                .order_by(StatusEntry.list_id, StatusEntry.idx)
            )
            return [(int(r[0]), int(r[1]), int(r[2])) for r in rows]
