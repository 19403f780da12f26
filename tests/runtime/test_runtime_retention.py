"""Event retention: rows last seen before the cutoff go, in bounded transactions, each with
its audit record; recent, recently repeated and not-yet-audited rows stay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from runtime_corpus import docs_raw

from runtime.events import EventStore
from runtime.falco import FalcoAlert, parse_alert
from runtime.ingest import EventIngestor
from runtime.retention import AUDIT_KIND, EventRetention
from runtime.service import open_runtime
from zerogate.audit import AuditLog, tail, verify
from zerogate.clock import ManualClock
from zerogate.config import Settings
from zerogate.store import Database

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WEEK = 7 * 86400


def _alert(n: int) -> FalcoAlert:
    raw = docs_raw()
    raw["output_fields"]["evt.num"] = n
    return parse_alert(json.loads(json.dumps(raw)))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store(database: Database, clock: ManualClock) -> EventStore:
    return EventStore(database, dedup_window_s=3600, clock=clock)


@pytest.fixture
def ingest(store: EventStore, runtime_audit: AuditLog) -> Iterator[EventIngestor]:
    ing = EventIngestor(store, runtime_audit)
    ing.start()
    yield ing
    ing.close()


def test_prune_keeps_recent_repeated_and_unaudited_rows(
    store: EventStore,
    ingest: EventIngestor,
    runtime_audit: AuditLog,
    clock: ManualClock,
    database: Database,
) -> None:
    old = [_alert(n) for n in range(5)]
    ingest.ingest(old, "http")
    store.store_many([(_alert(100), "http")])  # no audit hook: audit_seq NULL, recover()'s
    clock.advance(timedelta(minutes=50))
    assert ingest.ingest([old[0]], "http")[0].status == "duplicate"  # last_seen moves
    clock.advance(timedelta(days=7) - timedelta(minutes=20))  # cutoff: T0 + 30 min
    fresh = _alert(200)
    ingest.ingest([fresh], "http")

    retention = EventRetention(store, runtime_audit, retention_s=WEEK, batch=2, clock=clock)
    assert retention.prune_once() == 4
    left = store.event_ids()
    assert left == {old[0].event_id, _alert(100).event_id, fresh.event_id}
    assert retention.prune_once() == 0

    runtime_audit.flush()
    records = [r.payload for r in tail(database, n=10, kind=AUDIT_KIND)]
    assert sorted(r["count"] for r in records) == [2, 2]  # batch=2: two transactions
    assert {r["last_seen_before"] for r in records} == {(T0 + timedelta(minutes=30)).isoformat()}
    assert verify(database, runtime_audit.public_key).ok
    # each pruned event's own record stays in the chain
    events = {r.payload["event_id"] for r in tail(database, n=100, kind="runtime.event")}
    assert {a.event_id for a in old} <= events


def test_retention_shorter_than_the_dedup_window_is_refused() -> None:
    with pytest.raises(ValidationError, match="dedup_window_s"):
        Settings(runtime={"event_retention_s": 600, "dedup_window_s": 3600})
    assert Settings(runtime={"event_retention_s": 0}).runtime.event_retention_s == 0


async def test_the_runtime_service_prunes_in_the_background(
    database: Database, runtime_audit: AuditLog, clock: ManualClock
) -> None:
    settings = Settings(runtime={"event_retention_s": 3600, "prune_interval_s": 1})
    rt = open_runtime(settings, database, runtime_audit, clock=clock)
    assert rt.retention is not None
    rt.ingestor.ingest([_alert(1), _alert(2)], "http")
    await rt.start()
    try:
        clock.advance(timedelta(hours=2))
        for _ in range(100):
            if rt.store.count() == 0:
                break
            await asyncio.sleep(0.05)
        assert rt.store.count() == 0
        assert rt.retention.pruned == 2
    finally:
        await rt.stop()
    keep = open_runtime(Settings(runtime={"event_retention_s": 0}), database, runtime_audit)
    assert keep.retention is None
