"""Admission tables: Gatekeeper objects applied with ``zerogate admission apply|sync``."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text, UniqueConstraint

from zerogate.store.tables.base import BigInt, Json, UtcDateTime, metadata

# One row per applied object. section: template | constraint | inventory. key: the template
# name, "<Kind>/<name>" for a constraint, "<apiVersion>/<Kind>/<namespace>/<name>" for an
# inventory object. Re-applying the same key replaces the row (kubectl apply semantics).
admission_object = Table(
    "admission_object",
    metadata,
    Column("id", BigInt, primary_key=True, autoincrement=True),
    Column("section", String(16), nullable=False),
    Column("key", String(512), nullable=False),
    Column("body", Json, nullable=False),
    Column("source", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    UniqueConstraint("section", "key", name="uq_admission_object_section_key"),
    Index("ix_admission_object_section", "section"),
)
