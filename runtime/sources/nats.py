"""NATS JetStream: a durable pull consumer over what Falcosidekick publishes.

Falcosidekick's NATS output publishes each alert (its webhook JSON, with ``uuid``) to core NATS
subject ``falco.<priority>.<rule slug>`` (falcosidekick ``outputs/nats.go``). A JetStream stream
(``runtime.nats_stream``, subjects ``runtime.nats_subjects``, default ``falco.>``) captures
them; this source creates it when missing, and a durable consumer (``runtime.nats_durable``,
explicit acks) that survives restarts.

At-least-once: a fetched batch is validated, handed to the ingestor, and each message is acked
only after the ingestor resolved (stored + audited). A crash before the ack makes JetStream
redeliver after ``ack_wait``; the redelivery has the same event id and is recorded as a
duplicate, not a second event. A message that is not a valid alert is terminated (``+TERM``:
never redelivered) and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from runtime.errors import InvalidAlertError, SourceError
from runtime.falco import FalcoAlert, parse_alert_json
from runtime.ingest import EventIngestor

log = logging.getLogger(__name__)


@dataclass
class NatsStats:
    received: int = 0
    stored: int = 0
    duplicate: int = 0
    invalid: int = 0
    redelivered: int = 0


class NatsConsumer:
    """JetStream durable pull consumer; a ``runtime.sources.base.Source``."""

    def __init__(
        self,
        ingestor: EventIngestor,
        *,
        url: str,
        stream: str,
        subjects: list[str],
        durable: str,
        create_stream: bool = True,
        batch: int = 256,
        fetch_timeout_s: float = 1.0,
        ack_wait_s: float = 30.0,
    ) -> None:
        if not url:
            raise SourceError("runtime.nats_url is empty: the NATS source is off")
        if not subjects:
            raise SourceError("runtime.nats_subjects is empty")
        self.name = f"nats:{stream}/{durable}"
        self._ingestor = ingestor
        self._url = url
        self._stream = stream
        self._subjects = subjects
        self._durable = durable
        self._create_stream = create_stream
        self._batch = batch
        self._fetch_timeout = fetch_timeout_s
        self._ack_wait = ack_wait_s
        self._nc: NatsClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._ready = False
        self.stats = NatsStats()

    async def start(self) -> None:
        if self._task is not None:
            return
        try:
            self._nc = await nats.connect(self._url, connect_timeout=5, max_reconnect_attempts=-1)
        except Exception as exc:
            raise SourceError(f"cannot connect to NATS at {self._url}: {exc}") from None
        js = self._nc.jetstream()
        await self._ensure(js)
        sub = await js.pull_subscribe_bind(durable=self._durable, stream=self._stream)
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(sub), name=self.name)
        self._ready = True
        log.info("event=runtime.nats.started stream=%s durable=%s", self._stream, self._durable)

    async def _ensure(self, js: nats.js.JetStreamContext) -> None:
        try:
            await js.stream_info(self._stream)
        except NotFoundError:
            if not self._create_stream:
                raise SourceError(f"JetStream stream {self._stream!r} does not exist") from None
            await js.add_stream(StreamConfig(name=self._stream, subjects=self._subjects))
        config = ConsumerConfig(
            durable_name=self._durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait,
            max_ack_pending=max(1000, self._batch * 4),
        )
        if len(self._subjects) == 1 and self._subjects[0] != ">":
            config.filter_subject = self._subjects[0]
        try:
            await js.consumer_info(self._stream, self._durable)
        except NotFoundError:
            await js.add_consumer(self._stream, config)

    async def stop(self) -> None:
        """Finish (store + ack) the batch in hand, then disconnect."""
        self._stopping.set()
        self._ready = False
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=5)  # the acks of the last batch reach the server
            await self._nc.close()
            self._nc = None

    def ready(self) -> bool:
        return self._ready

    async def _loop(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(self._batch, timeout=self._fetch_timeout)
            except NatsTimeoutError:
                continue
            except Exception as exc:  # connection trouble: nats-py reconnects underneath
                log.warning("event=runtime.nats.fetch_failed error=%s", exc)
                await asyncio.sleep(self._fetch_timeout)
                continue
            try:
                await self.handle(msgs)
            except Exception as exc:  # not acked: JetStream redelivers after ack_wait
                log.error("event=runtime.nats.batch_failed count=%d error=%s", len(msgs), exc)
                await asyncio.sleep(self._fetch_timeout)

    async def handle(self, msgs: list[Msg]) -> None:
        """Validate, store, then ack a fetched batch."""
        good: list[tuple[Msg, FalcoAlert]] = []
        for msg in msgs:
            self.stats.received += 1
            if msg.metadata.num_delivered > 1:
                self.stats.redelivered += 1
            try:
                good.append((msg, parse_alert_json(msg.data)))
            except InvalidAlertError as exc:
                self.stats.invalid += 1
                log.warning("event=runtime.nats.invalid subject=%s error=%s", msg.subject, exc)
                await msg.term()
        if not good:
            return
        results = await self._ingestor.submit_async([alert for _msg, alert in good], "nats")
        for (msg, _alert), result in zip(good, results, strict=True):
            if result.status == "stored":
                self.stats.stored += 1
            else:
                self.stats.duplicate += 1
            await msg.ack()
