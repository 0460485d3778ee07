"""The store: every piece of state another replica must see lives here.

Single-use challenges and App Attest counters rely on the database for atomicity
(a primary-key insert and a conditional UPDATE), so they hold across replicas.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from attester.storage.models import Instance, IssuedAttestation, RedeemedChallenge
from attester.storage.status_entries import InstanceNotActive, lock_instance


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
            apple_receipt=row.apple_receipt,
            apple_risk_metric=row.apple_risk_metric,
            apple_receipt_refreshed_at=row.apple_receipt_refreshed_at,
        )


#: signs a JWT inside a store transaction: (session, instance id) -> the row to record
IssueInTransaction = Callable[[Session, str], IssuedRow]


def _already_issued(issued: IssuedRow) -> IssueInTransaction:
    return lambda _session, _instance_id: issued


def _add_issued(session: Session, instance_id: str, issued: IssuedRow) -> None:
    session.add(
        IssuedAttestation(
            jti=issued.jti,
            instance_id=instance_id,
            kid=issued.kid,
            issued_at=issued.issued_at,
            expires_at=issued.expires_at,
        )
    )


def _redeem_in(session: Session, redemption: Redemption) -> None:
    """Mark a challenge used inside ``session``'s transaction (commits with its other writes)."""
    session.add(RedeemedChallenge(digest=redemption.digest, expires_at=redemption.expires_at))
    try:
        session.flush()
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


def create_store(url: str, *, migrate: bool = True) -> Store:
    """Open the database at ``url`` and bring its schema up to date."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    store = Store(engine)
    if migrate:
        store.migrate()
    return store


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

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
        self.engine.dispose()

    # -- challenges ------------------------------------------------------------------
    def redeem_challenge(self, digest: str, *, expires_at: datetime) -> bool:
        """Record a challenge as used. False when it was used before (on any replica)."""
        try:
            with self._sessions.begin() as session:
                session.add(RedeemedChallenge(digest=digest, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def challenge_redeemed(self, digest: str) -> bool:
        """Whether the challenge was redeemed already (a read: no commit, no fsync)."""
        with self._sessions() as session:
            return session.get(RedeemedChallenge, digest) is not None

    def purge_expired(self, now: datetime) -> int:
        """Drop redeemed challenges that can no longer verify anyway."""
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
        allocated there too); whatever it raises rolls everything back.
        """
        if issued is not None:
            issue = _already_issued(issued)
        with self._sessions.begin() as session:
            if redemption is not None:
                _redeem_in(session, redemption)
            # FOR UPDATE (PostgreSQL): a re-registration and a revocation of the same instance
            # are serialised, as allocation and revocation are (SQLite: the redemption above
            # already holds the write lock)
            row = session.scalar(
                select(Instance).where(Instance.key_thumbprint == key_thumbprint).with_for_update()
            )
            if row is not None and row.status != "active":
                # an operator's revocation is not undone by attesting the same key again
                raise InstanceRevoked(row.status)
            if row is not None and not (replace_same_key and row.platform == platform):
                raise AlreadyRegistered("instance key already registered")
            if row is None:
                row = Instance(id=str(uuid.uuid4()), key_thumbprint=key_thumbprint)
                session.add(row)
            row.platform = platform
            row.client_id = client_id
            row.instance_jwk = json.dumps(instance_jwk, sort_keys=True)
            row.status = "active"
            row.registered_at = now
            row.renewed_at = None
            row.android_serials = None if android_serials is None else json.dumps(android_serials)
            row.android_facts = None if android_facts is None else json.dumps(android_facts)
            row.apple_key_id = apple_key_id
            row.apple_public_key = apple_public_key
            row.apple_counter = apple_counter
            row.apple_receipt = apple_receipt
            row.apple_environment = apple_environment
            row.apple_risk_metric = apple_risk_metric
            row.apple_receipt_refreshed_at = apple_receipt_refreshed_at
            try:
                session.flush()
            except IntegrityError as exc:
                raise AlreadyRegistered("App Attest key id already registered") from exc
            if issue is not None:
                _add_issued(session, row.id, issue(session, row.id))
                session.flush()
            return InstanceRecord.of(row)

    def instance_by_thumbprint(self, key_thumbprint: str) -> InstanceRecord | None:
        with self._sessions() as session:
            row = session.scalar(select(Instance).where(Instance.key_thumbprint == key_thumbprint))
            return None if row is None else InstanceRecord.of(row)

    def advance_counter(self, instance_id: str, *, new_counter: int, now: datetime) -> bool:
        """Compare-and-set: store ``new_counter`` only if it exceeds the stored counter.

        Two replicas accepting the same assertion race on this UPDATE; exactly one wins.
        """
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
        challenge ``redemption``; whatever ``issue`` raises rolls everything back."""
        with self._sessions.begin() as session:
            if redemption is not None:
                _redeem_in(session, redemption)
            # under the instance's lock: a revocation or suspension that committed since the
            # caller's checks refuses the JWT (also for apps without a status list)
            if not lock_instance(session, instance_id, only_active=True):
                status = session.scalar(select(Instance.status).where(Instance.id == instance_id))
                raise InstanceNotActive(instance_id, status or "revoked")
            _add_issued(session, instance_id, issue(session, instance_id))

    def issued_for(self, instance_id: str) -> list[tuple[str, str, datetime]]:
        with self._sessions() as session:
            rows = session.execute(
                select(IssuedAttestation.jti, IssuedAttestation.kid, IssuedAttestation.expires_at)
                .where(IssuedAttestation.instance_id == instance_id)
                .order_by(IssuedAttestation.issued_at)
            )
            return [(r[0], r[1], r[2]) for r in rows]
