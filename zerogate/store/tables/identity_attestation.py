"""Identity attestation tables: one-time join tokens (identity/attestation.py).

Only a SHA-256 digest of each token is stored, so a copy of the database cannot be used to
attest; ``used_at`` is set by the single UPDATE that redeems a token, which makes a token
usable once even when two servers share the database.
"""

from __future__ import annotations

from sqlalchemy import Column, String, Table

from zerogate.store.tables.base import UtcDateTime, metadata

identity_join_token = Table(
    "identity_join_token",
    metadata,
    # hex SHA-256 of the token text
    Column("token_hash", String(64), primary_key=True),
    # short public handle (first 16 hex digits of the hash): in logs, audit and selectors
    Column("token_id", String(16), nullable=False, unique=True),
    Column("spiffe_id", String(2048), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False, index=True),
    Column("used_at", UtcDateTime, nullable=True),
)
