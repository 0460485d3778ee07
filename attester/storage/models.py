"""The one schema shared by SQLite and PostgreSQL (migrations mirror it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        stored: datetime = value.astimezone(UTC)
        return stored.replace(tzinfo=None) if dialect.name == "sqlite" else stored

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        result: datetime = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return result


class Base(DeclarativeBase):
    pass


class RedeemedChallenge(Base):
    """A challenge that has been used; the primary key makes redemption single-use."""

    __tablename__ = "redeemed_challenges"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Instance(Base):
    """A registered app instance (one instance key)."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    platform: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str] = mapped_column(String(255), index=True)
    key_thumbprint: Mapped[str] = mapped_column(String(64), unique=True)
    instance_jwk: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Android: serial numbers (lowercase hex) of the attestation chain, JSON list
    android_serials: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Android: facts needed to re-check policy on renewal (JSON)
    android_facts: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Apple App Attest
    apple_key_id: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    apple_public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    apple_counter: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    apple_receipt: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    apple_environment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Apple (migration 0006): the trust anchor's name; None for instances registered before
    apple_root: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Apple fraud metric (migration 0003): risk metric of the latest exchanged receipt
    apple_risk_metric: Mapped[int | None] = mapped_column(Integer, nullable=True)
    apple_receipt_refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class IssuedAttestation(Base):
    """Every Client Attestation JWT we signed (for audit and future revocation)."""

    __tablename__ = "issued_attestations"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    kid: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class StatusEntry(Base):
    """One allocated index of a Token Status List, and its status (0 valid, 1 invalid, 2 suspended).

    The composite primary key makes an index unique across replicas; the row is kept until
    the JWT that carries the index has expired (plus margins), so the index is not reused
    while that JWT can be alive.
    """

    __tablename__ = "status_entries"

    list_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    status: Mapped[int] = mapped_column(SmallInteger, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class StatusListVersion(Base):
    """A counter per list, bumped with every status change so that other replicas notice."""

    __tablename__ = "status_list_versions"

    list_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class AuditRecord(Base):
    """Who did what to which target, when, with the state before and after (JSON)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    before: Mapped[str | None] = mapped_column(Text, nullable=True)
    after: Mapped[str | None] = mapped_column(Text, nullable=True)


class RateLimitCounter(Base):
    """A fixed-window rate-limit counter shared by every replica (``rate_limits.storage``)."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    # end of the window, seconds since the epoch (the limits library's unit)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
