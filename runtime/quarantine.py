"""Quarantine state: which SPIFFE IDs every enforcement point must refuse, until when.

Stored in ``runtime_quarantine`` (spiffe_id, reason, rule, event_id, created_at, expires_at,
released_at, ...). Every change bumps the durable counter ``runtime_state['quarantine.revision']``
in the same transaction and is written into the row's ``revision``, so any reader can tell
whether its copy is current by comparing one integer.

The read-only interface other subsystems use (the inference gate, the Workload API). They must
not import runtime internals (DESIGN.md section 2), so they type against this structural
protocol (copy it, or the lead moves it into the kernel)::

    class QuarantineView(Protocol):
        @property
        def revision(self) -> int: ...
        def is_quarantined(self, spiffe_id: str) -> QuarantineRecord | None:
            '''The active record (unexpired, unreleased) or None. O(1), no I/O.'''
        def subscribe(self, callback: Callable[[QuarantineChange], None]) -> Callable[[], None]:
            '''Call ``callback`` after every change (from any thread); returns unsubscribe.'''

``QuarantineRecord`` carries ``spiffe_id``, ``reason``, ``rule``, ``event_id``,
``created_at``, ``expires_at`` (aware UTC) and ``created_by``; ``QuarantineChange`` carries
``action`` ("added" | "released"), ``record`` and ``revision``. The rule name is the reason a
gate reports when it refuses a call.

Implementations: ``QuarantineService`` (in the control plane: writes + an in-memory cache
refreshed on its own writes at once and, for writes by other processes such as the CLI or
other replicas, by ``start()``'s revision watch: on PostgreSQL a ``LISTEN`` on the
``NOTIFY`` each change sends at commit, so another replica's quarantine arrives in
milliseconds, with the interval as a fallback poll; on SQLite (one machine) a poll every
``watch_interval_s``) and ``RemoteQuarantineView``
(``runtime/remote.py``: a remote gate's copy fed by ``GET /v1/runtime/quarantine/watch``,
server-sent events, so changes are pushed, not polled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, func, select, update

from identity.spiffeid import InvalidSpiffeIdError, SpiffeId
from runtime.errors import QuarantineError, QuarantineNotFoundError
from runtime.state import put_in
from zerogate.audit import AuditSink
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.store import Database
from zerogate.store.tables import runtime_quarantine, runtime_state

log = logging.getLogger(__name__)

REVISION_KEY = "quarantine.revision"
NOTIFY_CHANNEL = "zerogate_quarantine"  # PostgreSQL: every change notifies its new revision
AUDIT_KIND = "runtime.quarantine"


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    id: int
    spiffe_id: str
    reason: str
    rule: str | None
    event_id: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None
    revision: int = 0

    def active(self, now: datetime) -> bool:
        return self.released_at is None and now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "spiffe_id": self.spiffe_id,
            "reason": self.reason,
            "rule": self.rule,
            "event_id": self.event_id,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "released_at": self.released_at.isoformat() if self.released_at else None,
            "released_by": self.released_by,
            "revision": self.revision,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuarantineRecord:
        def ts(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if value else None

        created, expires = ts("created_at"), ts("expires_at")
        if created is None or expires is None:
            raise QuarantineError("quarantine record needs created_at and expires_at")
        return cls(
            id=int(data["id"]),
            spiffe_id=str(data["spiffe_id"]),
            reason=str(data["reason"]),
            rule=data.get("rule"),
            event_id=data.get("event_id"),
            created_by=str(data.get("created_by", "")),
            created_at=created,
            expires_at=expires,
            released_at=ts("released_at"),
            released_by=data.get("released_by"),
            revision=int(data.get("revision", 0)),
        )


@dataclass(frozen=True, slots=True)
class QuarantineChange:
    action: Literal["added", "released"]
    record: QuarantineRecord
    revision: int

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "record": self.record.to_json(), "revision": self.revision}


ChangeCallback = Callable[[QuarantineChange], None]


class QuarantineView(Protocol):
    """The read-only interface of every quarantine state (see the module docstring)."""

    @property
    def revision(self) -> int: ...

    def is_quarantined(self, spiffe_id: str) -> QuarantineRecord | None: ...

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]: ...


def _row(row: Any) -> QuarantineRecord:
    return QuarantineRecord(
        id=row.id,
        spiffe_id=row.spiffe_id,
        reason=row.reason,
        rule=row.rule,
        event_id=row.event_id,
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        released_at=row.released_at,
        released_by=row.released_by,
        revision=row.revision,
    )


def check_spiffe_id(value: str) -> str:
    try:
        return str(SpiffeId.parse(value))
    except InvalidSpiffeIdError as exc:
        raise QuarantineError(f"spiffe_id: {exc}") from None


class Subscribers:
    def __init__(self) -> None:
        self._callbacks: list[ChangeCallback] = []
        self._lock = threading.Lock()

    def add(self, callback: ChangeCallback) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def emit(self, change: QuarantineChange) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                log.exception("event=runtime.quarantine.subscriber_failed")


def log_audit_failure(written: Future[int]) -> None:
    """Done-callback for audit records nobody waits on: a failure is logged, never lost."""
    exc = written.exception()
    if exc is not None:
        log.error("event=runtime.audit_failed error=%s", exc)


class ActiveQuarantines:
    """The in-memory set of active quarantines a ``QuarantineView`` answers from (O(1), no
    I/O) and its change subscribers. ``QuarantineService`` keeps one fed by its own writes and
    the revision watch; ``runtime.remote.RemoteQuarantineView`` one fed by server-sent events."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._active: dict[str, QuarantineRecord] = {}
        self._revision = -1
        self._subscribers = Subscribers()

    @property
    def revision(self) -> int:
        return self._revision

    def is_quarantined(self, spiffe_id: str) -> QuarantineRecord | None:
        record = self._active.get(spiffe_id)
        if record is None or not record.active(self._clock.now()):
            return None
        return record

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        return self._subscribers.add(callback)

    def is_denied(self, *, spiffe_id: str) -> bool:
        """identity.workload_cache.IdentityGate: the Workload API serves no quarantined ID."""
        return self.is_quarantined(spiffe_id) is not None

    def _apply(self, change: QuarantineChange) -> None:
        with self._lock:
            if change.action == "added":
                self._active[change.record.spiffe_id] = change.record
            else:
                self._active.pop(change.record.spiffe_id, None)
            self._revision = max(self._revision, change.revision)
        self._subscribers.emit(change)


class QuarantineService(ActiveQuarantines):
    """Writes quarantines and serves the fast in-memory view of the active ones."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        audit: AuditSink | None = None,
        default_ttl_s: int = 3600,
        watch_interval_s: float = 0.5,
    ) -> None:
        super().__init__(clock)
        self._db = db
        self._audit = audit
        self._default_ttl = default_ttl_s
        self._watch_interval = watch_interval_s
        self._task: asyncio.Task[None] | None = None
        self._listener: threading.Thread | None = None  # PostgreSQL: LISTEN thread
        self._stop_listening = threading.Event()
        self.listening = threading.Event()  # PostgreSQL: set while LISTEN is active
        self.refresh()

    # the view ----------------------------------------------------------------------------

    def active(self) -> list[QuarantineRecord]:
        now = self._clock.now()
        return sorted(
            (r for r in self._active.values() if r.active(now)), key=lambda r: r.spiffe_id
        )

    # writing -----------------------------------------------------------------------------

    def add(
        self,
        spiffe_id: str,
        *,
        reason: str,
        ttl_s: int | None = None,
        rule: str | None = None,
        event_id: str | None = None,
        created_by: str = "policy",
        trace_id: str | None = None,
        wait_audit: bool = True,
    ) -> QuarantineRecord:
        """Quarantine ``spiffe_id`` for ``ttl_s`` seconds (default runtime.quarantine_ttl_s).

        The quarantine is enforced before its audit record is written (it only denies);
        ``wait_audit`` then waits for that record to be durable (CLI and API callers: a
        failure raises AuditError). The responder passes False: its next event must not wait
        behind this one's record; a failure is logged and the audit log reports itself
        unhealthy.

        An ID already quarantined keeps its record when that one lasts at least as long;
        otherwise a new record with the later expiry replaces it."""
        spiffe_id = check_spiffe_id(spiffe_id)
        ttl = self._default_ttl if ttl_s is None else ttl_s
        if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
            raise QuarantineError(f"ttl_s: must be a positive number of seconds, got {ttl!r}")
        if not reason or not reason.strip():
            raise QuarantineError("reason: must not be empty")
        now = self._clock.now()
        expires = now + timedelta(seconds=ttl)
        current = self.is_quarantined(spiffe_id)
        if current is not None and current.expires_at >= expires:
            return current
        with self._db.begin() as conn:
            revision = _bump(conn, self._clock)
            new_id = conn.execute(
                runtime_quarantine.insert()
                .values(
                    spiffe_id=spiffe_id,
                    reason=reason,
                    rule=rule,
                    event_id=event_id,
                    created_by=created_by,
                    created_at=now,
                    expires_at=expires,
                    revision=revision,
                )
                .returning(runtime_quarantine.c.id)
            ).scalar_one()
        record = QuarantineRecord(
            new_id, spiffe_id, reason, rule, event_id, created_by, now, expires, None, None,
            revision,
        )  # fmt: skip
        log.info(
            "event=runtime.quarantine.added spiffe_id=%s rule=%s expires_at=%s",
            spiffe_id,
            rule,
            expires.isoformat(),
        )
        # enforce first (a quarantine only denies), then wait for its audit record
        self._apply(QuarantineChange("added", record, revision))
        self._audit_change("added", record, trace_id, wait=wait_audit)
        return record

    def release(self, spiffe_id: str, *, released_by: str = "cli") -> QuarantineRecord:
        """End every active quarantine of ``spiffe_id``; QuarantineNotFoundError when none."""
        spiffe_id = check_spiffe_id(spiffe_id)
        now = self._clock.now()
        with self._db.begin() as conn:
            rows = conn.execute(
                select(runtime_quarantine)
                .where(runtime_quarantine.c.spiffe_id == spiffe_id)
                .where(runtime_quarantine.c.released_at.is_(None))
                .where(runtime_quarantine.c.expires_at > now)
                .order_by(runtime_quarantine.c.expires_at.desc())
            ).all()
            if not rows:
                raise QuarantineNotFoundError(f"{spiffe_id} is not quarantined")
            revision = _bump(conn, self._clock)
            conn.execute(
                update(runtime_quarantine)
                .where(runtime_quarantine.c.id.in_([r.id for r in rows]))
                .values(released_at=now, released_by=released_by, revision=revision)
            )
        latest = _row(rows[0])
        record = QuarantineRecord(
            latest.id, latest.spiffe_id, latest.reason, latest.rule, latest.event_id,
            latest.created_by, latest.created_at, latest.expires_at, now, released_by, revision,
        )  # fmt: skip
        log.info("event=runtime.quarantine.released spiffe_id=%s by=%s", spiffe_id, released_by)
        self._audit_change("released", record, None)
        self._apply(QuarantineChange("released", record, revision))
        return record

    def list(self, *, include_inactive: bool = False, limit: int = 1000) -> list[QuarantineRecord]:
        """From the database (not the cache): active ones, or the whole history."""
        now = self._clock.now()
        query = select(runtime_quarantine).order_by(runtime_quarantine.c.id.desc()).limit(limit)
        if not include_inactive:
            query = query.where(runtime_quarantine.c.released_at.is_(None)).where(
                runtime_quarantine.c.expires_at > now
            )
        with self._db.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).all()]

    # cache maintenance --------------------------------------------------------------------

    def stored_revision(self) -> int:
        with self._db.engine.connect() as conn:
            value = conn.execute(
                select(runtime_state.c.value).where(runtime_state.c.key == REVISION_KEY)
            ).scalar()
        return int(value) if value is not None else 0

    def refresh(self) -> bool:
        """Reload the active set when the stored revision moved; emit the differences."""
        stored = self.stored_revision()
        if stored == self._revision:
            return False
        now = self._clock.now()
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                select(runtime_quarantine)
                .where(runtime_quarantine.c.released_at.is_(None))
                .where(runtime_quarantine.c.expires_at > now)
                .order_by(runtime_quarantine.c.expires_at)
            ).all()
            released = conn.execute(
                select(runtime_quarantine).where(runtime_quarantine.c.revision > self._revision)
                .where(runtime_quarantine.c.released_at.is_not(None))
            ).all() if self._revision >= 0 else []  # fmt: skip
        fresh: dict[str, QuarantineRecord] = {}
        for row in rows:  # ordered by expiry: the longest-lasting record wins
            fresh[row.spiffe_id] = _row(row)
        with self._lock:
            old, self._active, first = self._active, fresh, self._revision < 0
            self._revision = stored
        if not first:
            for spiffe_id, record in fresh.items():
                if old.get(spiffe_id) != record:
                    self._subscribers.emit(QuarantineChange("added", record, stored))
            for row in released:
                if row.spiffe_id not in fresh:
                    self._subscribers.emit(QuarantineChange("released", _row(row), stored))
        return True

    def _audit_change(
        self, action: str, record: QuarantineRecord, trace_id: str | None, *, wait: bool = True
    ) -> None:
        if self._audit is None:
            return
        payload: dict[str, Any] = {"action": action, **record.to_json()}
        if trace_id:
            payload["trace_id"] = trace_id
        written = self._audit.append(AUDIT_KIND, payload)
        if wait:
            written.result(timeout=30)
        else:
            written.add_done_callback(log_audit_failure)

    # revision watch (writes by other processes) -------------------------------------------

    async def start(self) -> None:
        if self._db.dialect == "postgresql":
            if self._listener is None:
                self._stop_listening.clear()
                self._listener = threading.Thread(
                    target=self._listen, name="quarantine-listen", daemon=True
                )
                self._listener.start()
        elif self._task is None:
            self._task = asyncio.create_task(self._watch(), name="quarantine-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            self._stop_listening.set()
            await asyncio.to_thread(self._wake_listener)
            await asyncio.to_thread(self._listener.join, self._watch_interval + 5)
            self._listener = None

    def _wake_listener(self) -> None:
        """Notify the channel so the listener sees its stop flag now rather than at its next
        poll (other replicas listening on the channel only refresh)."""
        with contextlib.suppress(Exception), self._db.engine.connect() as conn:
            conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, "stop")))
            conn.commit()

    def ready(self) -> bool:
        return self._revision >= 0

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._watch_interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                log.warning("event=runtime.quarantine.refresh_failed error=%s", exc)

    def _listen(self) -> None:
        """PostgreSQL: ``LISTEN`` on ``NOTIFY_CHANNEL`` (every change notifies in its own
        transaction, so the notice arrives at commit) and refresh on each notice: another
        replica's quarantine reaches this one's gates in milliseconds, not a poll interval.
        The interval stays as a fallback poll, and a lost connection is reopened (with a
        refresh, so nothing committed meanwhile is missed)."""
        import psycopg

        dsn = self._db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop_listening.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.refresh()
                    self.listening.set()
                    while not self._stop_listening.is_set():
                        for _ in conn.notifies(timeout=self._watch_interval, stop_after=1):
                            pass
                        self.refresh()
            except Exception as exc:
                log.warning("event=runtime.quarantine.listen_failed error=%s", exc)
                self._stop_listening.wait(1.0)
            finally:
                self.listening.clear()


def _bump(conn: Connection, clock: Clock) -> int:
    # FOR UPDATE serialises concurrent writers on PostgreSQL; SQLite has one writer anyway.
    current = conn.execute(
        select(runtime_state.c.value).where(runtime_state.c.key == REVISION_KEY).with_for_update()
    ).scalar()
    revision = (int(current) if current is not None else 0) + 1
    put_in(conn, REVISION_KEY, revision, clock)
    if conn.dialect.name == "postgresql":  # delivered to listeners when this transaction commits
        conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, str(revision))))
    return revision
