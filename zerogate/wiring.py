"""Which subsystem gets what: builds identity, policy, runtime, admission and inference on a
``ControlPlane`` and connects them (DESIGN.md section 2: only ``zerogate.server``,
``zerogate.wiring`` and ``zerogate.cli`` import several subsystems).

- identity: CA + rotation, the control plane's own X.509-SVID on its TLS listener (rotated
  before half-life and on every bundle change, without restart), ``/v1/bundle``, the entry API,
  ``/v1/svid/x509`` (join token, k8s PSAT).
- policy: the Rego store, the OPA REST API and bundle server (writes need an admin SVID),
  SIGHUP reload; also the Workload API's issuance check (``data.zerogate.identity``).
- runtime: Falco ingestion on ``/v1/runtime/...``, response through the policy, quarantine.
- Workload API: served unless the deny list or the runtime quarantine refuses the ID; a
  quarantine wakes its streams at once.
- inference: the gated model service on its own listener, reading the deny list and the
  quarantine on every call.
- admission: the webhook on the control plane's listener, native policy through the store.
- The caller of an HTTPS request is the SPIFFE ID of its verified client X.509-SVID
  (``mtls_caller``); writes need an admin entry (``admin_required``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import HTTPException, Request

from admission.admit import NATIVE_PATH as ADMISSION_POLICY_PATH
from admission.service import AdmissionService
from identity.api import router as identity_router
from identity.attestation import JoinTokens, psat_attestor_from_settings
from identity.bundle import validate_x509_svid
from identity.ca import X509Svid
from identity.errors import IdentityError
from identity.service import IdentityService, open_identity
from identity.spiffeid import SpiffeId
from identity.svid_api import router as svid_router
from identity.workload_server import build_workload_api_server
from inference.authz import POLICY_PATH as INFERENCE_POLICY_PATH
from inference.quarantine import QuarantineViewStatus
from inference.service import build_inference_service, ensure_service_entry
from policy.api import router as policy_router
from policy.bundle import load_signing_key
from policy.service import PolicyService, open_policy
from runtime.service import open_runtime
from zerogate.clock import Clock
from zerogate.server import ControlPlane
from zerogate.tls import ServerTLS, peer_certificate

log = logging.getLogger(__name__)


class _Named:
    """Gives a subsystem's long-running part the name the control plane reports it under."""

    def __init__(self, name: str, part: Any) -> None:
        self.name = name
        self._part = part

    async def start(self) -> None:
        await self._part.start()

    async def stop(self) -> None:
        await self._part.stop()

    def ready(self) -> bool:
        return bool(self._part.ready())


class ServerSvidKeeper:
    """Keeps the control plane's own X.509-SVID fresh on every TLS listener it serves.

    Re-issued at half its lifetime (as SPIRE agents rotate SVIDs) and whenever the bundle
    changes (CA rotation or taint), so clients always see a certificate from the active CA.
    """

    name = "server-svid"

    def __init__(
        self,
        identity: IdentityService,
        spiffe_id: SpiffeId,
        dns_names: tuple[str, ...],
        clock: Clock,
    ) -> None:
        self._identity = identity
        self._spiffe_id = spiffe_id
        self._dns = dns_names
        self._clock = clock
        self._svid = self._issue()
        self._tls: list[ServerTLS] = []
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def _issue(self) -> X509Svid:
        return self._identity.ca.issue_server_svid(self._spiffe_id, self._dns)

    def _material(self) -> tuple[bytes, bytes, bytes]:
        bundle_pem = self._identity.ca.bundle().to_pem().encode("ascii")
        return self._svid.chain_pem(), self._svid.key_pem(), bundle_pem

    @property
    def svid(self) -> X509Svid:
        return self._svid

    def server_tls(self) -> ServerTLS:
        chain, key, bundle = self._material()
        tls = ServerTLS(chain, key, bundle)
        self._tls.append(tls)
        return tls

    def refresh(self) -> None:
        self._svid = self._issue()
        chain, key, bundle = self._material()
        for tls in self._tls:
            tls.update(chain, key, bundle)
        log.info(
            "event=server_svid.rotated spiffe_id=%s serial=%s expires=%s",
            self._spiffe_id,
            self._svid.serial_hex,
            self._svid.expires_at.isoformat(),
        )

    def _on_bundle_change(self, _bundle: object) -> None:
        try:
            self.refresh()
        except Exception:
            log.exception("event=server_svid.rotation_failed")

    async def start(self) -> None:
        self._unsubscribe = self._identity.ca.on_change(self._on_bundle_change)
        self._task = asyncio.create_task(self._run(), name="server-svid")

    async def _run(self) -> None:
        while True:
            now = self._clock.now()
            issued = self._svid.leaf.not_valid_before_utc
            half = issued + (self._svid.expires_at - issued) / 2
            await asyncio.sleep(max(1.0, (half - now).total_seconds()))
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("event=server_svid.rotation_failed")
                await asyncio.sleep(5)

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ready(self) -> bool:
        return self._svid.expires_at > self._clock.now() + timedelta(seconds=1)


_SVID_MEMO_S = 60.0  # how long one successful validation of a client leaf is reused
_SVID_MEMO_MAX = 4096


def mtls_caller(identity: IdentityService, clock: Clock) -> Callable[[Request], SpiffeId | None]:
    """FastAPI dependency: the SPIFFE ID of the request's client X.509-SVID, or None.

    OpenSSL already verified the chain against our bundle in the handshake; this re-checks
    the leaf against the SPIFFE rules (X509-SVID spec section 5) with the trust domain's own
    bundle, and a bad one is a 401, never an anonymous caller.

    The answer for a leaf is reused (at most 60 s, never past the leaf's validity, and only
    while the bundle is the same object: every CA rotation or taint replaces it): a Falco
    http_output or an inference client sends many requests per connection and certificate,
    and the signature check costs more than the rest of a small request.
    """
    memo: dict[str, tuple[object, SpiffeId, datetime, datetime]] = {}

    def caller(request: Request) -> SpiffeId | None:
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        chain = tls.get("client_cert_chain") or []
        if not chain:
            return None
        pem = chain[0]
        bundle = identity.ca.bundle()
        now = clock.now()
        hit = memo.get(pem)
        if hit is not None and hit[0] is bundle and hit[2] <= now < hit[3]:
            return hit[1]
        cert = peer_certificate(request.scope)
        if cert is None:
            return None
        try:
            spiffe_id = validate_x509_svid([cert], bundle, now)
        except IdentityError as exc:
            raise HTTPException(
                401, f"client certificate is not a valid X.509-SVID: {exc}"
            ) from exc
        if len(memo) >= _SVID_MEMO_MAX:
            memo.clear()
        until = min(cert.not_valid_after_utc, now + timedelta(seconds=_SVID_MEMO_S))
        memo[pem] = (bundle, spiffe_id, cert.not_valid_before_utc, until)
        return spiffe_id

    return caller


def admin_required(
    identity: IdentityService, caller: Callable[[Request], SpiffeId | None]
) -> Callable[[Request], SpiffeId]:
    """FastAPI dependency for write APIs: the caller must hold an enabled admin entry."""

    def dependency(request: Request) -> SpiffeId:
        who = caller(request)
        refusal = identity.admin_refusal(who)
        if refusal is not None:
            status, _code, message = refusal
            raise HTTPException(status, message)
        assert who is not None
        return who

    return dependency


ISSUANCE_POLICY_PATH = "zerogate/identity/decision"


def issuance_check(policy: PolicyService) -> Callable[[dict[str, Any]], tuple[bool, list[str]]]:
    """The Workload API's issuance hook: ``data.zerogate.identity.decision`` (rego/identity/);
    an undefined or malformed decision denies."""

    def check(facts: dict[str, Any]) -> tuple[bool, list[str]]:
        result = policy.decide(ISSUANCE_POLICY_PATH, facts, log=False).result
        if not isinstance(result, dict) or not isinstance(result.get("allow"), bool):
            return False, ["issuance policy gave no decision"]
        reasons = result.get("reasons") or []
        return result["allow"], [str(r) for r in reasons]

    return check


def assemble(plane: ControlPlane) -> None:
    kernel = plane.kernel
    settings = kernel.settings
    identity = open_identity(settings, kernel.db, kernel.audit, kernel.clock)
    plane.add_component(_Named("identity-ca", identity.rotator))

    keeper = ServerSvidKeeper(
        identity, identity.server_id, tuple(settings.identity.server_dns_names), kernel.clock
    )
    plane.add_component(keeper)
    plane.listeners[0].tls = keeper.server_tls()

    caller = mtls_caller(identity, kernel.clock)
    plane.app.include_router(identity_router(identity, caller))
    join_tokens = JoinTokens(
        kernel.db, clock=kernel.clock, audit=kernel.audit, trust_domain=identity.trust_domain
    )
    psat = psat_attestor_from_settings(settings.identity.k8s_psat, clock=kernel.clock)
    plane.app.include_router(svid_router(identity, join_tokens, psat))

    plane.extras["identity"] = identity
    plane.extras["server_svid"] = keeper

    policy = _assemble_policy(plane, identity, caller)
    plane.extras["policy"] = policy

    runtime = open_runtime(
        settings,
        kernel.db,
        kernel.audit,
        policy=policy,
        entries=identity.entries,
        denylist=identity.deny_list,
        clock=kernel.clock,
    )
    plane.add_component(_Named("runtime", runtime))
    runtime.install(plane.app, caller=caller)
    plane.extras["runtime"] = runtime

    # The Workload API serves no SVID to a revoked (deny list) or quarantined SPIFFE ID, and
    # a quarantine wakes its streams at once rather than at the next poll.
    workload_api = build_workload_api_server(
        settings,
        identity,
        clock=kernel.clock,
        gates=[runtime.quarantine],
        issuance_check=issuance_check(policy),
    )
    runtime.quarantine.subscribe(lambda _change: workload_api.cache.notify())
    plane.add_component(_Named("workload-api", workload_api))

    if settings.inference.enabled:
        # The service gets its own X.509-SVID from the Workload API like any workload: the
        # entry for spiffe://<td>/inference with this process's uid is created when missing.
        ensure_service_entry(identity.entries, settings)
        inference = build_inference_service(
            settings,
            policy=policy,
            audit=kernel.audit,
            telemetry=kernel.telemetry,
            clock=kernel.clock,
            deny=identity.deny_list,
            runtime=QuarantineViewStatus(runtime.quarantine),
        )
        plane.add_component(inference)
        plane.extras["inference"] = inference

    admission = AdmissionService(
        settings.admission,
        # admission writes its own audit record per review; the policy decision log would
        # only repeat it
        native=lambda path, input_: policy.decide(path, input_, log=False),
        audit=kernel.audit,
        db=kernel.db,
        meter=kernel.telemetry.meter("zerogate.admission"),
        # on the embedded OPA the native policy is compiled into admission's engine too
        # (one call per review); remote OPA and regorus keep their own evaluation
        native_source=policy.store if policy.engine.name == "opa" else None,
    )
    plane.add_component(_Named("admission", admission))
    plane.app.include_router(admission.router())
    plane.extras["admission"] = admission

    # the enforcement points' paths: prepared now and before each new revision goes live, so
    # no first decision after a start or a reload waits for OPA to prepare its query (the
    # runtime prepares its own when it starts)
    policy.prepare(ISSUANCE_POLICY_PATH, INFERENCE_POLICY_PATH, ADMISSION_POLICY_PATH)


def _assemble_policy(
    plane: ControlPlane, identity: IdentityService, caller: Callable[[Request], SpiffeId | None]
) -> PolicyService:
    """Rego store + engine, the OPA-compatible REST API and bundle server, SIGHUP reload."""
    kernel = plane.kernel
    settings = kernel.settings
    policy = open_policy(settings, kernel.audit, telemetry=kernel.telemetry, clock=kernel.clock)
    plane.add_component(_Named("policy", policy))
    signing_key = (
        load_signing_key(settings.policy.bundle_signing_key)
        if settings.policy.bundle_signing_key is not None
        else None
    )
    plane.app.include_router(
        policy_router(policy, admin_required(identity, caller), signing_key=signing_key)
    )
    plane.on_signal(signal.SIGHUP, policy.reload_from_signal)
    return policy
