"""Runtime tables: Falco events, quarantines and small durable source state (file offsets)."""

from __future__ import annotations

from sqlalchemy import Column, Index, Integer, String, Table, Text, UniqueConstraint

from zerogate.store.tables.base import BigInt, Json, UtcDateTime, metadata

# One row per distinct Falco alert (event id = Falcosidekick uuid or content hash). A repeat of
# the same id within runtime.dedup_window_s bumps `duplicates`; a repeat after the window is a
# new occurrence (occurrence + 1).
runtime_event = Table(
    "runtime_event",
    metadata,
    Column("id", BigInt, primary_key=True, autoincrement=True),
    Column("event_id", String(80), nullable=False),
    Column("occurrence", Integer, nullable=False, default=0),
    Column("received_at", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("duplicates", Integer, nullable=False, default=0),
    Column("event_time", UtcDateTime, nullable=False),
    Column("rule", Text, nullable=False),
    Column("priority", String(16), nullable=False),
    Column("severity", Integer, nullable=False),  # runtime.falco.Priority value, 7 = Emergency
    Column("source", Text, nullable=True),
    Column("hostname", Text, nullable=True),
    Column("k8s_ns", Text, nullable=True),
    Column("k8s_pod", Text, nullable=True),
    Column("k8s_pod_uid", Text, nullable=True),
    Column("container_id", Text, nullable=True),
    Column("ingest", String(16), nullable=False),  # http | file | nats | replay | cli
    Column("raw", Text, nullable=False),  # its JSON text as received (array items: canonical)
    Column("spiffe_ids", Json, nullable=True),  # correlation result; NULL = not correlated yet
    Column("audit_seq", BigInt, nullable=True),  # seq of its runtime.event audit record
    UniqueConstraint("event_id", "occurrence", name="uq_runtime_event_id_occurrence"),
    Index("ix_runtime_event_received_at", "received_at"),
    Index("ix_runtime_event_workload", "k8s_ns", "k8s_pod"),
    Index("ix_runtime_event_audit_seq", "audit_seq"),
)

runtime_quarantine = Table(
    "runtime_quarantine",
    metadata,
    Column("id", BigInt, primary_key=True, autoincrement=True),
    Column("spiffe_id", String(2048), nullable=False),
    Column("reason", Text, nullable=False),
    Column("rule", Text, nullable=True),
    Column("event_id", String(80), nullable=True),
    Column("created_by", Text, nullable=False),  # policy | cli | api:<spiffe id>
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("released_at", UtcDateTime, nullable=True),
    Column("released_by", Text, nullable=True),
    Column("revision", BigInt, nullable=False),  # runtime_state['quarantine.revision'] at write
    Index("ix_runtime_quarantine_spiffe_id", "spiffe_id"),
    Index("ix_runtime_quarantine_revision", "revision"),
)

# Small durable key/value state: file tail offsets ("tail:<path>"), the quarantine revision.
runtime_state = Table(
    "runtime_state",
    metadata,
    Column("key", String(512), primary_key=True),
    Column("value", Json, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
