"""Apple: the trust anchor an instance's attestation chained to, so a renewal can check
that the service still trusts it (as Android's stored facts let it).

Instances registered before this revision have none; a renewal takes theirs to be
Apple's pinned App Attest root, always trusted (README, "What it serves", the renewal row).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("apple_root", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("apple_root")
