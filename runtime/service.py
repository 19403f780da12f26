"""``open_runtime``: the runtime subsystem assembled from settings, for zerogate/server.py.

    rt = open_runtime(settings, db, audit, policy=policy,
                      entries=identity.entries, denylist=identity.deny_list)
    app.include_router(rt.router(caller=mtls_caller(identity, clock)))  # /v1/runtime/...
    gate = AnyGate(identity.deny_list, rt.quarantine)      # identity.workload_cache gate
    rt.quarantine.subscribe(lambda change: ...)            # e.g. wake Workload API streams
    inference gets rt.quarantine (a runtime.quarantine.QuarantineView)
    await rt.start(); ...; await rt.stop()

Without ``policy`` and ``entries`` there is no response (events are stored and audited only)
and submitters are checked against ``spiffe://<trust domain>/falco``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter

from identity.denylist import DenyList
from identity.entries import EntryRepository
from runtime.actions import Responder, WebhookAlerter
from runtime.api import Caller, SubmitAuthorizer, allow_list, policy_authorizer, router
from runtime.correlate import Correlator
from runtime.events import EventStore
from runtime.ingest import EventIngestor
from runtime.kube import KubernetesPods
from runtime.quarantine import QuarantineService
from runtime.sources.nats import NatsConsumer
from zerogate.audit import AuditLog
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.store import Database

log = logging.getLogger(__name__)


@dataclass
class RuntimeService:
    settings: Settings
    store: EventStore
    ingestor: EventIngestor
    quarantine: QuarantineService
    responder: Responder | None = None
    nats: NatsConsumer | None = None
    policy: Any = None
    _started: bool = field(default=False, init=False)

    def router(self, *, caller: Caller, authorize: SubmitAuthorizer | None = None) -> APIRouter:
        if authorize is None:
            td = self.settings.trust_domain
            authorize = (
                policy_authorizer(self.policy, td)
                if self.policy is not None
                else allow_list(f"spiffe://{td}/falco")
            )
        return router(
            ingestor=self.ingestor,
            caller=caller,
            authorize=authorize,
            quarantine=self.quarantine,
            max_body_bytes=self.settings.runtime.max_body_bytes,
        )

    async def start(self) -> None:
        recovered = self.ingestor.recover()
        if recovered:
            log.info("event=runtime.recovered count=%d", recovered)
        self.ingestor.start()
        await self.quarantine.start()
        if self.responder is not None:
            await self.responder.start()
        if self.nats is not None:
            await self.nats.start()
        self._started = True

    async def stop(self) -> None:
        if self.nats is not None:
            await self.nats.stop()
        self.ingestor.close()
        if self.responder is not None:
            await self.responder.stop()
        await self.quarantine.stop()
        self._started = False

    def ready(self) -> bool:
        parts = [self.ingestor.ready(), self.quarantine.ready()]
        if self.responder is not None:
            parts.append(self.responder.ready())
        if self.nats is not None:
            parts.append(self.nats.ready())
        return self._started and all(parts)


def open_runtime(
    settings: Settings,
    db: Database,
    audit: AuditLog,
    *,
    policy: Any = None,
    entries: EntryRepository | None = None,
    denylist: DenyList | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> RuntimeService:
    rs = settings.runtime
    store = EventStore(db, dedup_window_s=rs.dedup_window_s, clock=clock)
    ingestor = EventIngestor(store, audit)
    quarantine = QuarantineService(db, clock=clock, audit=audit, default_ttl_s=rs.quarantine_ttl_s)
    responder = None
    if policy is not None and entries is not None:
        responder = Responder(
            store=store,
            correlator=Correlator(entries),
            policy=policy,
            quarantine=quarantine,
            audit=audit,
            entries=entries,
            denylist=denylist,
            alerter=WebhookAlerter(rs.alert_webhook) if rs.alert_webhook else None,
            pods=KubernetesPods.in_cluster() if rs.kubernetes_actions else None,
            clock=clock,
            throttle_s=rs.action_throttle_s,
        )
        ingestor.subscribe(responder.on_events)
    nats_source = None
    if rs.nats_url:
        nats_source = NatsConsumer(
            ingestor,
            url=rs.nats_url,
            stream=rs.nats_stream,
            subjects=list(rs.nats_subjects),
            durable=rs.nats_durable,
        )
    return RuntimeService(settings, store, ingestor, quarantine, responder, nats_source, policy)
