"""Durable ingestion: every source hands validated alerts to ``EventIngestor.submit``.

``submit(alerts, ingest)`` returns a ``Future`` that resolves to one ``StoreResult`` per alert
once the alerts are committed to ``runtime_event`` together with one ``runtime.event`` audit
record per newly stored event: rows and records are written in ONE transaction
(``AuditLog.write_in``), so neither exists without the other. Only then may a source
acknowledge (HTTP reply, NATS ack, file offset). One writer thread drains the queue and stores
everything waiting in one transaction (group commit), so concurrent single-alert POSTs cost one
commit between them.

Listeners registered with ``subscribe`` receive the newly stored events (the responder
correlates and acts on them) right after that commit, so the chain holds each event before
any action on it; a listener error is logged, never raised into ingestion. Rows with
``audit_seq`` NULL (written by releases before events and records shared a transaction) are
audited by ``recover()``, run at start.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection

from runtime.events import EventStore, StoredEvent, StoreResult
from runtime.falco import FalcoAlert
from zerogate.audit import AuditLog, tail
from zerogate.errors import StoreError

log = logging.getLogger(__name__)

AUDIT_KIND = "runtime.event"
Listener = Callable[[list["NewEvent"]], None]
_STOP = object()


class NewEvent(NamedTuple):
    """A newly stored event handed to listeners."""

    alert: FalcoAlert
    result: StoreResult
    ingest: str
    trace_id: str | None = None


@dataclass
class _Job:
    alerts: Sequence[FalcoAlert]
    ingest: str
    trace_id: str | None
    submitter: str | None = None
    future: Future[list[StoreResult]] | None = None  # submit
    # submit_async: the waiting event loop and its future
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[list[StoreResult]] | None = None


Outcome = tuple["asyncio.Future[list[StoreResult]]", list[StoreResult] | BaseException]


def _settle(outcomes: list[Outcome]) -> None:
    """On the waiting loop: resolve each future (a request that went away meanwhile left a
    cancelled one)."""
    for waiter, outcome in outcomes:
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)


def workload_key(alert: FalcoAlert) -> str:
    """A short name of the workload an alert is about (audit records, throttling)."""
    if alert.k8s_pod_uid:
        return f"pod-uid:{alert.k8s_pod_uid}"
    if alert.k8s_ns and alert.k8s_pod:
        return f"pod:{alert.k8s_ns}/{alert.k8s_pod}"
    if alert.container_id:
        return f"container:{alert.hostname}/{alert.container_id}"
    return f"host:{alert.hostname}"


def audit_payload(
    alert: FalcoAlert,
    result: StoreResult,
    ingest: str,
    trace_id: str | None,
    submitter: str | None = None,
) -> dict[str, Any]:
    """Kept small on purpose (one record per event; RFC 8785 canonicalisation is the cost):
    the full alert is in runtime_event.raw, found by event_id. ``submitter`` is the SPIFFE ID
    that POSTed it (HTTP source): the submit policy's allow decisions are not logged one by
    one, so this is where the trail shows who submitted each event."""
    payload: dict[str, Any] = {
        "event_id": result.event_id,
        "rule": alert.rule,
        "priority": alert.priority.label,
        "time": alert.time,
        "ingest": ingest,
        "workload": workload_key(alert),
    }
    if result.occurrence:
        payload["occurrence"] = result.occurrence
    if trace_id:
        payload["trace_id"] = trace_id
    if submitter:
        payload["submitter"] = submitter
    return payload


class EventIngestor:
    """Group-commit writer of Falco events. Thread-safe; ``submit`` never blocks on I/O."""

    def __init__(
        self,
        store: EventStore,
        audit: AuditLog,
        *,
        batch_max: int = 5000,
        audit_timeout_s: float = 30.0,
    ) -> None:
        self._store = store
        self._audit = audit
        self._batch_max = batch_max
        self._audit_timeout = audit_timeout_s
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.stats = {"stored": 0, "duplicate": 0, "failed_batches": 0}

    @property
    def store(self) -> EventStore:
        return self._store

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="runtime-ingest", daemon=True
                )
                self._thread.start()

    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def submit(
        self,
        alerts: Sequence[FalcoAlert],
        ingest: str,
        *,
        trace_id: str | None = None,
        submitter: str | None = None,
    ) -> Future[list[StoreResult]]:
        self._accepting()
        future: Future[list[StoreResult]] = Future()
        if not alerts:
            future.set_result([])
            return future
        self._queue.put(_Job(alerts, ingest, trace_id, submitter, future=future))
        return future

    def _accepting(self) -> None:
        if self._closed:
            raise StoreError("event ingestion is stopped")
        self.start()

    def submit_async(
        self,
        alerts: Sequence[FalcoAlert],
        ingest: str,
        *,
        trace_id: str | None = None,
        submitter: str | None = None,
    ) -> asyncio.Future[list[StoreResult]]:
        """``submit`` for a caller on an event loop: an asyncio future of that loop. The
        writer resolves the futures of everything one commit held with one wake-up of each
        loop, where ``asyncio.wrap_future`` costs a wake-up and two callbacks per request
        (about a third of the event loop's own work on a single-alert POST)."""
        self._accepting()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[StoreResult]] = loop.create_future()
        if not alerts:
            waiter.set_result([])
            return waiter
        self._queue.put(_Job(alerts, ingest, trace_id, submitter, loop=loop, waiter=waiter))
        return waiter

    def ingest(
        self, alerts: Sequence[FalcoAlert], ingest: str, timeout: float = 60.0
    ) -> list[StoreResult]:
        """Submit and wait (for synchronous callers: CLI, file source)."""
        return self.submit(alerts, ingest).result(timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout=timeout)

    def recover(self, *, look_back: int = 50_000) -> int:
        """Audit rows a crash left without a recorded audit seq; returns how many.

        A row whose ``runtime.event`` record did become durable (the crash hit between the
        audit commit and the write of its seq) is matched against the last ``look_back``
        audit records and only marked, so no event gets two records."""
        rows = self._store.unaudited(limit=1000)
        if not rows:
            return 0
        known = {
            r.payload.get("event_id"): r.seq
            for r in tail(self._store.db, n=look_back, kind=AUDIT_KIND)
            if isinstance(r.payload, dict)
        }
        done = 0
        while rows:
            seqs: dict[int, int] = {}
            missing: list[StoredEvent] = []
            for row in rows:
                seq = known.get(row.event_id)
                if seq is not None and row.occurrence == 0:
                    seqs[row.row_id] = seq
                else:
                    missing.append(row)
            if missing:
                written = self._audit.append_many(AUDIT_KIND, [_recovered(r) for r in missing])
                got = written.result(timeout=self._audit_timeout)
                seqs.update(zip((r.row_id for r in missing), got, strict=True))
            self._store.mark_audited(seqs)
            done += len(rows)
            log.info(
                "event=runtime.ingest.recovered count=%d reaudited=%d", len(rows), len(missing)
            )
            rows = self._store.unaudited(limit=1000)
        return done

    # writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            jobs: list[_Job] = []
            size = 0
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Job):
                    jobs.append(item)
                    size += len(item.alerts)
                if stop or size >= self._batch_max:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if jobs:
                self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        flat = [(alert, job) for job in jobs for alert in job.alerts]

        def audit_new(conn: Connection, stored: list[tuple[int, StoreResult]]) -> list[int]:
            # in the storing transaction: each event and its record commit together
            payloads = []
            for i, result in stored:
                alert, job = flat[i]
                payloads.append(
                    audit_payload(alert, result, job.ingest, job.trace_id, job.submitter)
                )
            return self._audit.write_in(conn, AUDIT_KIND, payloads)

        try:
            results = self._store.store_many([(a, job.ingest) for a, job in flat], audit=audit_new)
        except Exception as exc:  # the database refused: every job in the batch fails
            self.stats["failed_batches"] += 1
            log.error("event=runtime.ingest.store_failed error=%s", exc)
            err = StoreError(f"events could not be stored and audited: {exc}")
            _resolve(jobs, [err] * len(jobs))
            return
        new = [
            NewEvent(alert, result, job.ingest, job.trace_id)
            for (alert, job), result in zip(flat, results, strict=True)
            if result.status == "stored"
        ]
        # the events and their records are durable: hand them to the responder (it only
        # queues), then acknowledge
        if new:
            for listener in self._listeners:
                try:
                    listener(new)
                except Exception:
                    log.exception("event=runtime.ingest.listener_failed")
        outcomes: list[list[StoreResult] | BaseException] = []
        offset = 0
        for job in jobs:
            outcomes.append(results[offset : offset + len(job.alerts)])
            offset += len(job.alerts)
        _resolve(jobs, outcomes)
        self.stats["stored"] += len(new)
        self.stats["duplicate"] += len(results) - len(new)


def _resolve(jobs: list[_Job], outcomes: list[list[StoreResult] | BaseException]) -> None:
    """Hand each job its results (or the error): concurrent futures at once, asyncio futures
    with one ``call_soon_threadsafe`` per waiting loop."""
    by_loop: defaultdict[asyncio.AbstractEventLoop, list[Outcome]] = defaultdict(list)
    for job, outcome in zip(jobs, outcomes, strict=True):
        if job.loop is not None and job.waiter is not None:
            by_loop[job.loop].append((job.waiter, outcome))
        elif job.future is None:
            continue
        elif isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            log.debug("event=runtime.ingest.loop_closed jobs=%d", len(settled))


def _recovered(row: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": row.event_id,
        "rule": row.rule,
        "priority": row.priority.label,
        "time": row.raw.get("time"),
        "ingest": row.ingest,
        "recovered": True,
    }
