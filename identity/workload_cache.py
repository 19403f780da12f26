"""The Workload API's view of the identity core: per-entry SVID cache and change broadcast.

The gRPC servicer (identity/workload_api.py) asks this cache, never the CA directly, what a
caller with a given set of selectors should get. The cache plays the part of SPIRE's agent
manager/cache, on a smaller scale:

- **Matching**: the entries whose selectors are a subset of the caller's (``IdentitySource
  .entries_for``), memoised per selector set until the next change, so 500 callers with the
  same selectors cost one store query.
- **X.509-SVIDs per entry**, shared by every caller entitled to the entry, re-issued when the
  entry's revision changes, when the CA's signing authority changes (rotation, taint) and
  before half of the SVID's lifetime has passed (``renew_fraction``, default 0.45; SPIFFE
  Workload API section 4.3 leaves timing to the implementation, SPIRE rotates at half-life).
- **Deny list**: an :class:`IdentityGate` (revoked or quarantined SPIFFE IDs) is consulted
  for every identity served; a denied ID disappears from the next response at once.
- **Broadcast**: one ``generation`` counter; every change (entries, bundle, rotation, deny
  list, renewal) bumps it and wakes every waiting stream, which recomputes its full state
  (section 4.3: every message carries the full set) and sends it if it differs.

Changes are noticed two ways: in-process notification (``IdentitySource.subscribe`` and
:meth:`WorkloadCache.notify`, both thread-safe) for immediacy, and a poll every
``poll_interval_s`` of ``IdentitySource.version()`` and of the deny list, which catches
changes made by other processes (the CLI writing the store) and SVID renewal deadlines.
All state lives on one asyncio loop; the methods are synchronous and quick (memoised), and
only a miss calls the store or the CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from identity.bundle import Bundle, JwtClaims
from identity.errors import DeniedError
from zerogate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class EntryView:
    """What the Workload API needs of a registration entry."""

    id: str
    spiffe_id: str
    revision: int
    hint: str = ""
    selectors: tuple[str, ...] = ()
    x509_svid_ttl_s: int | None = None
    jwt_svid_ttl_s: int | None = None
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class X509Material:
    """An issued X.509-SVID: chain (leaf first) and its PKCS#8 DER private key."""

    spiffe_id: str
    chain: tuple[x509.Certificate, ...]
    private_key_der: bytes
    not_before: datetime
    not_after: datetime

    @property
    def serial(self) -> int:
        return self.chain[0].serial_number

    def chain_der(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.chain)


@dataclass(frozen=True, slots=True)
class X509Identity:
    entry: EntryView
    svid: X509Material


@dataclass(frozen=True, slots=True)
class X509State:
    """Everything one FetchX509SVID message carries for one caller."""

    identities: tuple[X509Identity, ...]
    bundles: tuple[Bundle, ...]

    @property
    def fingerprint(self) -> Hashable:
        return (
            tuple((i.entry.id, i.entry.hint, i.svid.serial) for i in self.identities),
            bundles_fingerprint(self.bundles),
        )


def bundles_fingerprint(bundles: Sequence[Bundle]) -> Hashable:
    return tuple(
        (
            b.trust_domain.name,
            b.sequence,
            tuple(c.fingerprint(_SHA256) for c in b.x509_authorities),
            tuple(a.kid for a in b.jwt_authorities),
        )
        for b in bundles
    )


class IdentitySource(Protocol):
    """The identity core as the Workload API sees it (adapted in identity/workload_core.py)."""

    def entries_for(self, selectors: frozenset[str]) -> Sequence[EntryView]:
        """Entries whose selectors are all among ``selectors`` (enabled ones only)."""
        ...

    def issue_x509(self, entry: EntryView) -> X509Material: ...

    def issue_jwt(self, entry: EntryView, audience: Sequence[str]) -> str: ...

    def bundles(self) -> tuple[Bundle, ...]:
        """Our trust domain's bundle first, then federated ones."""
        ...

    def validate_jwt(self, token: str, audience: str) -> JwtClaims:
        """Raises identity.errors.JwtSvidError (or a subclass) when the token is bad."""
        ...

    def signing_authority(self) -> Hashable:
        """Changes when the CA that signs new X.509-SVIDs changes (rotation, taint)."""
        ...

    def version(self) -> Hashable:
        """Changes whenever entries, bundle or CA change; cheap enough to poll."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) after each change; returns an unsubscribe."""
        ...


class IdentityGate(Protocol):
    """The deny list: revoked or quarantined SPIFFE IDs are never served.
    (identity.denylist.DenyList fits; runtime quarantine can be another gate.)"""

    def is_denied(self, *, spiffe_id: str) -> bool: ...


class AllowAll:
    """A gate that denies nothing (no deny list configured)."""

    def is_denied(self, *, spiffe_id: str) -> bool:
        return False


class AnyGate:
    """Denied when any of the gates denies (e.g. the deny list and runtime quarantine)."""

    def __init__(self, *gates: IdentityGate) -> None:
        self._gates = gates

    def is_denied(self, *, spiffe_id: str) -> bool:
        return any(g.is_denied(spiffe_id=spiffe_id) for g in self._gates)


@dataclass(slots=True)
class _CachedSvid:
    revision: int
    authority: Hashable
    svid: X509Material
    renew_at: datetime


class WorkloadCache:
    """Per-entry SVIDs and a change broadcast for the Workload API streams."""

    def __init__(
        self,
        source: IdentitySource,
        *,
        gate: IdentityGate | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval_s: float = 0.5,
        renew_fraction: float = 0.45,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be between 0 and 1")
        self._source = source
        self._gate: IdentityGate = gate or AllowAll()
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._renew_fraction = renew_fraction
        self._generation = 0
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._version: Hashable = source.version()
        self._matches: dict[frozenset[str], tuple[EntryView, ...]] = {}
        self._denied: dict[str, bool] = {}
        self._svids: dict[str, _CachedSvid] = {}
        self._bundles: tuple[Bundle, ...] | None = None

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self._source.subscribe(self.notify)
        self._task = asyncio.create_task(self._poll_loop(), name="workload-cache-poll")

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # wake every stream so that it notices the shutdown
        self._bump("stop")

    # change broadcast --------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        """Something changed (thread-safe): every stream recomputes its state."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._bump("notify")
        else:
            loop.call_soon_threadsafe(self._bump, "notify")

    async def wait_changed(self, generation: int) -> int:
        """Wait until the generation differs from ``generation``; returns the new one."""
        while self._generation == generation:
            await self._changed.wait()
        return self._generation

    def _bump(self, reason: str) -> None:
        self._generation += 1
        self._matches.clear()
        self._denied.clear()
        self._bundles = None
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        log.debug("event=workload_cache.changed generation=%s reason=%s", self._generation, reason)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                self.refresh()
            except Exception:
                # The poll must survive a store outage; streams keep what they have and the
                # next successful poll catches up.
                log.exception("event=workload_cache.poll_failed")

    def refresh(self) -> bool:
        """Check for changes that nobody notified: store version, deny list, SVIDs due for
        renewal. Returns whether anything changed (and streams were woken)."""
        reasons: list[str] = []
        version = self._source.version()
        if version != self._version:
            self._version = version
            reasons.append("version")
        for spiffe_id, was_denied in list(self._denied.items()):
            if self._gate.is_denied(spiffe_id=spiffe_id) != was_denied:
                reasons.append("deny_list")
                break
        now = self._clock.now()
        due = [entry_id for entry_id, c in self._svids.items() if now >= c.renew_at]
        for entry_id in due:
            del self._svids[entry_id]
        if due:
            reasons.append("renewal")
        if reasons:
            self._bump("+".join(reasons))
        return bool(reasons)

    # state for the servicer --------------------------------------------------------------

    def entries_for(self, selectors: frozenset[str]) -> tuple[EntryView, ...]:
        """The caller's entries that are not denied, in a stable order."""
        matched = self._matches.get(selectors)
        if matched is None:
            entries = self._source.entries_for(selectors)
            matched = tuple(sorted(entries, key=lambda e: (e.spiffe_id, e.id)))
            self._matches[selectors] = matched
        return tuple(e for e in matched if not self._is_denied(e.spiffe_id))

    def _is_denied(self, spiffe_id: str) -> bool:
        denied = self._denied.get(spiffe_id)
        if denied is None:
            denied = self._gate.is_denied(spiffe_id=spiffe_id)
            self._denied[spiffe_id] = denied
        return denied

    def bundles(self) -> tuple[Bundle, ...]:
        if self._bundles is None:
            self._bundles = self._source.bundles()
        return self._bundles

    def x509_state(self, selectors: frozenset[str]) -> X509State:
        identities: list[X509Identity] = []
        for entry in self.entries_for(selectors):
            try:
                identities.append(X509Identity(entry=entry, svid=self._svid_for(entry)))
            except DeniedError:
                # denied between our gate check and the CA's own: not served
                self._denied[entry.spiffe_id] = True
        return X509State(identities=tuple(identities), bundles=self.bundles())

    def _svid_for(self, entry: EntryView) -> X509Material:
        authority = self._source.signing_authority()
        cached = self._svids.get(entry.id)
        now = self._clock.now()
        if (
            cached is not None
            and cached.revision == entry.revision
            and cached.authority == authority
            and now < cached.renew_at
        ):
            return cached.svid
        svid = self._source.issue_x509(entry)
        lifetime = svid.not_after - svid.not_before
        self._svids[entry.id] = _CachedSvid(
            revision=entry.revision,
            authority=authority,
            svid=svid,
            renew_at=svid.not_before + lifetime * self._renew_fraction,
        )
        log.info(
            "event=workload.x509_svid.cached entry_id=%s spiffe_id=%s serial=%x not_after=%s",
            entry.id,
            entry.spiffe_id,
            svid.serial,
            svid.not_after.isoformat(),
        )
        return svid

    def jwt_svids(
        self, selectors: frozenset[str], audience: Sequence[str], spiffe_id: str = ""
    ) -> list[tuple[EntryView, str]]:
        entries = self.entries_for(selectors)
        if spiffe_id:
            entries = tuple(e for e in entries if e.spiffe_id == spiffe_id)
        out: list[tuple[EntryView, str]] = []
        for entry in entries:
            try:
                out.append((entry, self._source.issue_jwt(entry, audience)))
            except DeniedError:
                self._denied[entry.spiffe_id] = True
        return out

    def validate_jwt(self, token: str, audience: str) -> JwtClaims:
        return self._source.validate_jwt(token, audience)

    def is_denied(self, spiffe_id: str) -> bool:
        return self._is_denied(spiffe_id)
