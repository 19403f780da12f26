"""runtime: runtime_event, runtime_quarantine, runtime_state

Revision ID: runtime_0001
"""

import sqlalchemy as sa
from alembic import op

from zerogate.store.tables.base import BigInt, Json, UtcDateTime

revision = "runtime_0001"
down_revision = None
branch_labels = ("runtime",)
depends_on = "kernel_0001"


def upgrade() -> None:
    op.create_table(
        "runtime_event",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(80), nullable=False),
        sa.Column("occurrence", sa.Integer, nullable=False),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.Column("last_seen", UtcDateTime, nullable=False),
        sa.Column("duplicates", sa.Integer, nullable=False),
        sa.Column("event_time", UtcDateTime, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("severity", sa.Integer, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("k8s_ns", sa.Text, nullable=True),
        sa.Column("k8s_pod", sa.Text, nullable=True),
        sa.Column("k8s_pod_uid", sa.Text, nullable=True),
        sa.Column("container_id", sa.Text, nullable=True),
        sa.Column("ingest", sa.String(16), nullable=False),
        sa.Column("raw", sa.Text, nullable=False),
        sa.Column("spiffe_ids", Json, nullable=True),
        sa.Column("audit_seq", BigInt, nullable=True),
        sa.UniqueConstraint("event_id", "occurrence", name="uq_runtime_event_id_occurrence"),
    )
    op.create_index("ix_runtime_event_received_at", "runtime_event", ["received_at"])
    op.create_index("ix_runtime_event_workload", "runtime_event", ["k8s_ns", "k8s_pod"])
    op.create_index("ix_runtime_event_audit_seq", "runtime_event", ["audit_seq"])
    op.create_table(
        "runtime_quarantine",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("event_id", sa.String(80), nullable=True),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("released_at", UtcDateTime, nullable=True),
        sa.Column("released_by", sa.Text, nullable=True),
        sa.Column("revision", BigInt, nullable=False),
    )
    op.create_index("ix_runtime_quarantine_spiffe_id", "runtime_quarantine", ["spiffe_id"])
    op.create_index("ix_runtime_quarantine_revision", "runtime_quarantine", ["revision"])
    op.create_table(
        "runtime_state",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("value", Json, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("runtime_state")
    op.drop_index("ix_runtime_quarantine_revision", "runtime_quarantine")
    op.drop_index("ix_runtime_quarantine_spiffe_id", "runtime_quarantine")
    op.drop_table("runtime_quarantine")
    op.drop_index("ix_runtime_event_audit_seq", "runtime_event")
    op.drop_index("ix_runtime_event_workload", "runtime_event")
    op.drop_index("ix_runtime_event_received_at", "runtime_event")
    op.drop_table("runtime_event")
