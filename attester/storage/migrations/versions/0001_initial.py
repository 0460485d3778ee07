"""Initial schema: redeemed challenges, instances, issued attestations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from attester.storage.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "redeemed_challenges",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_redeemed_challenges_expires_at", "redeemed_challenges", ["expires_at"])
    op.create_table(
        "instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("key_thumbprint", sa.String(64), nullable=False, unique=True),
        sa.Column("instance_jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.Column("renewed_at", UTCDateTime(), nullable=True),
        sa.Column("android_serials", sa.Text(), nullable=True),
        sa.Column("android_facts", sa.Text(), nullable=True),
        sa.Column("apple_key_id", sa.String(64), nullable=True, unique=True),
        sa.Column("apple_public_key", sa.LargeBinary(), nullable=True),
        sa.Column("apple_counter", sa.BigInteger(), nullable=True),
        sa.Column("apple_receipt", sa.LargeBinary(), nullable=True),
        sa.Column("apple_environment", sa.String(16), nullable=True),
    )
    op.create_index("ix_instances_client_id", "instances", ["client_id"])
    op.create_table(
        "issued_attestations",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column("instance_id", sa.String(36), sa.ForeignKey("instances.id"), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_issued_attestations_instance_id", "issued_attestations", ["instance_id"])
    op.create_index("ix_issued_attestations_expires_at", "issued_attestations", ["expires_at"])


def downgrade() -> None:
    op.drop_table("issued_attestations")
    op.drop_table("instances")
    op.drop_table("redeemed_challenges")
