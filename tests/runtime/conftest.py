"""Runtime test fixtures: corpus loading, a real audit log on the ``database`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.events import EventStore
from runtime.ingest import EventIngestor
from zerogate.audit import AuditLog
from zerogate.store import Database


@pytest.fixture
def runtime_audit(database: Database, tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog.open(database, signing_key=tmp_path / "audit.pem")
    try:
        yield audit
    finally:
        audit.close()


@pytest.fixture
def event_store(database: Database) -> EventStore:
    return EventStore(database, dedup_window_s=3600)


@pytest.fixture
def ingestor(event_store: EventStore, runtime_audit: AuditLog) -> Iterator[EventIngestor]:
    ing = EventIngestor(event_store, runtime_audit)
    ing.start()
    try:
        yield ing
    finally:
        ing.close()
