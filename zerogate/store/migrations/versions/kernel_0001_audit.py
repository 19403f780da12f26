"""kernel: audit_log and audit_checkpoint

Revision ID: kernel_0001
"""

import sqlalchemy as sa
from alembic import op

from zerogate.store.tables.base import BigInt, UtcDateTime

revision = "kernel_0001"
down_revision = None
branch_labels = ("kernel",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", BigInt, primary_key=True, autoincrement=False),
        sa.Column("ts", UtcDateTime, nullable=False),
        sa.Column("kind", sa.String(128), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_index("ix_audit_log_kind", "audit_log", ["kind"])
    op.create_table(
        "audit_checkpoint",
        sa.Column("seq", BigInt, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("ts", UtcDateTime, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoint")
    op.drop_index("ix_audit_log_kind", "audit_log")
    op.drop_table("audit_log")
