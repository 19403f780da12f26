"""Dynamic micro-batching: many small requests, one forward pass.

Requests are queued; one worker task takes the first waiting request, then keeps collecting
until ``batch_max`` items are gathered or ``batch_wait_ms`` has passed since the first one,
runs ``forward`` once over all their items in a worker thread (so the event loop stays free
to accept more requests meanwhile), and hands each caller its slice of the results. A request
is never split across batches; one larger than ``batch_max`` is run on its own and ``forward``
is expected to chunk it. This is the scheme of TGI's and Triton's dynamic batchers, reduced to
one queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference.errors import BackendUnavailableError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class BatchStats:
    """Counters for tests, benchmarks and metrics."""

    batches: int = 0
    items: int = 0
    requests: int = 0
    largest_batch: int = 0


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[T, R]):
    """Collects ``submit`` calls into batches for ``forward(items) -> results`` (same order,
    same length). ``forward`` runs on ``executor``; use a one-thread executor to keep forward
    passes of one model from running concurrently."""

    def __init__(
        self,
        forward: Callable[[list[T]], list[R]],
        *,
        executor: Executor,
        batch_max: int,
        batch_wait_ms: float,
        name: str = "batcher",
    ) -> None:
        if batch_max < 1:
            raise ValueError(f"batch_max must be >= 1, got {batch_max}")
        if batch_wait_ms < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        self._forward = forward
        self._executor = executor
        self._batch_max = batch_max
        self._wait_s = batch_wait_ms / 1000.0
        self._name = name
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._carry: _Pending[T, R] | None = None  # took from the queue, opens the next batch
        self._inflight: list[_Pending[T, R]] = []
        self.stats = BatchStats()

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name=f"{self._name}-worker"
            )

    async def stop(self) -> None:
        worker, self._worker = self._worker, None
        # the batch being computed is abandoned too: its callers must not wait forever
        left = [*self._inflight, *([self._carry] if self._carry is not None else [])]
        self._inflight, self._carry = [], None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(
                    BackendUnavailableError(f"{self._name} stopped before serving the request")
                )

    async def submit(self, items: Sequence[T]) -> list[R]:
        if self._worker is None:
            raise BackendUnavailableError(f"{self._name} is not running")
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(items, future))
        return await future

    async def _collect(self) -> list[_Pending[T, R]]:
        first, self._carry = self._carry or await self._queue.get(), None
        batch = [first]
        count = len(first.items)
        deadline = time.monotonic() + self._wait_s
        while count < self._batch_max:
            # take what is already waiting without yielding to the timer
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            else:
                nxt = self._queue.get_nowait()
            if count + len(nxt.items) > self._batch_max:
                # does not fit: it opens the next batch (requests are never split)
                self._carry = nxt
                break
            batch.append(nxt)
            count += len(nxt.items)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            items: list[T] = [item for p in live for item in p.items]
            self._inflight = live
            try:
                results = await loop.run_in_executor(self._executor, self._forward, items)
                if len(results) != len(items):
                    raise RuntimeError(
                        f"forward returned {len(results)} results for {len(items)} items"
                    )
            except Exception as exc:
                log.warning(
                    "event=batch.failed batcher=%s items=%d error=%s", self._name, len(items), exc
                )
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            finally:
                self._inflight = []
            self.stats.batches += 1
            self.stats.items += len(items)
            self.stats.requests += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(items))
            offset = 0
            for p in live:
                n = len(p.items)
                if not p.future.done():
                    p.future.set_result(results[offset : offset + n])
                offset += n
