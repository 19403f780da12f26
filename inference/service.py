"""The gated inference service as a long-running part: its own HTTPS listener, its own SVID.

``build_inference_service(settings, ...)`` assembles the gate (authn -> runtime status ->
authz -> budget -> audit, ``inference/gating.py``) around the configured models and returns
an ``InferenceService`` with ``start()``/``stop()``/``ready()`` for the control plane (the
all-in-one ``zerogate serve``) or for ``zerogate inference serve``.

On ``start`` the service

1. fetches its own X.509-SVID (``spiffe://<td><inference.spiffe_id_path>``) and the bundles
   from the Workload API with py-spiffe (``inference/trust.py``), and serves TLS with them
   through ``zerogate.tls.ServerTLS``: a rotated SVID or a new bundle is pushed by the
   Workload API stream and applies to the next handshake, without a restart;
2. binds ``inference.listen`` and serves the OpenAI-compatible app with uvicorn and
   ``PeerCertProtocol`` (client certificates reach the gate; uvicorn alone drops them);
3. loads the models in the background: ``/readyz`` says 503 until they are in, calls before
   that get 503 ``backend_unavailable``; the listener is up at once so health checks work.

The all-in-one process gets its SVID from its own Workload API: ``ensure_service_entry``
registers ``spiffe://<td>/inference`` for the process's uid when no entry for that ID exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Response

from identity.entries import EntryRepository, EntrySpec, Selector
from identity.spiffeid import SpiffeId, TrustDomain
from inference.app import create_app
from inference.authn import Authenticator, DenyCheck
from inference.authz import Authorizer, Decider
from inference.budget import Budgets
from inference.gating import AuditTarget, SpiffeGate
from inference.models import ModelRegistry
from inference.quarantine import InMemoryRuntimeStatus, RuntimeStatus
from inference.trust import ServingMaterial, TrustSource, WorkloadApiTrust
from zerogate.clock import Clock
from zerogate.config import Settings
from zerogate.server import bind_socket, listener_server, split_listen
from zerogate.telemetry import PROMETHEUS_CONTENT_TYPE, Telemetry
from zerogate.tls import ServerTLS

log = logging.getLogger(__name__)

TOKEN_CACHE_SIZE = 10_000


def service_id(settings: Settings) -> SpiffeId:
    return SpiffeId.from_path(
        TrustDomain.parse(settings.trust_domain), settings.inference.spiffe_id_path
    )


def ensure_service_entry(
    entries: EntryRepository, settings: Settings, *, uid: int | None = None
) -> bool:
    """Register the service's SPIFFE ID for this process's uid (``unix:uid:N``) unless an
    entry for that ID exists. DNS SANs: ``identity.server_dns_names``, so clients that verify
    host names (the default in most HTTP clients) accept the service's certificate too."""
    spiffe_id = service_id(settings)
    if entries.list(spiffe_id=spiffe_id):
        return False
    entries.create(
        EntrySpec(
            spiffe_id=spiffe_id,
            selectors=(Selector.parse(f"unix:uid:{os.getuid() if uid is None else uid}"),),
            dns_names=tuple(settings.identity.server_dns_names),
        ),
        actor="zerogate",
    )
    log.info("event=inference.entry_created spiffe_id=%s", spiffe_id)
    return True


class InferenceService:
    name = "inference"

    def __init__(
        self,
        settings: Settings,
        *,
        gate: SpiffeGate,
        registry: ModelRegistry,
        trust: WorkloadApiTrust,
        telemetry: Telemetry,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.registry = registry
        self.trust = trust
        self.telemetry = telemetry
        self.app = self._app()
        self.tls: ServerTLS | None = None
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._load_task: asyncio.Task[None] | None = None

    def _app(self) -> FastAPI:
        app = create_app(self.registry, gate=self.gate, manage_registry=False)

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(self.telemetry.prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE)

        return app

    def _rotate(self, material: ServingMaterial) -> None:
        if self.tls is not None:
            self.tls.update(material.chain_pem, material.key_pem, material.bundle_pem)

    async def start(self) -> None:
        await self.trust.start()
        material = self.trust.material
        self.tls = ServerTLS(material.chain_pem, material.key_pem, material.bundle_pem)
        self.trust.on_material(self._rotate)
        host, port = split_listen(self.settings.inference.listen)
        sock = bind_socket("inference", host, port)
        self.port = int(sock.getsockname()[1])
        self._server = listener_server(
            self.app, tls=self.tls, host=host, port=self.port, timeout_graceful_shutdown=5
        )
        self._serve_task = asyncio.create_task(
            self._server.serve(sockets=[sock]), name="inference-listener"
        )
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("the inference listener exited during startup")
            await asyncio.sleep(0.01)
        log.info(
            "event=listener.started what=inference address=https://%s:%d spiffe_id=%s",
            host,
            self.port,
            material.spiffe_id,
        )
        self._load_task = asyncio.create_task(self._load(), name="inference-models")

    async def _load(self) -> None:
        try:
            await self.registry.start()
            log.info("event=inference.models_ready models=%s", ",".join(self.registry.names()))
        except Exception:
            log.exception("event=inference.models_failed")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve_task
        if self._load_task is not None:
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._load_task
        await self.registry.stop()
        await self.trust.stop()

    def ready(self) -> bool:
        """Listening, SVID and bundles fresh, and every model loaded."""
        return (
            self._server is not None
            and self._server.started
            and self.trust.ready()
            and self.registry.ready()
        )


def build_gate(
    settings: Settings,
    *,
    trust: TrustSource,
    policy: Decider,
    audit: AuditTarget,
    telemetry: Telemetry,
    clock: Clock,
    deny: DenyCheck | None,
    runtime: RuntimeStatus,
    providers: dict[str, str] | None = None,
) -> SpiffeGate:
    """The gate as ``settings.inference`` configures it."""
    inference = settings.inference
    audiences = inference.audience or [str(service_id(settings))]
    return SpiffeGate(
        authenticator=Authenticator(
            trust,
            audiences=audiences,
            clock=clock,
            deny=deny,
            trusted_proxy_ids=inference.trusted_proxy_ids,
            staleness_factor=inference.bundle_staleness_factor,
            token_cache_size=TOKEN_CACHE_SIZE if inference.token_cache else 0,
        ),
        authorizer=Authorizer(policy),
        budgets=Budgets(clock),
        runtime=runtime,
        audit=audit,
        clock=clock,
        tracer=telemetry.tracer("zerogate.inference"),
        meter=telemetry.meter("zerogate.inference"),
        providers=providers,
        capture_content=settings.audit.capture_content,
    )


def build_inference_service(
    settings: Settings,
    *,
    policy: Decider,
    audit: AuditTarget,
    telemetry: Telemetry,
    clock: Clock,
    deny: DenyCheck | None = None,
    runtime: RuntimeStatus | None = None,
    registry: ModelRegistry | None = None,
    socket: Path | None = None,
) -> InferenceService:
    """The service for ``zerogate serve`` / ``zerogate inference serve``.

    ``runtime``: the quarantine status the gate consults on every call (the control plane
    passes the runtime subsystem's view, wrapped in ``QuarantineViewStatus``); without one no
    identity is ever quarantined here.
    """
    registry = registry or ModelRegistry.from_settings(
        settings.inference, data_dir=settings.data_dir
    )
    trust = WorkloadApiTrust(
        socket or settings.workload_api_socket,
        spiffe_id=service_id(settings),
        clock=clock,
        refresh_hint_s=settings.identity.bundle_refresh_hint_s,
    )
    gate = build_gate(
        settings,
        trust=trust,
        policy=policy,
        audit=audit,
        telemetry=telemetry,
        clock=clock,
        deny=deny,
        runtime=runtime or InMemoryRuntimeStatus(),
        providers={m.name: m.backend_name for m in registry},
    )
    return InferenceService(
        settings, gate=gate, registry=registry, trust=trust, telemetry=telemetry
    )


async def run_standalone(
    settings: Settings,
    *,
    runtime: RuntimeStatus | None = None,
    until: asyncio.Event | None = None,
) -> None:
    """``zerogate inference serve``: the gated service in its own process, beside a control
    plane whose Workload API socket (``identity.workload_api_socket``) it gets its SVID and
    bundles from, sharing its database (deny list, audit log) and policy directory.

    Stops on SIGTERM/SIGINT (or when ``until`` is set), then closes the audit log cleanly.
    """
    import signal

    from identity.denylist import DenyList
    from policy.service import open_policy
    from zerogate.server import open_kernel

    kernel = open_kernel(settings)
    policy = open_policy(settings, kernel.audit, telemetry=kernel.telemetry, clock=kernel.clock)
    service: InferenceService | None = None
    stop = until or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        service = build_inference_service(
            settings,
            policy=policy,
            audit=kernel.audit,
            telemetry=kernel.telemetry,
            clock=kernel.clock,
            deny=DenyList(kernel.db, clock=kernel.clock, audit=kernel.audit),
            runtime=runtime,
        )
        await policy.start()
        await service.start()
        await stop.wait()
        log.info("event=inference.stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if service is not None:
            await service.stop()
        await policy.stop()
        policy.close()
        kernel.audit.close()
        kernel.telemetry.shutdown()
        kernel.db.close()
