"""identity_attestation: one-time join tokens

Revision ID: identity_attestation_0001
"""

import sqlalchemy as sa
from alembic import op

from zerogate.store.tables.base import UtcDateTime

revision = "identity_attestation_0001"
down_revision = None
branch_labels = ("identity_attestation",)
depends_on = "kernel_0001"


def upgrade() -> None:
    op.create_table(
        "identity_join_token",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.String(16), nullable=False),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime, nullable=True),
        sa.UniqueConstraint("token_id", name="uq_identity_join_token_token_id"),
    )
    op.create_index(
        "ix_identity_join_token_expires_at", "identity_join_token", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_identity_join_token_expires_at", "identity_join_token")
    op.drop_table("identity_join_token")
