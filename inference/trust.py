"""Where the gate's trust comes from: the bundles it validates SVIDs against, how fresh they
are, and (for the service itself) its own X.509-SVID.

``TrustSource.current()`` returns a ``TrustSnapshot``: the bundles by trust domain, when they
were last confirmed, and the refresh hint. The gate refuses calls (503) once a snapshot is
older than ``refresh_hint x bundle_staleness_factor``: a gate that can no longer reach its
bundle source cannot learn about CA rotations or taints, so it stops rather than trusts stale
keys (SPIFFE Trust Domain and Bundle 4.1.2: ``spiffe_refresh_hint`` is how often a consumer
should re-fetch).

Implementations:

- ``SnapshotTrust``: a holder other code sets (``WorkloadApiTrust`` fills one; tests set one
  directly to move freshness with a ``ManualClock``).
- ``LocalTrust``: the bundle of an in-process CA (the all-in-one process is its own bundle
  source, so it is never stale).
- ``WorkloadApiTrust``: py-spiffe against a Workload API socket: the service's own
  X.509-SVID (``X509Source`` stream, rotation pushed to subscribers) and X.509 + JWT bundles
  (re-fetched every ``refresh_hint / 2`` seconds, which is what proves freshness).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from spiffe import JwtBundleSet, WorkloadApiClient, X509BundleSet, X509Source, X509Svid
from spiffe.errors import PySpiffeError

from identity.bundle import Bundle, BundleSet, JwtAuthority
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.clock import Clock
from zerogate.errors import ZerogateError

log = logging.getLogger(__name__)


class ServiceIdentityError(ZerogateError):
    """The service cannot get its own SVID or bundles from the Workload API at start."""

    code = "service_identity_unavailable"


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    bundles: BundleSet
    fetched_at: datetime
    refresh_hint_s: float

    def stale(self, now: datetime, factor: float) -> bool:
        return now - self.fetched_at > timedelta(seconds=self.refresh_hint_s * factor)


class TrustSource(Protocol):
    def current(self) -> TrustSnapshot:
        """The bundles to validate against now; raises nothing (a source that has never
        fetched returns an empty set, so every credential is refused)."""
        ...


class SnapshotTrust:
    """A snapshot holder: ``set`` replaces it atomically."""

    def __init__(self, snapshot: TrustSnapshot) -> None:
        self._snapshot = snapshot

    def current(self) -> TrustSnapshot:
        return self._snapshot

    def set(self, snapshot: TrustSnapshot) -> None:
        self._snapshot = snapshot


class LocalTrust:
    """The bundle of an in-process CA (``identity.ca.CertificateAuthority.bundle``)."""

    def __init__(self, bundle: Callable[[], Bundle], clock: Clock) -> None:
        self._bundle = bundle
        self._clock = clock

    def current(self) -> TrustSnapshot:
        bundle = self._bundle()
        return TrustSnapshot(
            BundleSet([bundle]), self._clock.now(), float(bundle.refresh_hint_s or 300)
        )


# py-spiffe -> identity types ------------------------------------------------------------------


def bundles_from_spiffe(x509: X509BundleSet, jwt: JwtBundleSet, refresh_hint_s: int) -> BundleSet:
    """identity ``Bundle``s from py-spiffe's bundle sets (one per trust domain)."""
    tds: dict[str, tuple[list[object], list[JwtAuthority]]] = {}
    for xb in x509.bundles:
        tds.setdefault(xb.trust_domain.name, ([], []))[0].extend(xb.x509_authorities)
    for jb in jwt.bundles:
        auths = tds.setdefault(jb.trust_domain.name, ([], []))[1]
        for kid, key in jb.jwt_authorities.items():
            if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                auths.append(JwtAuthority(kid, key))
    return BundleSet(
        Bundle(
            TrustDomain.parse(name),
            x509_authorities=tuple(certs),  # type: ignore[arg-type]
            jwt_authorities=tuple(auths),
            refresh_hint_s=refresh_hint_s,
        )
        for name, (certs, auths) in tds.items()
    )


@dataclass(frozen=True, slots=True)
class ServingMaterial:
    """The service's own SVID and the bundle it asks clients to chain to (PEM)."""

    spiffe_id: str
    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes


def _material(svid: X509Svid, bundles: BundleSet) -> ServingMaterial:
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    anchors = b"".join(
        c.public_bytes(serialization.Encoding.PEM)
        for b in bundles.values()
        for c in b.x509_authorities
    )
    return ServingMaterial(str(svid.spiffe_id), chain, key, anchors)


class WorkloadApiTrust:
    """The service's SVID and bundles from a SPIFFE Workload API (py-spiffe).

    ``on_material`` is called (from py-spiffe's watcher thread or the refresh task) with new
    serving material whenever the SVID or the bundles change; ``ServerTLS.update`` is the
    intended subscriber, so rotation needs no restart.
    """

    def __init__(
        self,
        socket: Path,
        *,
        spiffe_id: SpiffeId,
        clock: Clock,
        refresh_hint_s: int,
        timeout_s: float = 30.0,
    ) -> None:
        self._socket = socket
        self._id = spiffe_id
        self._clock = clock
        self._hint = refresh_hint_s
        self._timeout = timeout_s
        self._client: WorkloadApiClient | None = None
        self._source: X509Source | None = None
        self._snapshot = SnapshotTrust(TrustSnapshot(BundleSet(), clock.now(), refresh_hint_s))
        self._listeners: list[Callable[[ServingMaterial], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._material: ServingMaterial | None = None

    def current(self) -> TrustSnapshot:
        return self._snapshot.current()

    @property
    def material(self) -> ServingMaterial:
        if self._material is None:
            raise RuntimeError("WorkloadApiTrust.start() has not completed")
        return self._material

    def on_material(self, callback: Callable[[ServingMaterial], None]) -> None:
        self._listeners.append(callback)

    def _pick(self, svids: list[X509Svid]) -> X509Svid:
        for svid in svids:
            if str(svid.spiffe_id) == str(self._id):
                return svid
        raise LookupError(
            f"the Workload API offers no X.509-SVID for {self._id} (got "
            f"{', '.join(str(s.spiffe_id) for s in svids) or 'none'}): register an entry for it"
        )

    def _open(self) -> None:
        self._client = WorkloadApiClient(f"unix://{self._socket}", default_timeout=self._timeout)
        self._source = X509Source(
            self._client, timeout_in_seconds=self._timeout, svid_picker=self._pick
        )
        self._refresh()
        self._source.subscribe_for_updates(self._on_update)

    def _refresh(self) -> None:
        """One fetch of both bundle kinds; success is what keeps the snapshot fresh."""
        assert self._client is not None and self._source is not None
        x509 = self._client.fetch_x509_bundles()
        jwt = self._client.fetch_jwt_bundles()
        bundles = bundles_from_spiffe(x509, jwt, self._hint)
        self._snapshot.set(TrustSnapshot(bundles, self._clock.now(), float(self._hint)))
        self._publish(bundles)

    def _publish(self, bundles: BundleSet) -> None:
        assert self._source is not None
        material = _material(self._source.get_x509_context().default_svid, bundles)
        with self._lock:
            changed = material != self._material
            self._material = material
        if changed:
            for callback in self._listeners:
                try:
                    callback(material)
                except Exception:
                    log.exception("event=inference.tls_update_failed")

    def _on_update(self) -> None:
        try:
            self._refresh()
            log.info("event=inference.svid_updated spiffe_id=%s", self._id)
        except Exception as exc:
            log.warning("event=inference.trust_refresh_failed error=%s", exc)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except (PySpiffeError, LookupError, OSError) as exc:
            raise ServiceIdentityError(
                f"cannot get the X.509-SVID of {self._id} from the Workload API at "
                f"{self._socket}: {exc}"
            ) from exc
        self._task = asyncio.create_task(self._run(), name="inference-trust")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._hint / 2))
            try:
                await asyncio.to_thread(self._refresh)
            except Exception as exc:  # stays stale; the gate answers 503 past the factor
                log.warning("event=inference.trust_refresh_failed error=%s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._source is not None:
            self._source.close()
        if self._client is not None:
            self._client.close()

    def ready(self) -> bool:
        return self._material is not None and not self.current().stale(self._clock.now(), 1.0)
