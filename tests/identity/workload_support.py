"""A small in-memory identity core for Workload API tests: real keys, real certificates
(identity/svid.py builders), real JWT-SVIDs (identity/svid.py encode_jws) and real
validation (identity/bundle.py); entries and rotation are kept in memory so tests can
change them at will. Speaks ``identity.workload_cache.IdentitySource``."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from identity.bundle import Bundle, JwtAuthority, JwtClaims, validate_jwt_svid
from identity.keys import KeyType, MemoryKeyManager, generate_private_key, sign_certificate
from identity.spiffeid import SpiffeId, TrustDomain
from identity.svid import (
    ca_certificate_builder,
    encode_jws,
    jwt_svid_claims,
    new_jti,
    x509_svid_builder,
)
from identity.workload_cache import EntryView, X509Material
from zerogate.clock import SYSTEM_CLOCK, Clock


@dataclass
class MemEntry:
    id: str
    spiffe_id: str
    selectors: frozenset[str]
    revision: int = 1
    hint: str = ""
    x509_ttl: timedelta = timedelta(hours=1)


@dataclass
class _Ca:
    key_id: str
    cert: x509.Certificate


@dataclass
class MemorySource:
    trust_domain: TrustDomain
    clock: Clock = SYSTEM_CLOCK
    entries: dict[str, MemEntry] = field(default_factory=dict)
    issued_x509: int = 0

    def __post_init__(self) -> None:
        self._keys = MemoryKeyManager()
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[], None]] = []
        self._version = 0
        self._cas: list[_Ca] = []
        self._jwt_keys: list[str] = []
        self.rotate()

    # test controls ---------------------------------------------------------------------

    def rotate(self) -> None:
        """A new active CA and JWT key; old ones stay in the bundle."""
        n = next(self._counter)
        key = self._keys.generate_key(f"ca-{n}", KeyType.EC_P256)
        now = self.clock.now()
        builder = ca_certificate_builder(
            trust_domain=self.trust_domain,
            public_key=key.public_key(),
            not_before=now - timedelta(seconds=10),
            not_after=now + timedelta(days=1),
            issuer=None,
        )
        self._cas.append(_Ca(key.id, sign_certificate(key, builder)))
        jwt_key = self._keys.generate_key(f"jwt-{n}", KeyType.EC_P256)
        self._jwt_keys.append(jwt_key.id)
        self._changed()

    def put_entry(self, entry: MemEntry) -> None:
        old = self.entries.get(entry.id)
        if old is not None:
            entry.revision = old.revision + 1
        self.entries[entry.id] = entry
        self._changed()

    def delete_entry(self, entry_id: str) -> None:
        del self.entries[entry_id]
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            self._version += 1
            subs = list(self._subscribers)
        for cb in subs:
            cb()

    # IdentitySource --------------------------------------------------------------------

    def entries_for(self, selectors: frozenset[str]) -> Sequence[EntryView]:
        return [
            EntryView(id=e.id, spiffe_id=e.spiffe_id, revision=e.revision, hint=e.hint)
            for e in self.entries.values()
            if e.selectors <= selectors
        ]

    def issue_x509(self, entry: EntryView) -> X509Material:
        ca = self._cas[-1]
        ttl = self.entries[entry.id].x509_ttl
        private = generate_private_key(KeyType.EC_P256)
        now = self.clock.now()
        builder = x509_svid_builder(
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            public_key=private.public_key(),
            issuer=ca.cert,
            not_before=now,
            not_after=now + ttl,
        )
        cert = sign_certificate(self._keys.get_key(ca.key_id), builder)
        self.issued_x509 += 1
        return X509Material(
            spiffe_id=entry.spiffe_id,
            chain=(cert,),
            private_key_der=private.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            not_before=now,
            not_after=now + ttl,
        )

    def issue_jwt(self, entry: EntryView, audience: Sequence[str]) -> str:
        key = self._keys.get_key(self._jwt_keys[-1])
        now = self.clock.now()
        claims = jwt_svid_claims(
            spiffe_id=SpiffeId.parse(entry.spiffe_id),
            audience=audience,
            issued_at=now,
            expires_at=now + timedelta(minutes=5),
            jti=new_jti(),
        )
        return encode_jws(claims, key=key, kid=key.id, algorithm="ES256")

    def bundle(self) -> Bundle:
        return Bundle(
            trust_domain=self.trust_domain,
            x509_authorities=tuple(c.cert for c in self._cas),
            jwt_authorities=tuple(
                JwtAuthority(kid=k, public_key=self._keys.get_key(k).public_key())
                for k in self._jwt_keys
            ),
            sequence=len(self._cas),
        )

    def bundles(self) -> tuple[Bundle, ...]:
        return (self.bundle(),)

    def validate_jwt(self, token: str, audience: str) -> JwtClaims:
        return validate_jwt_svid(token, audience, self.bundle(), self.clock.now())

    def signing_authority(self) -> Hashable:
        return self._cas[-1].key_id

    def version(self) -> Hashable:
        return self._version

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe


class SetGate:
    """A deny list held in a set (the runtime subsystem's table stands behind the real one)."""

    def __init__(self) -> None:
        self.denied: set[str] = set()

    def is_denied(self, *, spiffe_id: str) -> bool:
        return spiffe_id in self.denied
