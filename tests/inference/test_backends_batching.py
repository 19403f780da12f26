"""MicroBatcher behaviour with a plain Python forward function (inference/backends/batching.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio

from inference.backends.batching import MicroBatcher
from inference.errors import BackendUnavailableError


class Recorder:
    """forward(): squares numbers, records each batch; fails on a negative number."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, items: list[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(5)
        self.batches.append(list(items))
        if any(i < 0 for i in items):
            raise ValueError("negative input")
        return [i * i for i in items]


@pytest_asyncio.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def test_concurrent_requests_share_one_forward_pass(executor: ThreadPoolExecutor) -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, executor=executor, batch_max=64, batch_wait_ms=50)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))
    await batcher.stop()
    assert results == [[i * i, (i + 100) ** 2] for i in range(10)]
    assert len(forward.batches) == 1
    assert batcher.stats.batches == 1
    assert batcher.stats.items == 20
    assert batcher.stats.requests == 10


async def test_batch_max_is_respected_and_requests_are_never_split(
    executor: ThreadPoolExecutor,
) -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, executor=executor, batch_max=5, batch_wait_ms=50)
    batcher.start()
    sizes = [2, 2, 2, 3, 1, 4]
    requests = [list(range(10 * n, 10 * n + size)) for n, size in enumerate(sizes)]
    results = await asyncio.gather(*(batcher.submit(r) for r in requests))
    await batcher.stop()
    assert results == [[i * i for i in r] for r in requests]
    assert all(len(b) <= 5 for b in forward.batches)
    flat = [tuple(b) for b in forward.batches]
    for r in requests:  # each request's items sit together in one batch
        assert any(tuple(r) == b[k : k + len(r)] for b in flat for k in range(len(b)))


async def test_oversized_request_runs_alone(executor: ThreadPoolExecutor) -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, executor=executor, batch_max=4, batch_wait_ms=0)
    batcher.start()
    assert await batcher.submit(list(range(9))) == [i * i for i in range(9)]
    await batcher.stop()
    assert forward.batches == [list(range(9))]


async def test_wait_window_bounds_latency_of_a_lone_request(executor: ThreadPoolExecutor) -> None:
    batcher = MicroBatcher(Recorder(), executor=executor, batch_max=64, batch_wait_ms=30)
    batcher.start()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit([3]) == [9]
    elapsed = loop.time() - start
    await batcher.stop()
    assert 0.025 <= elapsed < 2.0


async def test_forward_error_reaches_every_caller_of_that_batch_only(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    forward = Recorder(gate)
    batcher = MicroBatcher(forward, executor=executor, batch_max=2, batch_wait_ms=20)
    batcher.start()
    bad = asyncio.ensure_future(batcher.submit([-1]))
    also = asyncio.ensure_future(batcher.submit([2]))
    later = asyncio.ensure_future(batcher.submit([3, 4]))
    await asyncio.sleep(0.05)
    gate.set()
    with pytest.raises(ValueError, match="negative"):
        await bad
    with pytest.raises(ValueError, match="negative"):
        await also
    assert await later == [9, 16]
    await batcher.stop()


async def test_stop_fails_waiting_requests(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    batcher = MicroBatcher(Recorder(gate), executor=executor, batch_max=1, batch_wait_ms=0)
    batcher.start()
    running = asyncio.ensure_future(batcher.submit([1]))
    waiting = asyncio.ensure_future(batcher.submit([2]))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.05)
    gate.set()
    await stopping
    for fut in (running, waiting):
        with pytest.raises(BackendUnavailableError):
            await fut
    with pytest.raises(BackendUnavailableError, match="not running"):
        await batcher.submit([5])


def test_bad_settings_are_refused() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    with pytest.raises(ValueError, match="batch_max"):
        MicroBatcher(Recorder(), executor=pool, batch_max=0, batch_wait_ms=1)
    with pytest.raises(ValueError, match="batch_wait_ms"):
        MicroBatcher(Recorder(), executor=pool, batch_max=1, batch_wait_ms=-1)
    pool.shutdown()
