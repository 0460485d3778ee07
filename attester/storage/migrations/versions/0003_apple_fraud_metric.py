"""Apple fraud metric: the risk metric of the latest exchanged receipt and when it was fetched.

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from attester.storage.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("apple_risk_metric", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("apple_receipt_refreshed_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("apple_receipt_refreshed_at")
        batch.drop_column("apple_risk_metric")
