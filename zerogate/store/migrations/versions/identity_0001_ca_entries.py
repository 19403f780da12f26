"""identity: CA journal, bundle sequence, registration entries, deny list

Revision ID: identity_0001
"""

import sqlalchemy as sa
from alembic import op

from zerogate.store.tables.base import BigInt, Json, UtcDateTime

revision = "identity_0001"
down_revision = None
branch_labels = ("identity",)
depends_on = "kernel_0001"


def upgrade() -> None:
    op.create_table(
        "identity_ca_journal",
        sa.Column("key_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trust_domain", sa.String(255), nullable=False),
        sa.Column("certificate", sa.Text, nullable=True),
        sa.Column("upstream_chain", sa.Text, nullable=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("not_before", UtcDateTime, nullable=False),
        sa.Column("not_after", UtcDateTime, nullable=False),
        sa.Column("tainted", sa.Boolean, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("activated_at", UtcDateTime, nullable=True),
    )
    op.create_index(
        "ix_identity_ca_journal_td_kind", "identity_ca_journal", ["trust_domain", "kind"]
    )
    op.create_table(
        "identity_bundle_state",
        sa.Column("trust_domain", sa.String(255), primary_key=True),
        sa.Column("sequence", BigInt, nullable=False),
    )
    op.create_table(
        "identity_entry",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("spiffe_id", sa.String(2048), nullable=False),
        sa.Column("parent_id", sa.String(2048), nullable=True),
        sa.Column("selectors", Json, nullable=False),
        sa.Column("x509_svid_ttl", sa.Integer, nullable=True),
        sa.Column("jwt_svid_ttl", sa.Integer, nullable=True),
        sa.Column("dns_names", Json, nullable=False),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("hint", sa.String(1024), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("revision", BigInt, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_identity_entry_spiffe_id", "identity_entry", ["spiffe_id"])
    op.create_table(
        "identity_entry_selector",
        sa.Column(
            "entry_id",
            sa.String(36),
            sa.ForeignKey(
                "identity_entry.id",
                ondelete="CASCADE",
                name="fk_identity_entry_selector_entry_id_identity_entry",
            ),
            nullable=False,
        ),
        sa.Column("selector", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", "selector", name="pk_identity_entry_selector"),
    )
    op.create_index(
        "ix_identity_entry_selector_selector", "identity_entry_selector", ["selector"]
    )
    op.create_table(
        "identity_deny",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(2048), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=True),
        sa.PrimaryKeyConstraint("kind", "value", name="pk_identity_deny"),
    )


def downgrade() -> None:
    op.drop_table("identity_deny")
    op.drop_index("ix_identity_entry_selector_selector", "identity_entry_selector")
    op.drop_table("identity_entry_selector")
    op.drop_index("ix_identity_entry_spiffe_id", "identity_entry")
    op.drop_table("identity_entry")
    op.drop_table("identity_bundle_state")
    op.drop_index("ix_identity_ca_journal_td_kind", "identity_ca_journal")
    op.drop_table("identity_ca_journal")
