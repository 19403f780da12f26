"""Which signing authority sits in which slot, and when it moves: SPIRE's CA rotation.

Each kind of authority (the X.509 signing CA and the JWT signing key) goes through
``prepared -> active -> old`` (SPIRE ``pkg/server/ca/manager/slot.go``):

- **prepare** at half of the active authority's life (``should_prepare``): a new key and CA
  certificate are made and *published in the bundle at once*, so every relying party learns
  them long before anything is signed with them;
- **activate** at 5/6 of the active authority's life (``should_activate``, SPIRE's
  ``activationThreshold = notAfter - lifetime/6``): the prepared one signs from now on, the
  previous one becomes *old*;
- **old** authorities stay in the bundle until their ``not_after``. Since every SVID's TTL is
  capped by its issuer's remaining life, everything they signed has expired by then; then
  they are pruned (key deleted, bundle updated).

``force_rotate(taint=...)`` prepares (if needed) and activates at once; ``taint`` marks the
retiring authority as compromised so SVID streams re-issue everything it signed at once
(``is_tainted``). Every state change is written to the store (table ``identity_ca_journal``,
like SPIRE's ``manager/journal.go``) before it takes effect, and bumps ``spiffe_sequence``.
Listeners registered with ``subscribe`` get the new :class:`Bundle` after every change.

Time is an argument: the manager and :class:`Rotator` take a ``Clock``; ``Rotator.tick()``
is one step of the loop, so rotation is tested with ``ManualClock`` and no sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import delete, select, update

from identity.bundle import Bundle, JwtAuthority
from identity.errors import CaError, KeyNotFoundError
from identity.keys import Key, KeyManager, KeyType, PublicKey, load_pem_signer, sign_certificate
from identity.spiffeid import TrustDomain
from identity.svid import ca_certificate_builder, validate_ca_certificate
from zerogate.clock import Clock
from zerogate.store import Database
from zerogate.store.tables.identity import identity_bundle_state, identity_ca_journal

log = logging.getLogger(__name__)

BundleListener = Callable[[Bundle], None]


class Status(StrEnum):
    PREPARED = "prepared"
    ACTIVE = "active"
    OLD = "old"


class Kind(StrEnum):
    X509 = "x509"
    JWT = "jwt"


@dataclass(frozen=True, slots=True)
class Authority:
    """One signing authority: an X.509 CA (``certificate`` set) or a JWT key (``kid``)."""

    key_id: str
    kind: Kind
    status: Status
    public_key: PublicKey
    not_before: datetime
    not_after: datetime
    certificate: x509.Certificate | None = None
    upstream_chain: tuple[x509.Certificate, ...] = ()
    tainted: bool = False
    activated_at: datetime | None = None

    @property
    def kid(self) -> str:
        return self.key_id

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before

    def should_prepare(self, now: datetime) -> bool:
        """Half of the life is gone: time to prepare (and publish) the successor."""
        return now >= self.not_before + self.lifetime / 2

    def should_activate(self, now: datetime) -> bool:
        """5/6 of the life is gone: time for the prepared successor to sign."""
        return now >= self.not_after - self.lifetime / 6

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after


def should_prepare(active: Authority | None, prepared: Authority | None, now: datetime) -> bool:
    """Pure rule: prepare when nothing is prepared and the active one is past half life."""
    if prepared is not None:
        return False
    return active is None or active.should_prepare(now)


def should_activate(active: Authority | None, prepared: Authority | None, now: datetime) -> bool:
    """Pure rule: activate the prepared one once the active one is past 5/6 of its life."""
    if prepared is None:
        return False
    return active is None or active.should_activate(now) or active.expired(now)


@dataclass(frozen=True, slots=True)
class UpstreamAuthority:
    """An upstream CA from PEM files that signs our intermediate CAs."""

    certificate: x509.Certificate
    key: Key
    roots: tuple[x509.Certificate, ...]

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """Certificates between our CA and the roots (the upstream cert unless it is a root)."""
        return () if self.certificate in self.roots else (self.certificate,)

    @classmethod
    def from_files(cls, cert: Path, key: Path, bundle: Path | None) -> UpstreamAuthority:
        try:
            certs = x509.load_pem_x509_certificates(Path(cert).read_bytes())
        except (OSError, ValueError) as exc:
            raise CaError(f"upstream CA certificate {cert}: {exc}") from exc
        signer = load_pem_signer(Path(key), "upstream")
        upstream = certs[0]
        if upstream.public_key() != signer.public_key():
            raise CaError(f"upstream CA key {key} does not match certificate {cert}")
        try:
            bc = upstream.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"upstream certificate {cert} is not a CA (basicConstraints CA:true)")
        if bundle is not None:
            try:
                roots = tuple(x509.load_pem_x509_certificates(Path(bundle).read_bytes()))
            except (OSError, ValueError) as exc:
                raise CaError(f"upstream CA bundle {bundle}: {exc}") from exc
        else:
            if upstream.issuer != upstream.subject:
                raise CaError(
                    f"upstream CA {cert} is not self-signed: give upstream_ca_bundle (its roots)"
                )
            roots = (upstream,)
        return cls(upstream, signer, roots)


def _new_key_id(kind: Kind) -> str:
    # JWT kids: 32 random URL-safe characters, as SPIRE.
    return f"{kind.value}-{secrets.token_urlsafe(24)}"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _spki_pem(public: PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class AuthorityManager:
    """The slots of one trust domain, persisted in the store; thread-safe."""

    def __init__(
        self,
        *,
        trust_domain: TrustDomain,
        db: Database,
        keys: KeyManager,
        clock: Clock,
        ca_ttl: timedelta = timedelta(hours=24),
        key_type: KeyType = KeyType.EC_P256,
        upstream: UpstreamAuthority | None = None,
        refresh_hint_s: int = 300,
    ) -> None:
        self.trust_domain = trust_domain
        self.db = db
        self.keys = keys
        self.clock = clock
        self.ca_ttl = ca_ttl
        self.key_type = key_type
        self.upstream = upstream
        self.refresh_hint_s = refresh_hint_s
        self._lock = threading.RLock()
        self._authorities: dict[str, Authority] = {}
        # the signing pair per kind, read without the lock on the hot path; cleared on change
        self._active_cache: dict[Kind, tuple[Authority, Key]] = {}
        self._sequence = 0
        self._bundle: Bundle | None = None
        self._listeners: list[BundleListener] = []
        self._load()

    # Queries -------------------------------------------------------------------------------

    def _one(self, kind: Kind, status: Status) -> Authority | None:
        found = [a for a in self._authorities.values() if a.kind is kind and a.status is status]
        return max(found, key=lambda a: a.not_before) if found else None

    def authorities(self, kind: Kind | None = None) -> list[Authority]:
        with self._lock:
            return sorted(
                (a for a in self._authorities.values() if kind is None or a.kind is kind),
                key=lambda a: (a.kind, a.not_before),
            )

    def active(self, kind: Kind) -> tuple[Authority, Key]:
        """The authority that signs now, and its signer. CaError when there is none."""
        cached = self._active_cache.get(kind)
        if cached is not None:
            return cached
        with self._lock:
            auth = self._one(kind, Status.ACTIVE)
            if auth is None:
                raise CaError(f"no active {kind.value} authority for {self.trust_domain}")
            pair = (auth, self.keys.get_key(auth.key_id))
            self._active_cache[kind] = pair
        return pair

    def prepared(self, kind: Kind) -> Authority | None:
        with self._lock:
            return self._one(kind, Status.PREPARED)

    def is_tainted(self, cert_or_kid: x509.Certificate | str) -> bool:
        """Whether the authority that signed this certificate (or owns this kid) is tainted."""
        with self._lock:
            if isinstance(cert_or_kid, str):
                auth = self._authorities.get(cert_or_kid)
                return bool(auth and auth.tainted)
            for a in self._authorities.values():
                ca = a.certificate
                if ca is None or not a.tainted or cert_or_kid.issuer != ca.subject:
                    continue
                try:
                    cert_or_kid.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return True
            return False

    @property
    def sequence(self) -> int:
        return self._sequence

    def bundle(self) -> Bundle:
        with self._lock:
            if self._bundle is None:
                self._bundle = self._build_bundle()
            return self._bundle

    def _build_bundle(self) -> Bundle:
        if self.upstream is not None:
            x509s = list(self.upstream.roots)
        else:
            x509s = [
                a.certificate for a in self.authorities(Kind.X509) if a.certificate is not None
            ]
        jwts = [JwtAuthority(a.kid, a.public_key, a.not_after) for a in self.authorities(Kind.JWT)]
        return Bundle(
            self.trust_domain,
            tuple(x509s),
            tuple(jwts),
            sequence=self._sequence,
            refresh_hint_s=self.refresh_hint_s,
        )

    # Subscriptions --------------------------------------------------------------------------

    def subscribe(self, listener: BundleListener) -> Callable[[], None]:
        """Call ``listener(bundle)`` after every change; returns the unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _changed(self) -> None:
        with self._lock:
            td = identity_bundle_state.c.trust_domain == self.trust_domain.name
            with self.db.begin() as conn:
                stored = conn.execute(
                    select(identity_bundle_state.c.sequence).where(td)
                ).scalar_one_or_none()
                # monotonic across processes sharing the store (spiffe_sequence only grows)
                self._sequence = max(self._sequence, int(stored or 0)) + 1
                if stored is not None:
                    conn.execute(
                        update(identity_bundle_state).where(td).values(sequence=self._sequence)
                    )
                else:
                    conn.execute(
                        identity_bundle_state.insert().values(
                            trust_domain=self.trust_domain.name, sequence=self._sequence
                        )
                    )
            self._bundle = self._build_bundle()
            bundle, listeners = self._bundle, list(self._listeners)
        log.info(
            "event=identity.bundle.changed trust_domain=%s sequence=%d",
            self.trust_domain,
            bundle.sequence,
        )
        for listener in listeners:
            try:
                listener(bundle)
            except Exception:
                log.exception("event=identity.bundle.listener_failed")

    # Persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        with self.db.begin() as conn:
            rows = conn.execute(
                select(identity_ca_journal).where(
                    identity_ca_journal.c.trust_domain == self.trust_domain.name
                )
            ).all()
            seq = conn.execute(
                select(identity_bundle_state.c.sequence).where(
                    identity_bundle_state.c.trust_domain == self.trust_domain.name
                )
            ).scalar_one_or_none()
        self._sequence = int(seq or 0)
        loaded: dict[str, Authority] = {}
        for row in rows:
            cert = (
                x509.load_pem_x509_certificate(row.certificate.encode())
                if row.certificate
                else None
            )
            chain = (
                tuple(x509.load_pem_x509_certificates(row.upstream_chain.encode()))
                if row.upstream_chain
                else ()
            )
            public = serialization.load_pem_public_key(row.public_key.encode())
            loaded[row.key_id] = Authority(
                key_id=row.key_id,
                kind=Kind(row.kind),
                status=Status(row.status),
                public_key=public,  # type: ignore[arg-type]
                not_before=row.not_before,
                not_after=row.not_after,
                certificate=cert,
                upstream_chain=chain,
                tainted=bool(row.tainted),
                activated_at=row.activated_at,
            )
        self._authorities = loaded
        self._active_cache.clear()
        self._bundle = None

    def _retire_keyless(self) -> bool:
        """An authority whose key is gone (memory key store after a restart) cannot sign: it
        stays published as old until it expires, and a fresh one takes over (in ``tick``)."""
        changed = False
        for a in list(self._authorities.values()):
            if a.status is Status.OLD:
                continue
            try:
                self.keys.get_key(a.key_id)
            except KeyNotFoundError:
                log.warning("event=identity.ca.key_missing key_id=%s", a.key_id)
                self._store(replace(a, status=Status.OLD))
                changed = True
        return changed

    def refresh(self) -> bool:
        """Reload the slots when another process (the CLI, a replica) changed the journal;
        listeners are told. True when something was reloaded."""
        with self.db.begin() as conn:
            seq = conn.execute(
                select(identity_bundle_state.c.sequence).where(
                    identity_bundle_state.c.trust_domain == self.trust_domain.name
                )
            ).scalar_one_or_none()
        with self._lock:
            if seq is None or int(seq) <= self._sequence:
                return False
            self._load()
            bundle = self._bundle = self._build_bundle()
            listeners = list(self._listeners)
        log.info("event=identity.bundle.reloaded sequence=%d", bundle.sequence)
        for listener in listeners:
            try:
                listener(bundle)
            except Exception:
                log.exception("event=identity.bundle.listener_failed")
        return True

    def _store(self, auth: Authority, *, insert: bool = False) -> None:
        values = {
            "kind": auth.kind.value,
            "status": auth.status.value,
            "trust_domain": self.trust_domain.name,
            "certificate": _pem(auth.certificate) if auth.certificate else None,
            "upstream_chain": "".join(_pem(c) for c in auth.upstream_chain) or None,
            "public_key": _spki_pem(auth.public_key),
            "not_before": auth.not_before,
            "not_after": auth.not_after,
            "tainted": auth.tainted,
            "activated_at": auth.activated_at,
        }
        with self.db.begin() as conn:
            if insert:
                conn.execute(
                    identity_ca_journal.insert().values(
                        key_id=auth.key_id, created_at=self.clock.now(), **values
                    )
                )
            else:
                conn.execute(
                    update(identity_ca_journal)
                    .where(identity_ca_journal.c.key_id == auth.key_id)
                    .values(**values)
                )
        self._authorities[auth.key_id] = auth
        self._active_cache.clear()

    # Transitions ---------------------------------------------------------------------------

    def _mint(self, kind: Kind, now: datetime) -> Authority:
        key_id = _new_key_id(kind)
        key = self.keys.generate_key(key_id, self.key_type)
        not_after = now + self.ca_ttl
        if self.upstream is not None:
            not_after = min(not_after, self.upstream.certificate.not_valid_after_utc)
        if not_after <= now:
            raise CaError("upstream CA has expired: cannot mint a signing authority")
        cert: x509.Certificate | None = None
        chain: tuple[x509.Certificate, ...] = ()
        if kind is Kind.X509:
            builder = ca_certificate_builder(
                trust_domain=self.trust_domain,
                public_key=key.public_key(),
                not_before=now,
                not_after=not_after,
                issuer=self.upstream.certificate if self.upstream else None,
            )
            signer = self.upstream.key if self.upstream else key
            cert = sign_certificate(signer, builder)
            validate_ca_certificate(cert, self.trust_domain)
            chain = self.upstream.chain if self.upstream else ()
        return Authority(
            key_id=key_id,
            kind=kind,
            status=Status.PREPARED,
            public_key=key.public_key(),
            not_before=now,
            not_after=not_after,
            certificate=cert,
            upstream_chain=chain,
        )

    def prepare(self, kind: Kind) -> Authority:
        """Mint the next authority and publish it in the bundle (it does not sign yet)."""
        now = self.clock.now()
        with self._lock:
            existing = self._one(kind, Status.PREPARED)
            if existing is not None:
                return existing
            auth = self._mint(kind, now)
            self._store(auth, insert=True)
        log.info("event=identity.ca.prepared kind=%s key_id=%s", kind, auth.key_id)
        self._changed()
        return auth

    def activate(self, kind: Kind, *, taint: bool = False) -> Authority:
        """The prepared authority signs from now on; the active one becomes old."""
        now = self.clock.now()
        with self._lock:
            nxt = self._one(kind, Status.PREPARED)
            if nxt is None:
                raise CaError(f"no prepared {kind.value} authority to activate")
            current = self._one(kind, Status.ACTIVE)
            if current is not None:
                self._store(replace(current, status=Status.OLD, tainted=current.tainted or taint))
            nxt = replace(nxt, status=Status.ACTIVE, activated_at=now)
            self._store(nxt)
        log.info(
            "event=identity.ca.activated kind=%s key_id=%s tainted_previous=%s",
            kind,
            nxt.key_id,
            taint,
        )
        self._changed()
        return nxt

    def prune(self) -> list[Authority]:
        """Drop old authorities whose certificates/keys have expired."""
        now = self.clock.now()
        with self._lock:
            gone = [
                a for a in self._authorities.values() if a.status is Status.OLD and a.expired(now)
            ]
            if not gone:
                return []
            with self.db.begin() as conn:
                conn.execute(
                    delete(identity_ca_journal).where(
                        identity_ca_journal.c.key_id.in_([a.key_id for a in gone])
                    )
                )
            for a in gone:
                del self._authorities[a.key_id]
                self._active_cache.clear()
                with contextlib.suppress(KeyNotFoundError):
                    self.keys.delete_key(a.key_id)
        for a in gone:
            log.info("event=identity.ca.pruned kind=%s key_id=%s", a.kind, a.key_id)
        self._changed()
        return gone

    def tick(self) -> bool:
        """One rotation step for both kinds; True when anything changed."""
        changed = self.refresh()
        with self._lock:
            if self._retire_keyless():
                changed = True
                self._changed()
        now = self.clock.now()
        for kind in (Kind.X509, Kind.JWT):
            with self._lock:
                active = self._one(kind, Status.ACTIVE)
                prepared = self._one(kind, Status.PREPARED)
            if active is None and prepared is None:
                self.prepare(kind)
                self.activate(kind)
                changed = True
                continue
            if should_prepare(active, prepared, now):
                prepared = self.prepare(kind)
                changed = True
            if should_activate(active, prepared, now):
                self.activate(kind)
                changed = True
        if self.prune():
            changed = True
        return changed

    def force_rotate(self, *, taint: bool = False) -> None:
        """Prepare (if needed) and activate now, for both kinds (``zerogate ca rotate``)."""
        for kind in (Kind.X509, Kind.JWT):
            self.prepare(kind)
            self.activate(kind, taint=taint)


class Rotator:
    """Runs ``AuthorityManager.tick`` every ``interval`` (a long-running part)."""

    def __init__(self, manager: AuthorityManager, *, interval: timedelta = timedelta(seconds=10)):
        self.manager = manager
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._ready = False

    def tick(self) -> bool:
        return self.manager.tick()

    async def start(self) -> None:
        await asyncio.to_thread(self.tick)
        self._ready = True
        self._task = asyncio.create_task(self._run(), name="identity-rotator")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval.total_seconds())
            try:
                await asyncio.to_thread(self.tick)
            except Exception:
                log.exception("event=identity.ca.rotation_failed")

    async def stop(self) -> None:
        self._ready = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def ready(self) -> bool:
        return self._ready
