"""The store: every piece of state another replica must see lives here.

Single-use challenges and App Attest counters rely on the database for atomicity
(a primary-key insert and a conditional UPDATE), so they hold across replicas.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from attester.storage.models import Instance, IssuedAttestation, RedeemedChallenge


class AlreadyRegistered(Exception):
    """An App Attest key id or instance key is registered already."""


class InstanceRevoked(Exception):
    """The instance key belongs to an instance an operator revoked or suspended."""

    def __init__(self, status: str) -> None:
        super().__init__(f"instance is {status}")
        self.status = status  # "revoked" or "suspended"


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
        )


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
        replace_same_key: bool = False,
    ) -> InstanceRecord:
        """Store a newly attested instance.

        ``replace_same_key`` lets an Android instance re-attest the key it registered
        before (its registration time and chain are refreshed). Otherwise a key
        thumbprint or App Attest key id seen before raises :class:`AlreadyRegistered`.
        """
        with self._sessions.begin() as session:
            row = session.scalar(select(Instance).where(Instance.key_thumbprint == key_thumbprint))
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
            try:
                session.flush()
            except IntegrityError as exc:
                raise AlreadyRegistered("App Attest key id already registered") from exc
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

    # -- issued attestations ---------------------------------------------------------
    def record_issued(
        self, *, jti: str, instance_id: str, kid: str, issued_at: datetime, expires_at: datetime
    ) -> None:
        with self._sessions.begin() as session:
            session.add(
                IssuedAttestation(
                    jti=jti,
                    instance_id=instance_id,
                    kid=kid,
                    issued_at=issued_at,
                    expires_at=expires_at,
                )
            )

    def issued_for(self, instance_id: str) -> list[tuple[str, str, datetime]]:
        with self._sessions() as session:
            rows = session.execute(
                select(IssuedAttestation.jti, IssuedAttestation.kid, IssuedAttestation.expires_at)
                .where(IssuedAttestation.instance_id == instance_id)
                .order_by(IssuedAttestation.issued_at)
            )
            return [(r[0], r[1], r[2]) for r in rows]
