"""NATS JetStream source against the real server on 127.0.0.1:4222: Falcosidekick-shaped
messages, a consumer restarted mid-stream, and a crash between store and ack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from runtime_corpus import corpus_raw

from runtime.ingest import EventIngestor
from runtime.sources.nats import NatsConsumer

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def stream() -> AsyncIterator[tuple[NatsClient, str, str]]:
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, allow_reconnect=False)
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"NATS unreachable at {NATS_URL}: {exc}")
    tag = uuid.uuid4().hex[:10]
    name, prefix = f"ZGTEST_{tag}", f"zgtest{tag}"
    try:
        yield nc, name, prefix
    finally:
        js = nc.jetstream()
        with contextlib.suppress(Exception):  # the test may have failed before creating it
            await js.delete_stream(name)
        await nc.close()


def _sidekick(n: int) -> dict[str, Any]:
    """What Falcosidekick publishes: the alert plus a uuid."""
    raw = corpus_raw()[n % len(corpus_raw())]
    return raw | {"uuid": str(uuid.UUID(int=n + 1))}


def _consumer(ingestor: EventIngestor, name: str, prefix: str, **kw: Any) -> NatsConsumer:
    return NatsConsumer(
        ingestor, url=NATS_URL, stream=name, subjects=[f"{prefix}.>"], durable="zerogate", **kw
    )


async def _publish(nc: NatsClient, prefix: str, numbers: range) -> None:
    js = nc.jetstream()
    for n in numbers:
        alert = _sidekick(n)
        await js.publish(f"{prefix}.{alert['priority'].lower()}.rule", json.dumps(alert).encode())


async def _until(predicate: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_restart_mid_stream_loses_and_duplicates_nothing(
    stream: tuple[NatsClient, str, str], ingestor: EventIngestor
) -> None:
    nc, name, prefix = stream
    first = _consumer(ingestor, name, prefix, batch=5, fetch_timeout_s=0.2)
    await first.start()  # creates the stream and the durable consumer
    # publish while the first consumer runs and stop it after its first 50: mid-stream
    publisher = asyncio.create_task(_publish(nc, prefix, range(1000)))
    await _until(lambda: first.stats.stored >= 50)
    await first.stop()
    await publisher
    assert first.stats.stored < 1000
    await _publish(nc, prefix, range(1000, 1100))
    second = _consumer(ingestor, name, prefix, batch=50, fetch_timeout_s=0.2)
    await second.start()
    await _until(lambda: ingestor.store.count() >= 1100, timeout=60)
    await asyncio.sleep(0.5)  # would any extra deliveries arrive?
    await second.stop()
    assert ingestor.store.count() == 1100
    assert first.stats.stored + second.stats.stored == 1100
    assert second.stats.duplicate == 0
    assert ingestor.store.event_ids() == {str(uuid.UUID(int=n + 1)) for n in range(1100)}


async def test_crash_between_store_and_ack_is_redelivered_and_deduplicated(
    stream: tuple[NatsClient, str, str], ingestor: EventIngestor
) -> None:
    nc, name, prefix = stream
    setup = _consumer(ingestor, name, prefix, ack_wait_s=1.0)
    await setup.start()
    await setup.stop()  # stream + durable consumer exist, nothing consumed
    await _publish(nc, prefix, range(20))
    # a "crashed" consumer: fetches, stores, dies before acking
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable="zerogate", stream=name)
    msgs = await sub.fetch(20, timeout=5)
    from runtime.falco import parse_alert_json

    ingestor.ingest([parse_alert_json(m.data) for m in msgs], "nats")
    await sub.unsubscribe()
    consumer = _consumer(ingestor, name, prefix, fetch_timeout_s=0.2)
    await consumer.start()
    await _until(lambda: consumer.stats.received >= 20)
    await consumer.stop()
    assert consumer.stats.redelivered == 20 and consumer.stats.duplicate == 20
    assert ingestor.store.count() == 20
    info = await js.consumer_info(name, "zerogate")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_invalid_message_is_terminated_and_counted(
    stream: tuple[NatsClient, str, str], ingestor: EventIngestor
) -> None:
    nc, name, prefix = stream
    consumer = _consumer(ingestor, name, prefix, fetch_timeout_s=0.2)
    await consumer.start()
    await nc.jetstream().publish(f"{prefix}.critical.x", b'{"rule": "no priority"}')
    await _publish(nc, prefix, range(1))
    await _until(lambda: consumer.stats.received >= 2)
    await consumer.stop()
    assert (consumer.stats.invalid, consumer.stats.stored) == (1, 1)
    info = await nc.jetstream().consumer_info(name, "zerogate")
    assert info.num_ack_pending == 0
