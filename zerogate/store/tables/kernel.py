"""Kernel tables: the hash-chained audit log and its signed checkpoints."""

from __future__ import annotations

from sqlalchemy import Column, LargeBinary, String, Table, Text

from zerogate.store.tables.base import BigInt, UtcDateTime, metadata

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("kind", String(128), nullable=False, index=True),
    # canonical JSON text (RFC 8785), exactly the bytes that were hashed
    Column("payload", Text, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)

audit_checkpoint = Table(
    "audit_checkpoint",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("ts", UtcDateTime, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
