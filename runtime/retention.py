"""Event retention: events last seen more than ``runtime.event_retention_s`` ago are deleted.

Without it ``runtime_event`` grows by every alert Falco sends, forever (at the ingestion rates
this service is built for, millions of rows a day). SPIRE prunes its registration-entry
events the same way (``prune_events_older_than``). What goes:

- rows whose ``last_seen`` is older than the retention, oldest first, in transactions of at
  most ``batch`` rows (``EventStore.prune``), with a pause between them so the writers that
  queue on the same lock (ingestion) go first;
- never the audit records: each deleting transaction appends one ``runtime.events_pruned``
  record (count, row id range, cutoff) to the same chain, in the same transaction, so the
  trail shows what was removed and when; each event's own ``runtime.event`` record stays.

The retention must be at least ``runtime.dedup_window_s`` (settings refuse less): a repeat
within the window must still find its first occurrence. ``0`` keeps events forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from sqlalchemy import Connection

from runtime.events import EventStore, PrunedBatch
from zerogate.audit import AuditLog
from zerogate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

AUDIT_KIND = "runtime.events_pruned"


class EventRetention:
    """Prunes ``runtime_event`` every ``interval_s`` seconds once started."""

    def __init__(
        self,
        store: EventStore,
        audit: AuditLog,
        *,
        retention_s: int,
        interval_s: float = 60.0,
        batch: int = 500,
        pause_s: float = 0.01,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._store = store
        self._audit = audit
        self._retention = timedelta(seconds=retention_s)
        self._interval = interval_s
        self._batch = batch
        self._pause = pause_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.pruned = 0

    def prune_once(self) -> int:
        """Delete what is past retention now; returns how many rows went."""
        cutoff = self._clock.now() - self._retention

        def record(conn: Connection, done: PrunedBatch) -> None:
            self._audit.write_in(
                conn,
                AUDIT_KIND,
                [
                    {
                        "count": done.rows,
                        "first_row": done.first_row,
                        "last_row": done.last_row,
                        "last_seen_before": done.older_than.isoformat(),
                    }
                ],
            )

        count = 0
        while True:
            done = self._store.prune(cutoff, batch=self._batch, audit=record)
            count += done
            if done < self._batch:
                break
            time.sleep(self._pause)  # the lock is fair to nobody: let ingestion have it
        if count:
            self.pruned += count
            log.info("event=runtime.events_pruned count=%d before=%s", count, cutoff.isoformat())
        return count

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="runtime-event-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.prune_once)
            except Exception as exc:  # the database refused: events stay until next round
                log.error("event=runtime.events_prune_failed error=%s", exc)
            await asyncio.sleep(self._interval)
