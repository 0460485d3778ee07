"""The store: every piece of state another replica must see lives here.

Single-use challenges and App Attest counters rely on the database for atomicity
(a primary-key insert and a conditional UPDATE), so they hold across replicas.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from types import SimpleNamespace
from typing import Any, TypeVar

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidatePoolError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.engine import URL
from sqlalchemy.pool import QueuePool, SingletonThreadPool

from attester import cooperative
from attester.storage import pg_connection
from attester.storage.driver_sql import driver_statement, execute_many
from attester.storage.group_commit import GroupCommit, Unbatch, pool_exhausted
from attester.storage.models import Instance, IssuedAttestation, RedeemedChallenge
from attester.storage.status_entries import claim_entries, lock_active_instance


class AlreadyRegistered(Exception):
    """An App Attest key id or instance key is registered already."""


class InstanceRevoked(Exception):
    """The instance key belongs to an instance an operator revoked or suspended."""

    def __init__(self, status: str) -> None:
        super().__init__(f"instance is {status}")
        self.status = status  # "revoked" or "suspended"


class ChallengeAlreadyRedeemed(Exception):
    """The challenge was redeemed (on some replica) before this transaction committed."""


@dataclass(frozen=True)
class Redemption:
    """A challenge to mark used: SHA-256 of its bytes, and when it could expire anyway."""

    digest: str
    expires_at: datetime


@dataclass(frozen=True)
class IssuedRow:
    """A signed Client Attestation JWT to record with the registration that produced it."""

    jti: str
    kid: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    platform: str
    client_id: str
    key_thumbprint: str
    instance_jwk: dict[str, Any]
    status: str
    registered_at: datetime
    android_serials: tuple[str, ...]
    android_facts: dict[str, Any]
    apple_key_id: str | None
    apple_public_key: bytes | None
    apple_counter: int | None
    apple_environment: str | None
    #: the trust anchor the attestation chained to (None: registered before migration 0006)
    apple_root: str | None = None
    # Apple fraud metric (issue 10): the stored receipt, its risk metric and fetch time
    apple_receipt: bytes | None = None
    apple_risk_metric: int | None = None
    apple_receipt_refreshed_at: datetime | None = None

    @classmethod
    def of(cls, row: Instance) -> InstanceRecord:
        return cls(
            id=row.id,
            platform=row.platform,
            client_id=row.client_id,
            key_thumbprint=row.key_thumbprint,
            instance_jwk=json.loads(row.instance_jwk),
            status=row.status,
            registered_at=row.registered_at,
            android_serials=tuple(json.loads(row.android_serials or "[]")),
            android_facts=json.loads(row.android_facts or "{}"),
            apple_key_id=row.apple_key_id,
            apple_public_key=row.apple_public_key,
            apple_counter=row.apple_counter,
            apple_environment=row.apple_environment,
            apple_root=row.apple_root,
            apple_receipt=row.apple_receipt,
            apple_risk_metric=row.apple_risk_metric,
            apple_receipt_refreshed_at=row.apple_receipt_refreshed_at,
        )


#: the JWT to record inside a store transaction: (connection, instance id) -> its row; called
#: with the instance's row locked and seen active in that transaction
IssueInTransaction = Callable[[Connection, str], IssuedRow]


@dataclass(frozen=True)
class Presigned:
    """An issuing step whose JWT was signed before the transaction, for status-list index
    ``candidate`` (None: the JWT has no status claim).

    Called (an :data:`IssueInTransaction`), it reserves the index in the transaction (or
    another, signing again when it was taken). Registrations written together
    (``_NewInstance.run_many``) instead reserve every candidate in one statement and
    ``accept`` the JWTs whose index was free; only the others are called.
    """

    issue: IssueInTransaction
    accept: Callable[[], IssuedRow]  # the JWT as signed is the one recorded and handed out
    candidate: tuple[int, int] | None = None
    status_expires_at: datetime | None = None  # of the status entry, when there is a candidate

    def __call__(self, connection: Connection, instance_id: str) -> IssuedRow:
        return self.issue(connection, instance_id)

T = TypeVar("T")
_INSTANCES = Instance.__table__
_ISSUED = IssuedAttestation.__table__
_REDEEMED = RedeemedChallenge.__table__

# the statements of the hot paths, built once (values come with each execution): building
# a statement per call cost more than running it
_INSERT_ISSUED = insert(_ISSUED)
_INSERT_REDEEMED = insert(_REDEEMED)
_UPDATE_INSTANCE = update(_INSTANCES).where(_INSTANCES.c.id == bindparam("target_id"))
_INSTANCE_BY_THUMBPRINT_FOR_UPDATE = (
    select(_INSTANCES.c.id, _INSTANCES.c.status, _INSTANCES.c.platform)
    .where(_INSTANCES.c.key_thumbprint == bindparam("thumbprint"))
    .with_for_update()
)
_INSTANCE_BY_THUMBPRINT = select(_INSTANCES).where(_INSTANCES.c.key_thumbprint == bindparam("thumbprint"))
# the same inserts for several rows at once, each as a pair (_Pipeline.insert_all): plain,
# run for each row by the driver's cursor (SQLite's; psycopg's, in its pipeline); with
# RETURNING for another driver, which SQLAlchemy writes as one multi-row INSERT (its
# "insertmanyvalues"), its returned rows counted
_INSERT_ISSUED_MANY = _INSERT_ISSUED, insert(_ISSUED).returning(_ISSUED.c.jti)
_INSERT_REDEEMED_MANY = _INSERT_REDEEMED, insert(_REDEEMED).returning(_REDEEMED.c.digest)
_INSERT_INSTANCES_MANY = insert(_INSTANCES), insert(_INSTANCES).returning(_INSTANCES.c.id)


def _already_issued(issued: IssuedRow) -> Presigned:
    return Presigned(lambda _connection, _instance_id: issued, lambda: issued)


def _add_issued(connection: Connection, instance_id: str, issued: IssuedRow) -> None:
    connection.execute(
        _INSERT_ISSUED,
        {
            "jti": issued.jti,
            "instance_id": instance_id,
            "kid": issued.kid,
            "issued_at": issued.issued_at,
            "expires_at": issued.expires_at,
        },
    )


def _redeem_in(connection: Connection, redemption: Redemption) -> None:
    """Mark a challenge used inside ``connection``'s transaction (commits with its other writes)."""
    try:
        connection.execute(
            _INSERT_REDEEMED, {"digest": redemption.digest, "expires_at": redemption.expires_at}
        )
    except IntegrityError as exc:
        raise ChallengeAlreadyRedeemed("challenge redeemed already") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the writer; FULL sync so nothing accepted is lost
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _in_memory_sqlite(url: URL) -> bool:
    """An in-memory SQLite database, as SQLAlchemy's pysqlite dialect tells one (its own
    choice of pool by the URL is deprecated: the pool class is named here instead)."""
    if url.get_backend_name() != "sqlite":
        return False
    return not url.database or url.database == ":memory:" or url.query.get("mode") == "memory"


def create_store(url: str, *, migrate: bool = True, pool_size: int = 16) -> Store:
    """Open the database at ``url`` and bring its schema up to date.

    ``pool_size`` connections at most, kept open: SQLAlchemy's default (5, and 10 more
    opened per use and closed after it) made a PostgreSQL connection's start and end part
    of every request beyond the fifth at once (HTTP registrations on 32 connections:
    307/s, against 437/s with 16 kept).
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if _in_memory_sqlite(parsed):  # (tests) the database lives in its connection: one per thread
        kwargs["poolclass"] = SingletonThreadPool
    else:
        kwargs.update(poolclass=QueuePool, pool_size=pool_size, max_overflow=0)
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    else:  # a server can drop idle connections (a local SQLite file cannot: no ping)
        _ping_when_idle(engine)
    if engine.dialect.driver == "psycopg":  # round trips that suspend a request (its module)
        event.listen(engine, "do_connect", pg_connection.connect)
    store = Store(engine)
    if migrate:
        store.migrate()
    return store


#: a pooled connection unused for longer than this is pinged before it is handed out
IDLE_PING_AFTER = 1.0  # seconds
_RETURNED = "attester_returned_at"


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection that sat idle in the pool.

    The pre-ping was a round trip to the server before every statement or transaction
    (a third of what a registration sent PostgreSQL: 564 pings among 1,599 statements for
    500 registrations). What it guards against, a connection the server or a network box
    dropped while it was idle, takes idle time; a connection back in the pool for less than
    :data:`IDLE_PING_AFTER` is handed out as it is: one the server ended meanwhile (a restart,
    a failover) fails its statement, the request is answered 503 ``storage_unavailable`` as in
    any outage, and the pool's older connections are invalidated with it, so the next requests
    connect afresh (RUNBOOK, "Errors operators see"). The ping is the dialect's own; a lost
    connection found by it invalidates the pool's older connections too, and the pool connects
    afresh, as the pre-ping did.
    """
    dialect = engine.dialect

    def returned(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_RETURNED)
        if since is None or time.monotonic() - since < IDLE_PING_AFTER:
            return  # new, or back in the pool a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise InvalidatePoolError("the idle connection was lost") from exc
            raise

    event.listen(engine, "checkin", returned)
    event.listen(engine, "checkout", checked_out)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # connections whose round trips suspend a request (pg_connection.py, create_store)
        self._cooperative = event.contains(engine, "do_connect", pg_connection.connect)
        #: the registrations', renewals' and burnt challenges' write transactions
        self.writes = GroupCommit(engine, cooperative_io=self._cooperative)
        # the replay read outside any transaction: PostgreSQL then needs no BEGIN before the
        # statement and no ROLLBACK when the connection goes back (two round trips fewer);
        # Python's SQLite driver begins nothing for a read anyway
        self._postgres = engine.dialect.name == "postgresql"
        placeholder = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self._redeemed_sql = (
            f"SELECT 1 FROM {_REDEEMED.name} WHERE digest = {placeholder}"  # noqa: S608 (constants)
        )
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert_instance = (
            dialect.insert(_INSTANCES).on_conflict_do_nothing().returning(_INSTANCES.c.id)
        )

    def migrate(self) -> None:
        """Apply Alembic migrations (idempotent; safe to run from several replicas)."""
        cfg = Config()
        cfg.set_main_option(
            "script_location", str(resources.files("attester.storage").joinpath("migrations"))
        )
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # serialise concurrent start-ups of several replicas
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7261626)")
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def dispose(self) -> None:
        self.writes.close()
        self.engine.dispose()

    # -- challenges ------------------------------------------------------------------
    def redeem_challenge(self, digest: str, *, expires_at: datetime) -> bool:
        """Record a challenge as used. False when it was used before (on any replica)."""
        try:
            self.writes.run(lambda connection: _redeem_in(connection, Redemption(digest, expires_at)))
        except ChallengeAlreadyRedeemed:
            return False
        return True

    def challenge_redeemed(self, digest: str) -> bool:
        """Whether the challenge was redeemed already (a read: no commit, no fsync)."""
        return self._outside(self._challenge_redeemed, digest)

    def _challenge_redeemed(self, digest: str) -> bool:
        """One indexed row, read through the driver's own cursor: through SQLAlchemy's Core
        this read was ~130 us of a registration's CPU on SQLite (38 us so), every one.

        Outside a transaction on PostgreSQL as the other reads (autocommit while it runs:
        no BEGIN before it, no ROLLBACK after). A driver error is raised as SQLAlchemy's
        (the storage-outage handling reads those) and a lost connection is invalidated
        in the pool, as SQLAlchemy does for its own statements.
        """
        dialect = self.engine.dialect
        raw = None
        try:
            raw = self.engine.raw_connection()  # (a failed connect is the driver's error too)
            driver = raw.driver_connection
            if self._postgres:
                driver.autocommit = True  # type: ignore[union-attr]
            try:
                cursor = raw.cursor()
                try:
                    cursor.execute(self._redeemed_sql, (digest,))
                    return cursor.fetchone() is not None
                finally:
                    cursor.close()
            finally:
                if self._postgres:
                    driver.autocommit = False  # type: ignore[union-attr]
        except dialect.loaded_dbapi.Error as exc:
            lost = raw is not None and dialect.is_disconnect(exc, raw.dbapi_connection, None)
            if lost:
                # SQLAlchemy's own step for its statements: this connection, and those the
                # pool opened before it (the server restarted, most likely), are replaced
                self.engine.pool._invalidate(raw, exc)  # type: ignore[arg-type]
            raise DBAPIError.instance(
                self._redeemed_sql,
                (digest,),
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=dialect,
            ) from exc
        finally:
            if raw is not None:
                raw.close()

    def _outside(self, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """``fn(*args)``, database work of a request outside the group commit. When the
        request runs on the event loop (cooperative.py) and a pooled connection is free
        (else the checkout would wait on the loop): on PostgreSQL, inline with its round
        trips suspending the request (pg_connection.py); on SQLite a read inline (a local
        file: fast). Otherwise in a thread: a write on SQLite (the file's one write lock,
        held by another process perhaps), a full pool."""
        if pool_exhausted(self.engine):
            return cooperative.blocking(fn, *args)
        if self._cooperative:
            with cooperative.database_io():
                return fn(*args)
        if write or self.engine.dialect.name != "sqlite":
            return cooperative.blocking(fn, *args)
        return fn(*args)

    def purge_expired(self, now: datetime) -> int:
        """Drop redeemed challenges that can no longer verify anyway."""
        return self._outside(self._purge_expired, now, write=True)

    def _purge_expired(self, now: datetime) -> int:
        with self._sessions.begin() as session:
            result = session.execute(
                delete(RedeemedChallenge).where(RedeemedChallenge.expires_at < now)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    # -- instances -------------------------------------------------------------------
    def register_instance(
        self,
        *,
        platform: str,
        client_id: str,
        key_thumbprint: str,
        instance_jwk: dict[str, Any],
        now: datetime,
        android_serials: tuple[str, ...] | None = None,
        android_facts: dict[str, Any] | None = None,
        apple_key_id: str | None = None,
        apple_public_key: bytes | None = None,
        apple_counter: int | None = None,
        apple_receipt: bytes | None = None,
        apple_environment: str | None = None,
        apple_root: str | None = None,
        apple_risk_metric: int | None = None,
        apple_receipt_refreshed_at: datetime | None = None,
        replace_same_key: bool = False,
        redemption: Redemption | None = None,
        issued: IssuedRow | None = None,
        issue: IssueInTransaction | None = None,
    ) -> InstanceRecord:
        """Store a newly attested instance.

        ``replace_same_key`` lets an Android instance re-attest the key it registered
        before (its registration time and chain are refreshed). Otherwise a key
        thumbprint or App Attest key id seen before raises :class:`AlreadyRegistered`.

        ``redemption`` and ``issued`` are written in the same transaction (one commit,
        one fsync, instead of three): the challenge is marked used, and the JWT recorded,
        exactly when the instance is; :class:`ChallengeAlreadyRedeemed` if another
        request redeemed the challenge first. ``issue`` instead of ``issued`` signs the JWT
        inside the transaction, once the instance id exists (its status-list index is
        allocated there too); whatever it raises rolls everything back. The transaction
        may be shared with concurrent requests' (group commit, see group_commit.py): this
        returns once it committed.
        """
        if issued is not None:
            issue = _already_issued(issued)
        values: dict[str, Any] = {
            "platform": platform,
            "client_id": client_id,
            "key_thumbprint": key_thumbprint,
            "instance_jwk": json.dumps(instance_jwk, sort_keys=True),
            "status": "active",
            "registered_at": now,
            "renewed_at": None,
            "android_serials": None if android_serials is None else json.dumps(android_serials),
            "android_facts": None if android_facts is None else json.dumps(android_facts),
            "apple_key_id": apple_key_id,
            "apple_public_key": apple_public_key,
            "apple_counter": apple_counter,
            "apple_receipt": apple_receipt,
            "apple_environment": apple_environment,
            "apple_root": apple_root,
            "apple_risk_metric": apple_risk_metric,
            "apple_receipt_refreshed_at": apple_receipt_refreshed_at,
        }
        return self.writes.run(_NewInstance(self, values, replace_same_key, redemption, issue))

    @staticmethod
    def _reregister(
        connection: Connection,
        key_thumbprint: str,
        platform: str,
        values: dict[str, Any],
        replace_same_key: bool,
    ) -> str:
        """The key is registered already: refresh it (Android's re-attestation) or refuse."""
        # FOR UPDATE (PostgreSQL): a re-registration and a revocation of the same instance are
        # serialised, as allocation and revocation are (SQLite: the redemption before this
        # already holds the write lock)
        row = connection.execute(
            _INSTANCE_BY_THUMBPRINT_FOR_UPDATE, {"thumbprint": key_thumbprint}
        ).first()
        if row is None:
            raise AlreadyRegistered("App Attest key id already registered")
        if row.status != "active":
            # an operator's revocation is not undone by attesting the same key again
            raise InstanceRevoked(row.status)
        if not (replace_same_key and row.platform == platform):
            raise AlreadyRegistered("instance key already registered")
        try:
            connection.execute(_UPDATE_INSTANCE, {"target_id": row.id, **values})
        except IntegrityError as exc:  # the new App Attest key id is another instance's
            raise AlreadyRegistered("App Attest key id already registered") from exc
        return str(row.id)

    def instance_by_thumbprint(self, key_thumbprint: str) -> InstanceRecord | None:
        return self._outside(self._instance_by_thumbprint, key_thumbprint)

    def _instance_by_thumbprint(self, key_thumbprint: str) -> InstanceRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(_INSTANCE_BY_THUMBPRINT, {"thumbprint": key_thumbprint}).first()
            return None if row is None else InstanceRecord.of(row)

    def advance_counter(self, instance_id: str, *, new_counter: int, now: datetime) -> bool:
        """Compare-and-set: store ``new_counter`` only if it exceeds the stored counter.

        Two replicas accepting the same assertion race on this UPDATE; exactly one wins.
        """
        return self._outside(self._advance_counter, instance_id, new_counter, now, write=True)

    def _advance_counter(self, instance_id: str, new_counter: int, now: datetime) -> bool:
        with self._sessions.begin() as session:
            result = session.execute(
                update(Instance)
                .where(Instance.id == instance_id, Instance.apple_counter < new_counter)
                .values(apple_counter=new_counter, renewed_at=now)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def store_receipt(
        self, instance_id: str, *, receipt: bytes, risk_metric: int | None, now: datetime
    ) -> None:
        """Keep the receipt Apple just returned and its risk metric (Apple fraud metric)."""
        self._outside(self._store_receipt, instance_id, receipt, risk_metric, now, write=True)

    def _store_receipt(
        self, instance_id: str, receipt: bytes, risk_metric: int | None, now: datetime
    ) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(apple_receipt=receipt, apple_risk_metric=risk_metric, apple_receipt_refreshed_at=now)
            )

    # -- issued attestations ---------------------------------------------------------
    def record_issued(
        self,
        *,
        jti: str,
        instance_id: str,
        kid: str,
        issued_at: datetime,
        expires_at: datetime,
        redemption: Redemption | None = None,
    ) -> None:
        """Record a signed JWT; with ``redemption``, mark its challenge used in the same commit.

        Raises :class:`ChallengeAlreadyRedeemed` (and records nothing) when it was used.
        """
        self.issue_for(
            instance_id,
            _already_issued(IssuedRow(jti, kid, issued_at, expires_at)),
            redemption=redemption,
        )

    def issue_for(
        self, instance_id: str, issue: IssueInTransaction, *, redemption: Redemption | None = None
    ) -> None:
        """Sign (``issue``) and record a JWT of an instance in one transaction, with the
        challenge ``redemption``; whatever ``issue`` raises rolls everything back (group
        commit, as :meth:`register_instance`)."""

        def work(connection: Connection) -> None:
            if redemption is not None:
                _redeem_in(connection, redemption)
            # under the instance's lock: a revocation or suspension that committed since the
            # caller's checks refuses the JWT (also for apps without a status list)
            lock_active_instance(connection, instance_id)
            _add_issued(connection, instance_id, issue(connection, instance_id))

        self.writes.run(work)

    def issued_for(self, instance_id: str) -> list[tuple[str, str, datetime]]:
        with self._sessions() as session:
            rows = session.execute(
                select(IssuedAttestation.jti, IssuedAttestation.kid, IssuedAttestation.expires_at)
                .where(IssuedAttestation.instance_id == instance_id)
                .order_by(IssuedAttestation.issued_at)
            )
            return [(r[0], r[1], r[2]) for r in rows]


@dataclass
class _NewInstance:
    """A registration's writes, a unit of the group commit: the challenge redemption, the
    instance row and the issued JWT (with its status-list entry)."""

    store: Store
    values: dict[str, Any]  # the instance row but its id
    replace_same_key: bool
    redemption: Redemption | None
    issue: IssueInTransaction | None

    def __call__(self, connection: Connection) -> InstanceRecord:
        """Alone: every case (a replayed challenge, a key registered before, a taken index)."""
        if self.redemption is not None:
            _redeem_in(connection, self.redemption)
        # a new key (the usual case) is one statement; a unique key taken (this key, or an
        # App Attest key id) inserts nothing
        instance_id = str(uuid.uuid4())
        if connection.scalar(self.store._insert_instance, {"id": instance_id, **self.values}) is None:
            instance_id = self.store._reregister(
                connection,
                self.values["key_thumbprint"],
                self.values["platform"],
                self.values,
                self.replace_same_key,
            )
        if self.issue is not None:
            _add_issued(connection, instance_id, self.issue(connection, instance_id))
        return InstanceRecord.of(SimpleNamespace(id=instance_id, **self.values))

    @staticmethod
    def run_many(connection: Connection, writes: list[_NewInstance]) -> list[InstanceRecord]:
        """Registrations (one or several) with new keys and unused challenges, one
        statement per table: the redemptions, the instance rows, the status entries (those
        whose index was taken meanwhile, or twice here, are reserved again one by one), the
        JWTs.

        A duplicate key (a challenge used, a key or App Attest key id registered) raises
        the database's IntegrityError: the group commit then runs each write alone."""
        if any(not isinstance(write.issue, Presigned) for write in writes):
            raise Unbatch("an issuing step that was not signed before the transaction")
        issues: list[Presigned] = [write.issue for write in writes]  # type: ignore[misc]
        with _Pipeline(connection) as pipeline:
            redemptions = [
                {"digest": write.redemption.digest, "expires_at": write.redemption.expires_at}
                for write in writes
                if write.redemption is not None
            ]
            if redemptions:
                pipeline.insert_all(_INSERT_REDEEMED_MANY, redemptions)
            ids = [str(uuid.uuid4()) for _ in writes]
            pipeline.insert_all(
                _INSERT_INSTANCES_MANY, [{"id": i, **w.values} for i, w in zip(ids, writes)]
            )
            wanted = {
                n: issue.candidate for n, issue in enumerate(issues) if issue.candidate is not None
            }
            first = {candidate: n for n, candidate in reversed(wanted.items())}  # one row per index
            claimed = pipeline.claim(
                [
                    (*candidate, ids[n], issues[n].status_expires_at)
                    for candidate, n in first.items()
                ]
            )
            again = {
                n for n in wanted if first[wanted[n]] != n or wanted[n] not in claimed
            }  # their index was taken: another, and a new signature (the issuer's statements)
            if again:
                pipeline.leave()
            rows = [
                issue(connection, ids[n]) if n in again else issue.accept()
                for n, issue in enumerate(issues)
            ]
            pipeline.insert_all(
                _INSERT_ISSUED_MANY,
                [
                    {"jti": row.jti, "instance_id": instance_id, "kid": row.kid,
                     "issued_at": row.issued_at, "expires_at": row.expires_at}
                    for row, instance_id in zip(rows, ids)
                ],
            )
        return [
            InstanceRecord.of(SimpleNamespace(id=instance_id, **write.values))
            for instance_id, write in zip(ids, writes)
        ]


def _not_the_same_abort(record: logging.LogRecord) -> bool:
    """Drop psycopg's warning that ending a pipeline found it aborted while the error that
    aborted it propagates anyway (a duplicate in a batch, which then runs unit by unit:
    a replayed challenge, a key registered before): the same failure, told twice."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not (
        str(record.msg).startswith("error ignored terminating")
        and any(isinstance(arg, psycopg.errors.PipelineAborted) for arg in args)
    )


logging.getLogger("psycopg").addFilter(_not_the_same_abort)


class _Pipeline:
    """A batch's statements, on PostgreSQL in one psycopg pipeline: sent without waiting for
    each one's answer, they cost one round trip where a result is first read (the status
    entries claimed) and one at the end, instead of one each (BEGIN and three or four
    INSERTs: six round trips with the COMMIT, now three).

    The INSERTs and the claim run through the driver's cursor (driver_sql.py: SQLAlchemy's
    SQL and conversions, without its Core around each statement), with psycopg in its
    pipeline and with SQLite's driver; in a pipeline nothing may read a result before
    psycopg fetched it, so :meth:`leave` ends the pipeline before SQLAlchemy runs anything
    else. With another driver (psycopg without pipelines, say) the statements are
    SQLAlchemy's. A driver error is raised as SQLAlchemy's, as the statement would have
    raised it."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        driver = connection.connection.driver_connection
        # psycopg's connections pipeline with a libpq of 14 or later (not psycopg2's, pg8000's)
        self._pipelines = connection.dialect.driver == "psycopg" and psycopg.Pipeline.is_supported()
        direct = self._pipelines or connection.dialect.driver == "pysqlite"
        self.driver: Any = driver if direct else None  # its cursor runs the statements
        self._context: Any = None

    def __enter__(self) -> _Pipeline:
        if self._pipelines:
            self._context = self.driver.pipeline()
            self._guarded(self._context.__enter__)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._context is None:
            return
        context, self._context, self.driver, self._pipelines = self._context, None, None, False
        try:
            self._guarded(context.__exit__, *exc_info)
        finally:
            if exc_info[1] is not None and not isinstance(exc_info[1], Exception):
                # interrupted in a wait (the loop shutting down): the pipeline's state is
                # unknown, so the connection is not given back to the pool
                self.connection.invalidate()

    def leave(self) -> None:
        """Sync and end the pipeline: what follows runs statement by statement."""
        self.__exit__(None, None, None)

    def insert_all(self, statements: tuple[Any, Any], rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``; every row must land. Through the driver, the plain INSERT of
        ``statements`` for each row (a duplicate raises; in the pipeline, where it is next
        read); else the other, one multi-row statement whose returned rows are counted."""
        plain, returning = statements
        if self.driver is not None:
            statement = driver_statement(plain, self.connection.dialect, rows[0])
            self._guarded(execute_many, self.driver, statement, rows)
        elif len(self.connection.execute(returning, rows).all()) != len(rows):
            raise Unbatch("a row was not inserted")

    def claim(self, rows: list[tuple[int, int, str, datetime | None]]) -> set[tuple[int, int]]:
        """:func:`claim_entries`, through the driver's cursor where the INSERTs are."""
        if self.driver is None:
            return claim_entries(self.connection, rows)
        return self._guarded(claim_entries, self.connection, rows, driver=self.driver)

    def _guarded(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # (a lost connection is not invalidated here: the transaction's rollback that
        # follows fails on it, and SQLAlchemy then invalidates it and the pool's older ones)
        dialect = self.connection.dialect
        try:
            return step(*args, **kwargs)
        except dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                None, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
