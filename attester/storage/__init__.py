"""Storage through SQLAlchemy 2: SQLite by default, PostgreSQL by URL, Alembic migrations."""

from attester.storage.store import (
    AlreadyRegistered,
    ChallengeAlreadyRedeemed,
    InstanceRecord,
    InstanceRevoked,
    IssuedRow,
    Redemption,
    Store,
    create_store,
)

__all__ = [
    "AlreadyRegistered",
    "ChallengeAlreadyRedeemed",
    "InstanceRecord",
    "InstanceRevoked",
    "IssuedRow",
    "Redemption",
    "Store",
    "create_store",
]
