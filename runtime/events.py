"""The events repository: store Falco alerts once, count duplicates, read them back.

``EventStore.store_many`` writes a batch of validated alerts in ONE transaction and returns a
result per alert, in input order: ``stored`` (a new row) or ``duplicate`` (the same event id
was stored less than ``dedup_window_s`` ago: its ``duplicates`` count and ``last_seen`` move
instead). A repeat after the window is stored again as the next ``occurrence``. Concurrent
writers (several replicas, the CLI) are safe: a unique (event_id, occurrence) constraint
decides, and a batch that loses a race is retried against the new state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from runtime.falco import FalcoAlert, Priority
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.errors import StoreError
from zerogate.store import Database, driver_cursor
from zerogate.store.tables import runtime_event

log = logging.getLogger(__name__)

Status = Literal["stored", "duplicate"]
AuditHook = Callable[[Connection, list[tuple[int, "StoreResult"]]], Sequence[int]]
"""Writes the audit records of newly stored rows inside the storing transaction."""
_CHUNK = 500  # ids per IN (...) list
_RETRIES = 5


class PrunedBatch(NamedTuple):
    """One transaction of ``EventStore.prune``: ``rows`` rows, ids ``first_row`` to
    ``last_row`` (oldest first), each last seen before ``older_than``."""

    rows: int
    first_row: int
    last_row: int
    older_than: datetime


PruneAudit = Callable[[Connection, PrunedBatch], object]
"""Writes the audit record of a prune inside its deleting transaction."""


class StoreResult(NamedTuple):
    """What happened to one submitted alert (a named tuple: built for every ingested alert,
    and a frozen dataclass costs several times more to construct)."""

    event_id: str
    status: Status
    row_id: int
    occurrence: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of ``runtime_event``."""

    row_id: int
    event_id: str
    occurrence: int
    received_at: datetime
    last_seen: datetime
    duplicates: int
    event_time: datetime
    rule: str
    priority: Priority
    source: str | None
    hostname: str | None
    k8s_ns: str | None
    k8s_pod: str | None
    k8s_pod_uid: str | None
    container_id: str | None
    ingest: str
    raw: dict[str, Any]
    spiffe_ids: list[str] | None
    audit_seq: int | None

    def summary(self) -> dict[str, Any]:
        """The JSON shape used in API answers and audit payloads (no raw alert)."""
        return {
            "event_id": self.event_id,
            "occurrence": self.occurrence,
            "rule": self.rule,
            "priority": self.priority.label,
            "source": self.source,
            "hostname": self.hostname,
            "time": self.raw.get("time"),
            "received_at": self.received_at.isoformat(),
            "duplicates": self.duplicates,
            "ingest": self.ingest,
            "workload": {
                "k8s_ns": self.k8s_ns,
                "k8s_pod": self.k8s_pod,
                "k8s_pod_uid": self.k8s_pod_uid,
                "container_id": self.container_id,
            },
            "spiffe_ids": self.spiffe_ids,
        }


_INSERT_COLUMNS = (
    "INSERT INTO runtime_event (event_id, occurrence, received_at, last_seen, duplicates, "
    "event_time, rule, priority, severity, source, hostname, k8s_ns, k8s_pod, k8s_pod_uid, "
    "container_id, ingest, raw, audit_seq, id) "
)
_INSERT_QMARK = _INSERT_COLUMNS + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_FORMAT = (
    _INSERT_COLUMNS
    + "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_LATEST_SQL = (  # + "(<one placeholder per id>)"
    "SELECT id, event_id, occurrence, received_at FROM runtime_event WHERE event_id IN "
)
_SUMMARIES_MAX = 20_000  # cached ``recent`` summaries (a few MB at most)
_RECENT_SQL = (  # driver-level: the responder runs it for every event
    "SELECT id, event_id, rule, severity, event_time FROM runtime_event "
    "WHERE k8s_ns = {mark} AND k8s_pod = {mark} AND received_at >= {mark} "
    "ORDER BY id DESC LIMIT {mark}"
)
_MARK_QMARK = "UPDATE runtime_event SET audit_seq = ? WHERE id = ?"
_MARK_FORMAT = "UPDATE runtime_event SET audit_seq = %s WHERE id = %s"


def _row_tuple(
    alert: FalcoAlert,
    ingest: str,
    now: Any,
    occurrence: int,
    event_time: Callable[[datetime], Any],
) -> tuple[Any, ...]:
    """One row in ``_INSERT_QMARK`` column order, values as the driver takes them (audit_seq
    and id follow)."""
    return (
        alert.event_id,
        occurrence,
        now,
        now,
        0,
        event_time(alert.timestamp),
        alert.rule,
        alert.priority.label,
        int(alert.priority),
        alert.source,
        alert.hostname,
        alert.k8s_ns,
        alert.k8s_pod,
        alert.k8s_pod_uid,
        alert.container_id,
        ingest,
        alert.stored_text(),
    )


def _time_param(conn: Connection) -> Callable[[datetime], Any]:
    """A datetime as the driver stores it in a ``UtcDateTime`` column (the column type's own
    bind processing, so reads through SQLAlchemy see exactly what a Core insert writes)."""
    dialect = conn.dialect
    processor = runtime_event.c.event_time.type.dialect_impl(dialect).bind_processor(dialect)
    if processor is None:
        return lambda value: value
    return processor


def _time_value(conn: Connection) -> Callable[[Any], Any]:
    """A ``UtcDateTime`` value as the driver returns it -> an aware UTC datetime (the column
    type's own result processing, for driver-level reads)."""
    dialect = conn.dialect
    processor = runtime_event.c.event_time.type.dialect_impl(dialect).result_processor(
        dialect, None
    )
    if processor is None:
        return lambda value: value
    return processor


def _placeholder(conn: Connection) -> str:
    """The driver's parameter marker (psycopg ``%s``, sqlite3 ``?``)."""
    return "%s" if conn.dialect.name == "postgresql" else "?"


def _allocate_ids(conn: Connection, n: int) -> list[int]:
    """Ids for ``n`` new rows, inserted with one driver-level executemany (SQLAlchemy's
    insert-with-RETURNING path spends ~60 us a row on per-row compilation and type
    processing, the driver ~5 us). On SQLite the caller holds the write lock (``BEGIN
    IMMEDIATE``), so max(id)+1.. is ours; on PostgreSQL they come from the column's sequence."""
    cur = driver_cursor(conn)
    if conn.dialect.name == "postgresql":
        cur.execute(
            "SELECT nextval(pg_get_serial_sequence('runtime_event', 'id')) "
            "FROM generate_series(1, %s)",
            (n,),
        )
        return sorted(int(row[0]) for row in cur.fetchall())
    cur.execute("SELECT coalesce(max(id), 0) FROM runtime_event")
    top = int(cur.fetchone()[0] or 0)
    return list(range(top + 1, top + n + 1))


def _to_event(row: Any) -> StoredEvent:
    return StoredEvent(
        row_id=row.id,
        event_id=row.event_id,
        occurrence=row.occurrence,
        received_at=row.received_at,
        last_seen=row.last_seen,
        duplicates=row.duplicates,
        event_time=row.event_time,
        rule=row.rule,
        priority=Priority(row.severity),
        source=row.source,
        hostname=row.hostname,
        k8s_ns=row.k8s_ns,
        k8s_pod=row.k8s_pod,
        k8s_pod_uid=row.k8s_pod_uid,
        container_id=row.container_id,
        ingest=row.ingest,
        raw=json.loads(row.raw),
        spiffe_ids=row.spiffe_ids,
        audit_seq=row.audit_seq,
    )


class EventStore:
    """Repository over ``runtime_event``."""

    def __init__(
        self, db: Database, *, dedup_window_s: float = 3600, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._db = db
        self._window = timedelta(seconds=dedup_window_s)
        self._clock = clock
        # (row id, event id) -> its ``recent`` summary: those columns never change once stored,
        # and a noisy workload's recent events are summarised again for each of its new
        # events. Keyed by the event id too: SQLite's ids restart below a pruned maximum.
        self._summaries: dict[tuple[int, str], dict[str, Any]] = {}

    @property
    def db(self) -> Database:
        return self._db

    # writing ------------------------------------------------------------------------------

    def store_many(
        self, items: Sequence[tuple[FalcoAlert, str]], *, audit: AuditHook | None = None
    ) -> list[StoreResult]:
        """Store ``(alert, ingest)`` pairs in one transaction; one result per pair, in order.

        ``audit`` (optional) is called inside that transaction with ``(index, result)`` for
        each newly stored row (``index`` into ``items``) and returns the audit seq of each,
        written to the row's ``audit_seq``: events and their audit records commit together."""
        if not items:
            return []
        for attempt in range(_RETRIES):
            try:
                with self._db.begin() as conn:
                    return self._store(conn, items, audit)
            except IntegrityError:
                # another writer stored one of these ids between our read and our insert
                log.debug("event=runtime.store.retry attempt=%d", attempt + 1)
        with self._db.begin() as conn:  # last try; an error now propagates
            return self._store(conn, items, audit)

    def _store(
        self,
        conn: Connection,
        items: Sequence[tuple[FalcoAlert, str]],
        audit: AuditHook | None,
    ) -> list[StoreResult]:
        now = self._clock.now()
        first: dict[str, int] = {}  # event id -> index of its first item
        repeats: dict[str, int] = {}
        for index, (alert, _ingest) in enumerate(items):
            if alert.event_id in first:
                repeats[alert.event_id] = repeats.get(alert.event_id, 0) + 1
            else:
                first[alert.event_id] = index
        latest = self._latest(conn, list(first))
        new: list[tuple[int, int]] = []  # (item index, occurrence)
        bumps: dict[int, int] = {}  # row id -> duplicates to add
        outcome: dict[str, StoreResult] = {}
        for event_id, index in first.items():
            prior = latest.get(event_id)
            if prior is not None and now - prior[2] <= self._window:
                row_id, occurrence = prior[0], prior[1]
                bumps[row_id] = bumps.get(row_id, 0) + 1 + repeats.get(event_id, 0)
                outcome[event_id] = StoreResult(event_id, "duplicate", row_id, occurrence)
                continue
            new.append((index, 0 if prior is None else prior[1] + 1))
        if new:
            ids = _allocate_ids(conn, len(new))
            stored = [
                (index, StoreResult(items[index][0].event_id, "stored", row_id, occurrence))
                for (index, occurrence), row_id in zip(new, ids, strict=True)
            ]
            seqs: list[int | None] = list(audit(conn, stored)) if audit else [None] * len(new)
            if len(seqs) != len(stored):
                raise StoreError("the audit hook returned a seq count that does not match")
            event_time = _time_param(conn)
            now_param = event_time(now)
            rows = []
            for (index, result), seq in zip(stored, seqs, strict=True):
                alert, ingest = items[index]
                rows.append(
                    (
                        *_row_tuple(alert, ingest, now_param, result.occurrence, event_time),
                        seq,
                        result.row_id,
                    )
                )
                outcome[result.event_id] = result
                if repeats.get(result.event_id):
                    bumps[result.row_id] = repeats[result.event_id]
            driver_cursor(conn).executemany(
                _INSERT_FORMAT if conn.dialect.name == "postgresql" else _INSERT_QMARK, rows
            )
        if bumps:
            conn.execute(
                update(runtime_event)
                .where(runtime_event.c.id == bindparam("rid"))
                .values(
                    duplicates=runtime_event.c.duplicates + bindparam("n"),
                    last_seen=bindparam("seen"),
                ),
                [{"rid": rid, "n": n, "seen": now} for rid, n in bumps.items()],
            )
        results: list[StoreResult] = []
        seen: set[str] = set()
        for alert, _ingest in items:
            result = outcome[alert.event_id]
            if alert.event_id in seen and result.status == "stored":
                result = StoreResult(result.event_id, "duplicate", result.row_id, result.occurrence)
            seen.add(alert.event_id)
            results.append(result)
        return results

    def _latest(self, conn: Connection, ids: list[str]) -> dict[str, tuple[int, int, datetime]]:
        """event id -> (row id, occurrence, received_at) of its newest occurrence.

        Driver-level SQL: this runs in every ingest transaction, and building and compiling
        the Core ``IN`` expression cost ~0.5 ms per batch, more than the rest of a one-alert
        batch. ``received_at`` goes through the column type's own result processing."""
        out: dict[str, tuple[int, int, datetime]] = {}
        mark = _placeholder(conn)
        to_time = _time_value(conn)
        cur = driver_cursor(conn)
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            cur.execute(_LATEST_SQL + "(" + ", ".join([mark] * len(chunk)) + ")", tuple(chunk))
            for row_id, event_id, occurrence, received in cur.fetchall():
                known = out.get(event_id)
                if known is None or occurrence > known[1]:
                    out[event_id] = (row_id, occurrence, to_time(received))
        return out

    def mark_audited(self, seqs: dict[int, int]) -> None:
        """Record the audit seq of each stored row (row id -> seq)."""
        if not seqs:
            return
        with self._db.begin() as conn:
            self._mark(conn, seqs)

    @staticmethod
    def _mark(conn: Connection, seqs: dict[int, int] | None) -> None:
        if seqs:
            driver_cursor(conn).executemany(
                _MARK_FORMAT if conn.dialect.name == "postgresql" else _MARK_QMARK,
                [(seq, rid) for rid, seq in seqs.items()],
            )

    def prune(
        self, older_than: datetime, *, batch: int = 500, audit: PruneAudit | None = None
    ) -> int:
        """Delete up to ``batch`` of the events last seen before ``older_than``, oldest
        first, in one transaction; returns how many (fewer than ``batch``: nothing is left).

        One bounded transaction per call, because the write lock it holds is the one
        ingestion waits for (500 rows: 8-12 ms on SQLite; 5,000 held it 64-106 ms).
        ``audit`` is called in that transaction with what it deletes, so a deletion and its
        audit record commit together. Rows whose own ``runtime.event`` record is not written
        yet (``audit_seq`` NULL, for ``recover()``) are kept. Audit records are never pruned:
        the chain is the permanent record; this table is the working set (deduplication, the
        policy's ``recent``, the events API)."""
        expired = (
            select(runtime_event.c.id)
            .where(
                runtime_event.c.received_at < older_than,  # indexed; last_seen >= received_at
                runtime_event.c.last_seen < older_than,
                runtime_event.c.audit_seq.is_not(None),
            )
            .order_by(runtime_event.c.id)
            .limit(batch)
        )
        with self._db.begin() as conn:
            ids = list(conn.execute(expired).scalars())
            if not ids:
                return 0
            conn.execute(delete(runtime_event).where(runtime_event.c.id.in_(ids)))
            if audit is not None:
                audit(conn, PrunedBatch(len(ids), ids[0], ids[-1], older_than))
        return len(ids)

    def set_identities(self, row_id: int, spiffe_ids: list[str]) -> None:
        with self._db.begin() as conn:
            conn.execute(
                update(runtime_event)
                .where(runtime_event.c.id == row_id)
                .values(spiffe_ids=sorted(spiffe_ids))
            )

    # reading ------------------------------------------------------------------------------

    def get(self, event_id: str) -> StoredEvent | None:
        """The newest occurrence of ``event_id``."""
        with self._db.engine.connect() as conn:
            row = conn.execute(
                select(runtime_event)
                .where(runtime_event.c.event_id == event_id)
                .order_by(runtime_event.c.occurrence.desc())
                .limit(1)
            ).first()
        return None if row is None else _to_event(row)

    def get_rows(self, row_ids: Sequence[int]) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        with self._db.engine.connect() as conn:
            for start in range(0, len(row_ids), _CHUNK):
                chunk = list(row_ids[start : start + _CHUNK])
                rows = conn.execute(
                    select(runtime_event)
                    .where(runtime_event.c.id.in_(chunk))
                    .order_by(runtime_event.c.id)
                ).all()
                out.extend(_to_event(r) for r in rows)
        return out

    def count(self) -> int:
        with self._db.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(runtime_event)).scalar_one())

    def event_ids(self) -> set[str]:
        with self._db.engine.connect() as conn:
            return set(conn.execute(select(runtime_event.c.event_id)).scalars())

    def unaudited(self, limit: int = 1000) -> list[StoredEvent]:
        """Rows stored but not yet audited (a crash between the two commits)."""
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                select(runtime_event)
                .where(runtime_event.c.audit_seq.is_(None))
                .order_by(runtime_event.c.id)
                .limit(limit)
            ).all()
        return [_to_event(r) for r in rows]

    def recent_summaries(
        self,
        *,
        k8s_ns: str,
        k8s_pod: str,
        since: datetime,
        limit: int = 50,
        exclude_row: int | None = None,
    ) -> list[dict[str, Any]]:
        """The response policy's ``recent`` input: the workload's events received since
        ``since``, newest first, as ``{event_id, rule, priority, severity, time}``.

        Only those columns are read, with driver-level SQL: the responder asks this for every
        event, and reading whole rows through SQLAlchemy (decoding each stored alert's JSON for
        its ``time``) cost ~2 ms per event with a noisy workload. ``time`` is the
        stored event time, RFC 3339 in UTC at microsecond precision (the alert's own text
        may carry nanoseconds). The summaries are shared between calls: read them, never
        change them."""
        with self._db.engine.connect() as conn:
            to_time = _time_value(conn)
            # one more row when this event is to be left out: it is usually the newest
            fetch = limit + (1 if exclude_row is not None else 0)
            params = (k8s_ns, k8s_pod, _time_param(conn)(since), fetch)
            rows = (
                driver_cursor(conn)
                .execute(_RECENT_SQL.format(mark=_placeholder(conn)), params)
                .fetchall()
            )
        out: list[dict[str, Any]] = []
        known = self._summaries
        if len(known) > _SUMMARIES_MAX:
            known.clear()
        for row_id, event_id, rule, severity, event_time in rows:
            if row_id == exclude_row:
                continue
            summary = known.get((row_id, event_id))
            if summary is None:
                priority = Priority(severity)
                summary = known[row_id, event_id] = {
                    "event_id": event_id,
                    "rule": rule,
                    "priority": priority.label,
                    "severity": int(priority),
                    "time": to_time(event_time).isoformat().replace("+00:00", "Z"),
                }
            out.append(summary)
        return out[:limit]

    def recent(
        self,
        *,
        k8s_ns: str | None = None,
        k8s_pod: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        """Newest first; filtered by workload and/or receive time."""
        query = select(runtime_event).order_by(runtime_event.c.id.desc()).limit(limit)
        if k8s_ns is not None:
            query = query.where(runtime_event.c.k8s_ns == k8s_ns)
        if k8s_pod is not None:
            query = query.where(runtime_event.c.k8s_pod == k8s_pod)
        if since is not None:
            query = query.where(runtime_event.c.received_at >= since)
        with self._db.engine.connect() as conn:
            return [_to_event(r) for r in conn.execute(query).all()]
