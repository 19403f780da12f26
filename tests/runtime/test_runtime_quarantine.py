"""Quarantine state on SQLite and PostgreSQL: expiry, release, revision, cross-process
refresh, the list endpoint, and the SSE push to a remote gate's view."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from runtime_app import FALCO_ID, build_app
from runtime_server import serve

from runtime.errors import QuarantineError, QuarantineNotFoundError
from runtime.ingest import EventIngestor
from runtime.quarantine import QuarantineChange, QuarantineService
from runtime.remote import RemoteQuarantineView
from zerogate.audit import AuditLog, tail
from zerogate.clock import ManualClock
from zerogate.store import Database

APP = "spiffe://zerogate.internal/ns/ml/sa/model"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


def test_add_expire_release(
    database: Database, clock: ManualClock, runtime_audit: AuditLog
) -> None:
    q = QuarantineService(database, clock=clock, audit=runtime_audit, default_ttl_s=3600)
    assert q.is_quarantined(APP) is None
    rev0 = q.revision
    record = q.add(APP, reason="Terminal shell in container", rule="Terminal shell in container")
    assert q.revision == rev0 + 1 == record.revision
    hit = q.is_quarantined(APP)
    assert hit is not None and hit.rule == "Terminal shell in container"
    assert hit.expires_at == clock.now() + timedelta(hours=1)
    clock.advance(timedelta(minutes=59))
    assert q.is_quarantined(APP) is not None
    clock.advance(timedelta(minutes=2))
    assert q.is_quarantined(APP) is None  # expired without any write
    assert q.list() == []
    q.add(APP, reason="again", ttl_s=60)
    released = q.release(APP, released_by="cli")
    assert released.released_at == clock.now()
    assert q.is_quarantined(APP) is None
    with pytest.raises(QuarantineNotFoundError, match="is not quarantined"):
        q.release(APP)
    assert len(q.list(include_inactive=True)) == 2
    runtime_audit.flush()
    actions = [r.payload["action"] for r in tail(database, n=10, kind="runtime.quarantine")]
    assert actions == ["added", "added", "released"]


def test_longer_quarantine_wins_shorter_is_kept(database: Database, clock: ManualClock) -> None:
    q = QuarantineService(database, clock=clock)
    long = q.add(APP, reason="a", ttl_s=3600)
    assert q.add(APP, reason="b", ttl_s=60) == long
    longer = q.add(APP, reason="c", ttl_s=7200)
    assert q.is_quarantined(APP) == longer


@pytest.mark.parametrize(
    ("spiffe_id", "ttl", "reason", "message"),
    [
        ("not-a-spiffe-id", 60, "r", "spiffe_id"),
        ("spiffe://Upper.Case/x", 60, "r", "spiffe_id"),
        (APP, 0, "r", "ttl_s"),
        (APP, 60, " ", "reason"),
    ],
)
def test_bad_quarantine_requests(
    database: Database, spiffe_id: str, ttl: int, reason: str, message: str
) -> None:
    q = QuarantineService(database)
    with pytest.raises(QuarantineError, match=message):
        q.add(spiffe_id, reason=reason, ttl_s=ttl)
    assert q.list(include_inactive=True) == []


def test_other_process_writes_reach_the_cache_on_refresh(database: Database) -> None:
    server = QuarantineService(database)
    seen: list[QuarantineChange] = []
    server.subscribe(seen.append)
    cli = QuarantineService(database)  # e.g. `zerogate quarantine add` in another process
    cli.add(APP, reason="manual", created_by="cli")
    assert server.is_quarantined(APP) is None  # not yet refreshed
    assert server.refresh() is True
    assert server.is_quarantined(APP) is not None
    cli.release(APP)
    server.refresh()
    assert server.is_quarantined(APP) is None
    assert [c.action for c in seen] == ["added", "released"]
    assert server.refresh() is False  # nothing moved


async def test_list_endpoint_and_sse_push_to_remote_view(
    database: Database, ingestor: EventIngestor
) -> None:
    q = QuarantineService(database)
    q.add("spiffe://zerogate.internal/already", reason="earlier", ttl_s=600)
    app = build_app(ingestor, q)

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(
            headers={"x-test-spiffe-id": FALCO_ID}, timeout=httpx.Timeout(10.0, read=60.0)
        )

    with serve(app) as base:
        async with client() as c:
            listed = (await c.get(base + "/v1/runtime/quarantine")).json()
            assert [r["spiffe_id"] for r in listed["quarantines"]] == [
                "spiffe://zerogate.internal/already"
            ]
            anonymous = await c.get(
                base + "/v1/runtime/quarantine", headers={"x-test-spiffe-id": ""}
            )
            assert anonymous.status_code == 401
        remote = RemoteQuarantineView(base, client_factory=client)
        await remote.start()
        try:
            assert remote.is_quarantined("spiffe://zerogate.internal/already") is not None
            got = asyncio.Event()
            remote.subscribe(lambda change: got.set() if change.record.spiffe_id == APP else None)
            await asyncio.to_thread(q.add, APP, reason="Terminal shell in container", ttl_s=60)
            await asyncio.wait_for(got.wait(), timeout=5)  # pushed, not polled
            record = remote.is_quarantined(APP)
            assert record is not None and record.reason == "Terminal shell in container"
            assert remote.revision == q.revision
            got.clear()
            await asyncio.to_thread(q.release, APP)
            await asyncio.wait_for(got.wait(), timeout=5)
            assert remote.is_quarantined(APP) is None
        finally:
            await remote.stop()


async def test_remote_view_reconnects_and_catches_up(
    database: Database, ingestor: EventIngestor
) -> None:
    q = QuarantineService(database)
    app = build_app(ingestor, q)

    def client() -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"x-test-spiffe-id": FALCO_ID})

    with serve(app) as base:
        port = int(base.rsplit(":", 1)[1])
        remote = RemoteQuarantineView(base, client_factory=client, max_backoff_s=0.2)
        await remote.start()
    try:
        # the control plane is down; a quarantine is written meanwhile
        await asyncio.to_thread(q.add, APP, reason="while you were away", ttl_s=60)
        assert remote.is_quarantined(APP) is None
        got = asyncio.Event()
        remote.subscribe(lambda change: got.set() if change.record.spiffe_id == APP else None)
        with serve(app, port=port):
            await asyncio.wait_for(got.wait(), timeout=10)  # the new snapshot carries it
            record = remote.is_quarantined(APP)
            assert record is not None and record.reason == "while you were away"
            assert remote.ready() and not remote.is_denied(spiffe_id="spiffe://x.org/other")
    finally:
        await remote.stop()


async def test_another_replicas_change_is_pushed_not_polled(database: Database) -> None:
    """Two control-plane replicas on one database. On PostgreSQL the watch LISTENs for the
    NOTIFY every change sends at commit, so with a 30 s poll interval a change still arrives
    at once; SQLite (one machine) polls, here every 50 ms."""
    push = database.dialect == "postgresql"
    replica = QuarantineService(database, watch_interval_s=30 if push else 0.05)
    got = asyncio.Event()
    loop = asyncio.get_running_loop()
    replica.subscribe(
        lambda c: loop.call_soon_threadsafe(got.set) if c.record.spiffe_id == APP else None
    )
    await replica.start()
    try:
        if push:
            assert await asyncio.to_thread(replica.listening.wait, 10)
        writer = QuarantineService(database)  # the other replica
        started = loop.time()
        await asyncio.to_thread(writer.add, APP, reason="Terminal shell in container", ttl_s=60)
        await asyncio.wait_for(got.wait(), timeout=5)
        assert loop.time() - started < 5
        assert replica.is_quarantined(APP) is not None
        got.clear()
        await asyncio.to_thread(writer.release, APP)
        await asyncio.wait_for(got.wait(), timeout=5)
        assert replica.is_quarantined(APP) is None
    finally:
        stopping = loop.time()
        await replica.stop()
        assert loop.time() - stopping < 5  # the listener is woken, not left to its 30 s poll
