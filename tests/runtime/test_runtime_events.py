"""EventStore and EventIngestor on SQLite and PostgreSQL: store once, dedup, audit each."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from runtime_corpus import corpus_alerts, corpus_raw

from runtime.events import EventStore
from runtime.falco import parse_alert
from runtime.ingest import EventIngestor
from zerogate.audit import AuditLog, tail, verify
from zerogate.clock import ManualClock
from zerogate.store import Database


def _alert(rule: str = "Terminal shell in container", **fields: Any) -> Any:
    raw = corpus_raw()[0] | {"rule": rule}
    raw["output_fields"] = raw.get("output_fields", {}) | fields
    return parse_alert(raw)


def test_store_many_stores_each_corpus_alert_once(event_store: EventStore) -> None:
    alerts = corpus_alerts()
    results = event_store.store_many([(a, "http") for a in alerts])
    assert [r.status for r in results] == ["stored"] * len(alerts)
    assert event_store.count() == len(alerts)
    again = event_store.store_many([(a, "nats") for a in alerts])
    assert [r.status for r in again] == ["duplicate"] * len(alerts)
    assert [r.row_id for r in again] == [r.row_id for r in results]
    assert event_store.count() == len(alerts)
    stored = event_store.get(alerts[0].event_id)
    assert stored is not None and stored.duplicates == 1 and stored.ingest == "http"


def test_raw_alert_round_trips_exactly(event_store: EventStore) -> None:
    alert = corpus_alerts()[0]
    event_store.store_many([(alert, "http")])
    stored = event_store.get(alert.event_id)
    assert stored is not None
    assert stored.raw == alert.raw  # including evt.time beyond 2**53
    assert stored.priority.label == alert.priority.label
    assert stored.event_time == alert.timestamp
    assert (stored.k8s_ns, stored.k8s_pod) == (alert.k8s_ns, alert.k8s_pod)


def test_duplicates_inside_one_batch_are_counted(event_store: EventStore) -> None:
    a, b = _alert("A"), _alert("B")
    results = event_store.store_many([(a, "http"), (a, "http"), (b, "http"), (a, "http")])
    assert [r.status for r in results] == ["stored", "duplicate", "stored", "duplicate"]
    stored = event_store.get(a.event_id)
    assert stored is not None and stored.duplicates == 2
    assert event_store.count() == 2


def test_repeat_after_window_is_a_new_occurrence(database: Database) -> None:
    clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
    store = EventStore(database, dedup_window_s=60, clock=clock)
    alert = _alert()
    first = store.store_many([(alert, "http")])[0]
    clock.advance(timedelta(seconds=59))
    assert store.store_many([(alert, "http")])[0].status == "duplicate"
    clock.advance(timedelta(seconds=61))
    late = store.store_many([(alert, "http")])[0]
    assert late.status == "stored" and late.occurrence == first.occurrence + 1
    assert store.count() == 2


def test_ingestor_audits_every_stored_event_and_not_duplicates(
    ingestor: EventIngestor, runtime_audit: AuditLog, database: Database
) -> None:
    alerts = corpus_alerts()
    results = ingestor.ingest(alerts, "http")
    ingestor.ingest(alerts[:3], "http")  # duplicates: no new audit records
    runtime_audit.flush()
    records = [r for r in tail(database, n=1000) if r.kind == "runtime.event"]
    assert sorted(r.payload["event_id"] for r in records) == sorted(r.event_id for r in results)
    # each row carries its record's seq from the moment it is acknowledged
    rows = ingestor.store.get_rows([r.row_id for r in results])
    by_seq = {r.seq: r for r in records}
    assert all(by_seq[row.audit_seq].payload["event_id"] == row.event_id for row in rows)
    assert ingestor.store.unaudited() == []


def test_events_and_their_audit_records_commit_together(
    event_store: EventStore, runtime_audit: AuditLog, database: Database
) -> None:
    """A failure while writing the records rolls the events back: never one without the other."""
    alerts = corpus_alerts()[:5]

    def failing_hook(conn: Any, stored: list[Any]) -> list[int]:
        runtime_audit.write_in(conn, "runtime.event", [{"n": i} for i in range(len(stored))])
        raise RuntimeError("disk full while auditing")

    with pytest.raises(RuntimeError, match="disk full"):
        event_store.store_many([(a, "http") for a in alerts], audit=failing_hook)
    runtime_audit.flush()
    assert event_store.count() == 0
    assert [r for r in tail(database, n=100) if r.kind == "runtime.event"] == []
    ingestor = EventIngestor(event_store, runtime_audit)
    try:
        results = ingestor.ingest(alerts, "http")
    finally:
        ingestor.close()
    assert [r.status for r in results] == ["stored"] * 5
    assert verify(database, runtime_audit.public_key).ok


def test_listeners_see_only_new_events(ingestor: EventIngestor) -> None:
    seen: list[str] = []
    ingestor.subscribe(lambda events: seen.extend(e.result.event_id for e in events))
    alert = _alert("listener rule")
    ingestor.ingest([alert, alert], "file")
    ingestor.ingest([alert], "file")
    assert seen == [alert.event_id]


def test_recover_audits_rows_left_unaudited(
    event_store: EventStore, runtime_audit: AuditLog, database: Database
) -> None:
    alert = _alert("crashed before audit")
    event_store.store_many([(alert, "http")])  # stored, as if the process died right after
    ing = EventIngestor(event_store, runtime_audit)
    assert ing.recover() == 1
    assert event_store.unaudited() == []
    runtime_audit.flush()
    payloads = [r.payload for r in tail(database, n=10) if r.kind == "runtime.event"]
    assert payloads[-1]["event_id"] == alert.event_id and payloads[-1]["recovered"] is True
    assert json.dumps(payloads[-1])  # JSON-clean


def test_recover_only_marks_rows_whose_audit_record_exists(
    event_store: EventStore, runtime_audit: AuditLog, database: Database
) -> None:
    from runtime.ingest import audit_payload

    alert = _alert("crashed after audit, before the seq was written")
    result = event_store.store_many([(alert, "http")])[0]
    seq = runtime_audit.write("runtime.event", audit_payload(alert, result, "http", None))
    assert EventIngestor(event_store, runtime_audit).recover() == 1
    assert event_store.unaudited() == []
    stored = event_store.get(alert.event_id)
    assert stored is not None and stored.audit_seq == seq
    runtime_audit.flush()
    records = [r for r in tail(database, n=10, kind="runtime.event")]
    assert len(records) == 1  # not audited twice


def test_stored_raw_is_the_text_as_received(event_store: EventStore, database: Database) -> None:
    """NDJSON lines and single bodies are stored as they came (no re-serialisation); an item
    of a JSON array, which has no text of its own, is stored in canonical form."""
    import json

    from sqlalchemy import select

    from runtime.sources.http import parse_body
    from zerogate.store.tables import runtime_event

    raw = json.loads(json.dumps(corpus_alerts()[0].raw))
    line = json.dumps(raw, indent=None)  # key order as Falco printed it, ", " separators
    ndjson = parse_body(f"{line}\r\n\n".encode(), "application/x-ndjson").alerts
    raw["rule"] = "as an array item"
    array = parse_body(json.dumps([raw]).encode(), "application/json").alerts
    results = event_store.store_many([(a, "http") for a in ndjson + array])
    with database.engine.connect() as conn:
        stored = dict(conn.execute(select(runtime_event.c.id, runtime_event.c.raw)).all())
    assert stored[results[0].row_id] == line
    assert stored[results[1].row_id] == array[0].canonical().decode()
    assert json.loads(stored[results[1].row_id]) == raw


async def test_submit_async_settles_each_waiter_and_skips_a_cancelled_one(
    ingestor: EventIngestor,
) -> None:
    """The writer resolves the asyncio futures of a commit on their loop: each gets its own
    results, in order; one whose request went away (cancelled) is left as it is, and the
    others and later submits are unaffected."""
    alerts = [_alert(f"async rule {i}") for i in range(6)]
    waiters = [ingestor.submit_async(alerts[i : i + 2], "http") for i in range(0, 6, 2)]
    waiters[1].cancel()
    first, third = await waiters[0], await waiters[2]
    assert [r.event_id for r in first] == [a.event_id for a in alerts[0:2]]
    assert [r.event_id for r in third] == [a.event_id for a in alerts[4:6]]
    assert {r.status for r in first + third} == {"stored"}
    # the cancelled request's alerts were still stored (its future was only not resolved)
    assert ingestor.store.count() == 6
    again = await ingestor.submit_async([alerts[2]], "http")
    assert again[0].status == "duplicate"
    assert await ingestor.submit_async([], "http") == []
