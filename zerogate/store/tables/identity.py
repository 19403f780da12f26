"""Identity tables: the CA journal, bundle sequence, registration entries and the deny list."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from zerogate.store.tables.base import BigInt, Json, UtcDateTime, metadata

# One row per signing authority (X.509 CA or JWT key), as SPIRE's manager/journal.go: which
# key sits in which state (prepared -> active -> old), so a restart resumes the same CA.
identity_ca_journal = Table(
    "identity_ca_journal",
    metadata,
    Column("key_id", String(128), primary_key=True),
    Column("kind", String(8), nullable=False),  # x509 | jwt
    Column("status", String(16), nullable=False),  # prepared | active | old
    Column("trust_domain", String(255), nullable=False),
    Column("certificate", Text, nullable=True),  # PEM (x509)
    Column("upstream_chain", Text, nullable=True),  # PEM, intermediates above ours (x509)
    Column("public_key", Text, nullable=False),  # SubjectPublicKeyInfo PEM
    Column("not_before", UtcDateTime, nullable=False),
    Column("not_after", UtcDateTime, nullable=False),
    Column("tainted", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("activated_at", UtcDateTime, nullable=True),
    Index("ix_identity_ca_journal_td_kind", "trust_domain", "kind"),
)

identity_bundle_state = Table(
    "identity_bundle_state",
    metadata,
    Column("trust_domain", String(255), primary_key=True),
    Column("sequence", BigInt, nullable=False),
)

identity_entry = Table(
    "identity_entry",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("spiffe_id", String(2048), nullable=False, index=True),
    Column("parent_id", String(2048), nullable=True),
    Column("selectors", Json, nullable=False),  # sorted list of "type:value"
    Column("x509_svid_ttl", Integer, nullable=True),
    Column("jwt_svid_ttl", Integer, nullable=True),
    Column("dns_names", Json, nullable=False),
    Column("admin", Boolean, nullable=False, default=False),
    Column("hint", String(1024), nullable=False, default=""),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("revision", BigInt, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

identity_entry_selector = Table(
    "identity_entry_selector",
    metadata,
    Column(
        "entry_id",
        String(36),
        ForeignKey("identity_entry.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("selector", String(512), nullable=False, index=True),
    PrimaryKeyConstraint("entry_id", "selector"),
)

# Revoked identities every enforcement point checks: a SPIFFE ID, an X.509-SVID serial
# (hex) or the SHA-256 hex of a JWT-SVID's jti.
identity_deny = Table(
    "identity_deny",
    metadata,
    Column("kind", String(16), nullable=False),  # spiffe_id | x509_serial | jti_hash
    Column("value", String(2048), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),
    PrimaryKeyConstraint("kind", "value"),
)
