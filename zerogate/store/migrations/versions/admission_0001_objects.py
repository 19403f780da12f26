"""admission: admission_object

Revision ID: admission_0001
"""

import sqlalchemy as sa
from alembic import op

from zerogate.store.tables.base import BigInt, Json, UtcDateTime

revision = "admission_0001"
down_revision = None
branch_labels = ("admission",)
depends_on = "kernel_0001"


def upgrade() -> None:
    op.create_table(
        "admission_object",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("section", sa.String(16), nullable=False),
        sa.Column("key", sa.String(512), nullable=False),
        sa.Column("body", Json, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("section", "key", name="uq_admission_object_section_key"),
    )
    op.create_index("ix_admission_object_section", "admission_object", ["section"])


def downgrade() -> None:
    op.drop_index("ix_admission_object_section", "admission_object")
    op.drop_table("admission_object")
