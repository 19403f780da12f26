"""``open_runtime``: the runtime subsystem assembled from settings, for zerogate/server.py.

    rt = open_runtime(settings, db, audit, policy=policy,
                      entries=identity.entries, denylist=identity.deny_list)
    rt.install(app, caller=mtls_caller(identity, clock))  # /v1/runtime/... + the fast path
    gate = AnyGate(identity.deny_list, rt.quarantine)      # identity.workload_cache gate
    rt.quarantine.subscribe(lambda change: ...)            # e.g. wake Workload API streams
    inference gets rt.quarantine (a runtime.quarantine.QuarantineView)
    await rt.start(); ...; await rt.stop()

Without ``policy`` and ``entries`` there is no response (events are stored and audited only)
and submitters are checked against ``spiffe://<trust domain>/falco``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI

from identity.denylist import DenyList
from identity.entries import EntryRepository
from runtime.actions import POLICY_PATH as RESPONSE_POLICY_PATH
from runtime.actions import Responder, WebhookAlerter
from runtime.api import (
    SUBMIT_POLICY_PATH,
    Caller,
    SubmitAuthorizer,
    SubmitFastPath,
    SubmitHandler,
    allow_list,
    policy_authorizer,
    router,
)
from runtime.correlate import Correlator
from runtime.events import EventStore
from runtime.ingest import EventIngestor
from runtime.kube import KubernetesPods
from runtime.quarantine import QuarantineService
from runtime.retention import EventRetention
from runtime.sources.nats import NatsConsumer
from runtime.sources.parse_pool import ParsePool, default_processes
from zerogate.audit import AuditLog
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.store import Database

log = logging.getLogger(__name__)


def urgent_rules(data: Any) -> frozenset[str]:
    """The rules the responder answers as if Critical: the policy data's
    ``runtime.revoke_rules`` (the rules the shipped policy revokes on, whatever their
    priority)."""
    runtime = data.get("runtime") if isinstance(data, dict) else None
    rules = runtime.get("revoke_rules") if isinstance(runtime, dict) else None
    return (
        frozenset(r for r in rules if isinstance(r, str))
        if isinstance(rules, list)
        else frozenset()
    )


@dataclass
class RuntimeService:
    settings: Settings
    store: EventStore
    ingestor: EventIngestor
    quarantine: QuarantineService
    responder: Responder | None = None
    nats: NatsConsumer | None = None
    policy: Any = None
    parser: ParsePool = field(default_factory=lambda: ParsePool(0))
    retention: EventRetention | None = None
    _started: bool = field(default=False, init=False)

    def _authorizer(self, authorize: SubmitAuthorizer | None) -> SubmitAuthorizer:
        if authorize is not None:
            return authorize
        td = self.settings.trust_domain
        if self.policy is not None:
            return policy_authorizer(self.policy, td)
        return allow_list(f"spiffe://{td}/falco")

    def install(
        self, app: FastAPI, *, caller: Caller, authorize: SubmitAuthorizer | None = None
    ) -> None:
        """Add the runtime routes to ``app`` and the fast path for ``POST /v1/runtime/falco``
        (runtime.api.SubmitFastPath); call before the app serves its first request."""
        authorize = self._authorizer(authorize)
        app.include_router(self.router(caller=caller, authorize=authorize))
        handler = SubmitHandler(
            ingestor=self.ingestor,
            caller=caller,
            authorize=authorize,
            max_body_bytes=self.settings.runtime.max_body_bytes,
            parser=self.parser,
        )
        app.add_middleware(SubmitFastPath, handler=handler)

    def router(self, *, caller: Caller, authorize: SubmitAuthorizer | None = None) -> APIRouter:
        authorize = self._authorizer(authorize)
        return router(
            ingestor=self.ingestor,
            caller=caller,
            authorize=authorize,
            quarantine=self.quarantine,
            max_body_bytes=self.settings.runtime.max_body_bytes,
            parser=self.parser,
        )

    async def start(self) -> None:
        prepare = getattr(self.policy, "prepare", None)  # policy.service.PolicyService
        if prepare is not None:
            # the submit check and the response policy, ready before the first Falco POST
            # and before every later policy revision goes live (PolicyEngine.prepare)
            await asyncio.to_thread(prepare, SUBMIT_POLICY_PATH, RESPONSE_POLICY_PATH)
        recovered = self.ingestor.recover()
        if recovered:
            log.info("event=runtime.recovered count=%d", recovered)
        self.ingestor.start()
        await asyncio.to_thread(self.parser.start)
        await self.quarantine.start()
        if self.responder is not None:
            await self.responder.start()
        if self.nats is not None:
            await self.nats.start()
        if self.retention is not None:
            await self.retention.start()
        self._started = True

    async def stop(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        if self.nats is not None:
            await self.nats.stop()
        self.ingestor.close()
        self.parser.close()
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
            backlog_max=rs.responder_backlog_max,
            log_empty_decisions=rs.log_empty_decisions,
            recent_max=rs.recent_events,
        )
        ingestor.subscribe(responder.on_events)
        # follow data.runtime.revoke_rules through the policy store (policy.store.PolicyStore:
        # ``revision``, ``snapshot.data``, ``on_change``), where the policy service has one
        source = getattr(policy, "store", None)
        if source is not None and hasattr(source, "on_change"):
            if source.revision is not None:
                responder.set_urgent_rules(urgent_rules(source.snapshot.data))
            source.on_change(lambda snap: responder.set_urgent_rules(urgent_rules(snap.data)))
    nats_source = None
    if rs.nats_url:
        nats_source = NatsConsumer(
            ingestor,
            url=rs.nats_url,
            stream=rs.nats_stream,
            subjects=list(rs.nats_subjects),
            durable=rs.nats_durable,
        )
    processes = default_processes() if rs.parse_processes is None else rs.parse_processes
    return RuntimeService(
        settings,
        store,
        ingestor,
        quarantine,
        responder,
        nats_source,
        policy,
        ParsePool(processes, inline_bytes=rs.parse_inline_bytes),
        EventRetention(
            store,
            audit,
            retention_s=rs.event_retention_s,
            interval_s=rs.prune_interval_s,
            clock=clock,
        )
        if rs.event_retention_s
        else None,
    )
