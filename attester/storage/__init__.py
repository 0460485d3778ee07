"""Storage through SQLAlchemy 2: SQLite by default, PostgreSQL by URL, Alembic migrations."""

from attester.storage.store import (
    AlreadyRegistered,
    InstanceRecord,
    InstanceRevoked,
    Store,
    create_store,
)

__all__ = ["AlreadyRegistered", "InstanceRecord", "InstanceRevoked", "Store", "create_store"]
