"""``RemoteQuarantineView``: a remote inference gate's live copy of the quarantine state.

It holds ``GET /v1/runtime/quarantine/watch`` open (server-sent events, WHATWG HTML
"Server-sent events"): the ``snapshot`` event replaces the whole state, each ``change`` event
applies one add/release, so a gate learns of a quarantine as soon as the control plane writes
it. On a dropped connection it reconnects (backoff up to ``max_backoff_s``) and the new snapshot
reconciles anything missed. It implements the ``QuarantineView`` protocol of
``runtime/quarantine.py``; ``stale()`` tells a gate that it has had no stream for too long (a
gate may then fail closed).

The HTTP client comes from ``client_factory`` so the server can hand in one that presents the
gate's X.509-SVID (mTLS) and trusts the zerogate bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from runtime.quarantine import ActiveQuarantines, QuarantineChange, QuarantineRecord
from zerogate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

WATCH_PATH = "/v1/runtime/quarantine/watch"


class RemoteQuarantineView(ActiveQuarantines):
    def __init__(
        self,
        base_url: str,
        *,
        client_factory: Callable[[], httpx.AsyncClient] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._url = base_url.rstrip("/") + WATCH_PATH
        # read timeout above the server's 15 s keepalive: a silent dead connection is noticed
        self._factory = client_factory or (
            lambda: httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0))
        )
        super().__init__(clock)
        self._max_backoff = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._last_contact = 0.0

    # QuarantineView -----------------------------------------------------------------------

    def stale(self, max_age_s: float) -> bool:
        return time.monotonic() - self._last_contact > max_age_s

    # lifecycle ----------------------------------------------------------------------------

    async def start(self, wait_s: float = 10.0) -> None:
        """Connect and wait for the first snapshot (TimeoutError after ``wait_s``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="quarantine-remote")
        await asyncio.wait_for(self._connected.wait(), timeout=wait_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def ready(self) -> bool:
        return self._connected.is_set()

    # the stream ---------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._factory() as client, client.stream("GET", self._url) as reply:
                    if reply.status_code != 200:
                        body = (await reply.aread())[:200]
                        raise httpx.HTTPStatusError(
                            f"watch answered {reply.status_code}: {body!r}",
                            request=reply.request,
                            response=reply,
                        )
                    backoff = 0.1
                    await self._consume(reply)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event=runtime.quarantine.watch_lost url=%s error=%s", self._url, exc)
            self._connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _consume(self, reply: httpx.Response) -> None:
        event, data = "message", list[str]()
        async for line in reply.aiter_lines():
            self._last_contact = time.monotonic()
            if line == "":
                if data:
                    self._dispatch(event, json.loads("\n".join(data)))
                event, data = "message", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)

    def _dispatch(self, event: str, payload: Any) -> None:
        if event == "snapshot":
            fresh = {}
            for item in payload["quarantines"]:
                record = QuarantineRecord.from_json(item)
                fresh[record.spiffe_id] = record
            with self._lock:
                old, self._active = self._active, fresh
                self._revision = int(payload["revision"])
            for spiffe_id, record in fresh.items():
                if old.get(spiffe_id) != record:
                    self._subscribers.emit(QuarantineChange("added", record, self._revision))
            for spiffe_id, record in old.items():
                if spiffe_id not in fresh:
                    self._subscribers.emit(QuarantineChange("released", record, self._revision))
            self._connected.set()
        elif event == "change":
            record = QuarantineRecord.from_json(payload["record"])
            self._apply(QuarantineChange(payload["action"], record, int(payload["revision"])))
