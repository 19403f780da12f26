"""Big request bodies parsed in worker processes, so the serving interpreter only stores.

Decoding, validating and identifying an alert (its event id is a SHA-256 of its canonical
form) costs about as much interpreter time as storing and auditing it, and both ran under one
interpreter lock: batches were bound to one core. ``ParsePool`` hands bodies above
``inline_bytes`` to ``processes`` worker processes (``runtime.parse_processes``). A worker
returns ``FalcoAlert.parts()`` for each valid alert and the field and reason for each bad one;
the alerts are rebuilt here without decoding them again (``raw`` is decoded when something
reads it: the responder does, storage and audit do not). An NDJSON body is cut at line
boundaries into pieces of at least ``chunk_bytes``, so several workers share one big batch.

The rules, errors and line numbers are those of in-process parsing
(``runtime.sources.http.parse_body``); the tests compare the two. If a worker dies or the
pool cannot start, the failure is logged (``event=runtime.parse_pool.failed``), that body is
parsed in this process (the same validation, only slower), and so are the bodies of the next
``retry_after_s`` (30 s), so that a pool that cannot start does not cost every batch a start
attempt; then a new pool is tried.

Workers use the ``spawn`` start method: forking a process that runs gRPC, OPA's Go runtime and
several threads is unsafe.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, cast

from runtime.errors import InvalidAlertError
from runtime.falco import AlertParts, FalcoAlert
from runtime.sources.http import (
    EMPTY_NDJSON,
    JSON_TYPES,
    NDJSON_TYPES,
    BodyKind,
    Item,
    ParsedBody,
    media_type,
    ndjson_items,
    parse_body,
)

log = logging.getLogger(__name__)

PackedItem = tuple[int, AlertParts | None, str, str]
"""(index, parts of a valid alert or None, error field, error reason)"""
Packed = tuple[str, list[PackedItem]] | tuple[str, str, str]
"""("single" | "array" | "ndjson", items), or ("invalid", field, reason) for the whole body"""


def default_processes() -> int:
    """One worker per core beyond the first, at most 4 (the storing interpreter keeps one)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _pack(items: list[Item]) -> list[PackedItem]:
    out: list[PackedItem] = []
    for item in items:
        if item.alert is not None:
            out.append((item.index, item.alert.parts(), "", ""))
        else:
            err = item.error
            out.append((item.index, None, err.field if err else "", err.reason if err else ""))
    return out


def _unpack(items: list[PackedItem]) -> list[Item]:
    return [
        Item(index, FalcoAlert.from_parts(parts), None)
        if parts is not None
        else Item(index, None, InvalidAlertError(field, reason))
        for index, parts, field, reason in items
    ]


def parse_in_worker(body: bytes, ndjson: bool, first_line: int) -> Packed:
    """Runs in a worker: parse ``body`` (a whole JSON body, or NDJSON lines numbered from
    ``first_line``) and pack the result for the trip back."""
    try:
        if ndjson:
            return ("ndjson", _pack(ndjson_items(body, first_line)))
        parsed = parse_body(body, "application/json")
        return (parsed.kind, _pack(parsed.items))
    except InvalidAlertError as exc:
        return ("invalid", exc.field, exc.reason)


def _ready() -> int:
    return os.getpid()


def watch_parent(parent: int, interval_s: float = 0.5) -> None:
    """Worker initializer: exit once the serving process is gone. A parent killed with
    SIGKILL (or one whose signal handler re-raises SIGTERM, as uvicorn's does) cannot shut
    its pool down, and each worker holds the call queue's write end, so it would otherwise
    wait for work forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(0)

    threading.Thread(target=watch, name="parse-pool-parent-watch", daemon=True).start()


def split_lines(body: bytes, pieces: int) -> list[tuple[bytes, int]]:
    """``body`` cut at newlines into at most ``pieces`` parts: (part, number of its first
    line)."""
    out: list[tuple[bytes, int]] = []
    start, line = 0, 1
    size = len(body)
    for k in range(1, pieces):
        cut = body.find(b"\n", max(start, size * k // pieces))
        if cut < 0:
            break
        out.append((body[start:cut], line))
        line += body.count(b"\n", start, cut + 1)
        start = cut + 1
    out.append((body[start:], line))
    return out


class ParsePool:
    """Parses big HTTP bodies in worker processes. Thread-safe for ``parse`` from one event
    loop; ``processes=0`` parses everything in this process."""

    def __init__(
        self,
        processes: int,
        *,
        inline_bytes: int = 64 << 10,
        chunk_bytes: int = 256 << 10,
        retry_after_s: float = 30.0,
    ) -> None:
        self.processes = processes
        self.inline_bytes = inline_bytes
        self.chunk_bytes = chunk_bytes
        self.retry_after_s = retry_after_s
        self._executor: Executor | None = None
        self._retry_at = 0.0  # after a failure, no new pool before this (time.monotonic)
        self.stats = {"pooled": 0, "inline": 0, "fallback": 0}

    def start(self) -> None:
        """Start the workers now (each takes about a second to import), not on the first
        batch."""
        if self.processes <= 0:
            return
        try:
            executor = self._pool()
            for future in [executor.submit(_ready) for _ in range(self.processes)]:
                future.result(timeout=60)
            log.info("event=runtime.parse_pool.started processes=%d", self.processes)
        except Exception as exc:  # batches are parsed in-process until a pool starts
            log.error("event=runtime.parse_pool.failed stage=start error=%r", exc)
            self._failed()

    def close(self) -> None:
        """Stop the workers and wait for them (each finishes the body it has), so nothing
        of the pool outlives the caller's shutdown."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=watch_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    def _failed(self) -> None:
        """Drop the pool; the next one is tried ``retry_after_s`` from now, so a pool that
        cannot start does not cost every batch a start attempt."""
        self.stats["fallback"] += 1
        self._retry_at = time.monotonic() + self.retry_after_s
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def parse(self, body: bytes, content_type: str | None) -> ParsedBody:
        """``parse_body(body, content_type)``, in the workers when ``body`` is big."""
        kind = media_type(content_type)
        ndjson = kind in NDJSON_TYPES
        if len(body) <= self.inline_bytes or not (ndjson or kind in JSON_TYPES or not kind):
            self.stats["inline"] += 1
            return parse_body(body, content_type)  # small, or refused by its media type
        if self.processes <= 0 or time.monotonic() < self._retry_at:
            self.stats["inline"] += 1
            # big and no workers: keep the event loop answering others meanwhile
            return await asyncio.to_thread(parse_body, body, content_type)
        if ndjson:
            pieces = max(1, min(self.processes, len(body) // self.chunk_bytes))
            parts = split_lines(body, pieces)
        else:
            parts = [(body, 1)]
        loop = asyncio.get_running_loop()
        try:
            executor = self._pool()
            packed: list[Any] = await asyncio.gather(
                *(
                    loop.run_in_executor(executor, parse_in_worker, part, ndjson, first)
                    for part, first in parts
                )
            )
        except Exception as exc:  # a dead worker, a pool that cannot start: parse here
            log.error("event=runtime.parse_pool.failed stage=parse error=%r", exc)
            self._failed()
            return await asyncio.to_thread(parse_body, body, content_type)
        self.stats["pooled"] += 1
        return _merge(packed)


def _merge(packed: list[Any]) -> ParsedBody:
    items: list[Item] = []
    kind = "ndjson"
    for result in packed:
        if result[0] == "invalid":
            raise InvalidAlertError(result[1], result[2])
        kind = result[0]
        items.extend(_unpack(result[1]))
    if kind == "ndjson" and not items:
        raise InvalidAlertError("", EMPTY_NDJSON)
    return ParsedBody(cast(BodyKind, kind), items)
