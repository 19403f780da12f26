"""The certificate authority: signs X.509-SVIDs and JWT-SVIDs with the active slot only.

As SPIRE's ``pkg/server/ca/ca.go``: one params type per operation, signing with whatever
:class:`identity.rotation.AuthorityManager` says is active (rotation never leaks in here),
and every credential validated against the spec (``identity.svid``) before it is returned.
SVID lifetimes default to the configured TTLs and are capped by the signing authority's
remaining life, so an old CA outlives everything it signed. Every SVID issued is an audit
record (``identity.svid.issued``) that must be durable before the SVID is handed out.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from identity.bundle import Bundle
from identity.errors import CaError, DeniedError
from identity.keys import (
    JWS_ALGORITHMS,
    KeyType,
    PrivateKey,
    PublicKey,
    generate_private_key,
    key_type_of,
    sign_certificate,
)
from identity.rotation import AuthorityManager, Kind
from identity.spiffeid import SpiffeId, TrustDomain
from identity.svid import (
    encode_jws,
    jwt_svid_claims,
    new_jti,
    validate_issued_jwt_claims,
    validate_issued_x509_svid,
    x509_svid_builder,
)
from zerogate.audit import AuditSink
from zerogate.clock import Clock

log = logging.getLogger(__name__)

AUDIT_TIMEOUT_S = 10.0


class DenyCheck(Protocol):
    def is_denied(self, *, spiffe_id: SpiffeId | str | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class X509SvidParams:
    """What to put in an X.509-SVID. Give ``public_key`` or ``csr``; neither: we mint a key."""

    spiffe_id: SpiffeId
    public_key: PublicKey | None = None
    csr: x509.CertificateSigningRequest | None = None
    ttl: timedelta | None = None
    dns_names: tuple[str, ...] = ()
    hint: str = ""
    entry_id: str | None = None
    selectors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class X509Svid:
    """An issued X.509-SVID: leaf first, then our CA when it sits under an upstream."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKey | None
    expires_at: datetime
    hint: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def serial_hex(self) -> str:
        return format(self.leaf.serial_number, "x")

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.cert_chain)

    def chain_der(self) -> bytes:
        """Concatenated DER, the Workload API's ``x509_svid`` field."""
        return b"".join(c.public_bytes(serialization.Encoding.DER) for c in self.cert_chain)

    def key_pem(self) -> bytes:
        if self.private_key is None:
            raise CaError("this SVID's private key is held by the workload, not by us")
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def key_der(self) -> bytes:
        """PKCS#8 DER, the Workload API's ``x509_svid_key`` field."""
        if self.private_key is None:
            raise CaError("this SVID's private key is held by the workload, not by us")
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True, slots=True)
class JwtSvidParams:
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    ttl: timedelta | None = None
    hint: str = ""
    entry_id: str | None = None
    selectors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JwtSvid:
    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    kid: str
    jti: str
    hint: str = ""
    claims: Mapping[str, object] = field(default_factory=dict)

    @property
    def jti_hash(self) -> str:
        return jti_hash(self.jti)


def jti_hash(jti: str) -> str:
    """What the audit log and the deny list keep of a JWT-SVID: SHA-256 hex of its jti."""
    return hashlib.sha256(jti.encode()).hexdigest()


class CertificateAuthority:
    """Signs SVIDs for one trust domain with the active authorities of ``manager``."""

    def __init__(
        self,
        manager: AuthorityManager,
        *,
        clock: Clock,
        x509_svid_ttl: timedelta = timedelta(hours=1),
        jwt_svid_ttl: timedelta = timedelta(minutes=5),
        jwt_algorithm: str | None = None,
        workload_key_type: KeyType = KeyType.EC_P256,
        audit: AuditSink | None = None,
        deny_list: DenyCheck | None = None,
    ) -> None:
        self.manager = manager
        self.clock = clock
        self.x509_svid_ttl = x509_svid_ttl
        self.jwt_svid_ttl = jwt_svid_ttl
        self.jwt_algorithm = jwt_algorithm
        if jwt_algorithm is not None and jwt_algorithm not in JWS_ALGORITHMS[manager.key_type]:
            raise CaError(
                f"jwt_algorithm {jwt_algorithm} does not fit key type {manager.key_type}: "
                f"use one of {', '.join(JWS_ALGORITHMS[manager.key_type])}"
            )
        self.workload_key_type = workload_key_type
        self.audit = audit
        self.deny_list = deny_list

    @property
    def trust_domain(self) -> TrustDomain:
        return self.manager.trust_domain

    def bundle(self) -> Bundle:
        return self.manager.bundle()

    def on_change(self, callback: Callable[[Bundle], None]) -> Callable[[], None]:
        """Call ``callback(bundle)`` after every rotation step; returns unsubscribe."""
        return self.manager.subscribe(callback)

    subscribe = on_change

    def is_tainted(self, svid: X509Svid | x509.Certificate) -> bool:
        """Whether the SVID was signed by a tainted CA (streams must re-issue it now)."""
        cert = svid.leaf if isinstance(svid, X509Svid) else svid
        return self.manager.is_tainted(cert)

    # Internals -----------------------------------------------------------------------------

    def _check_subject(self, spiffe_id: SpiffeId) -> None:
        if not isinstance(spiffe_id, SpiffeId):
            raise CaError(f"spiffe_id must be a parsed SpiffeId, got {type(spiffe_id).__name__}")
        if not spiffe_id.member_of(self.manager.trust_domain):
            raise CaError(
                f"{spiffe_id} is not in trust domain {self.manager.trust_domain}: "
                "this CA signs only its own trust domain"
            )
        if not spiffe_id.path:
            raise CaError(f"{spiffe_id} has no path: SVIDs name workloads (X509-SVID 2)")
        if self.deny_list is not None and self.deny_list.is_denied(spiffe_id=spiffe_id):
            raise DeniedError(f"{spiffe_id} is on the deny list")

    def _lifetime(
        self, requested: timedelta | None, default: timedelta, now: datetime, ceiling: datetime
    ) -> datetime:
        ttl = requested if requested is not None else default
        if ttl <= timedelta(0):
            raise CaError(f"TTL must be positive, got {ttl.total_seconds():g}s")
        expires = min(now + ttl, ceiling)
        if expires <= now:
            raise CaError("the signing authority has expired: rotate the CA")
        return expires

    def _audit(self, payload: dict[str, Any]) -> None:
        if self.audit is None:
            return
        # Fail closed: the SVID is not handed out unless its record is durable.
        self.audit.append("identity.svid.issued", payload).result(timeout=AUDIT_TIMEOUT_S)

    # Issuance ------------------------------------------------------------------------------

    def issue_x509_svid(self, params: X509SvidParams) -> X509Svid:
        self._check_subject(params.spiffe_id)
        private: PrivateKey | None = None
        if params.csr is not None:
            if params.public_key is not None:
                raise CaError("give either public_key or csr, not both")
            if not params.csr.is_signature_valid:
                raise CaError("CSR signature does not verify (PKCS#10 proof of possession)")
            public = params.csr.public_key()
        elif params.public_key is not None:
            public = params.public_key
        else:
            private = generate_private_key(self.workload_key_type)
            public = private.public_key()
        try:
            key_type_of(public)  # type: ignore[arg-type]
        except Exception as exc:
            raise CaError(f"unsupported workload key: {exc}") from exc
        now = self.clock.now()
        authority, signer = self.manager.active(Kind.X509)
        assert authority.certificate is not None
        issuer = authority.certificate
        expires = self._lifetime(params.ttl, self.x509_svid_ttl, now, issuer.not_valid_after_utc)
        builder = x509_svid_builder(
            spiffe_id=params.spiffe_id,
            public_key=public,  # type: ignore[arg-type]
            issuer=issuer,
            not_before=now,
            not_after=expires,
            dns_names=params.dns_names,
        )
        leaf = sign_certificate(signer, builder)
        validate_issued_x509_svid(leaf, spiffe_id=params.spiffe_id, issuer=issuer)
        chain = (
            (leaf,) if self.manager.upstream is None else (leaf, issuer, *authority.upstream_chain)
        )
        svid = X509Svid(params.spiffe_id, chain, private, expires, params.hint)
        if self.audit is not None:
            self._audit(
                {
                    "type": "x509",
                    "spiffe_id": str(params.spiffe_id),
                    "serial": svid.serial_hex,
                    "expires_at": expires.isoformat(),
                    "ca_key_id": authority.key_id,
                    "entry_id": params.entry_id,
                    "selectors": list(params.selectors),
                }
            )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "event=identity.svid.issued type=x509 spiffe_id=%s serial=%s",
                params.spiffe_id,
                svid.serial_hex,
            )
        return svid

    def issue_jwt_svid(self, params: JwtSvidParams) -> JwtSvid:
        self._check_subject(params.spiffe_id)
        audience = tuple(params.audience)
        now = self.clock.now()
        authority, signer = self.manager.active(Kind.JWT)
        expires = self._lifetime(params.ttl, self.jwt_svid_ttl, now, authority.not_after)
        jti = new_jti()
        claims = jwt_svid_claims(
            spiffe_id=params.spiffe_id,
            audience=audience,
            issued_at=now,
            expires_at=expires,
            jti=jti,
        )
        # exp is whole seconds (RFC 7519 NumericDate); report what the token says.
        expires = datetime.fromtimestamp(int(claims["exp"]), now.tzinfo)  # type: ignore[call-overload]
        validate_issued_jwt_claims(claims, spiffe_id=params.spiffe_id, audience=audience)
        algorithm = self.jwt_algorithm or JWS_ALGORITHMS[signer.key_type][0]
        token = encode_jws(claims, key=signer, kid=authority.kid, algorithm=algorithm)
        svid = JwtSvid(
            token=token,
            spiffe_id=params.spiffe_id,
            audience=audience,
            issued_at=now,
            expires_at=expires,
            kid=authority.kid,
            jti=jti,
            hint=params.hint,
            claims=claims,
        )
        if self.audit is not None:
            self._audit(
                {
                    "type": "jwt",
                    "spiffe_id": str(params.spiffe_id),
                    "jti_hash": svid.jti_hash,
                    "audience": list(audience),
                    "expires_at": expires.isoformat(),
                    "kid": authority.kid,
                    "entry_id": params.entry_id,
                    "selectors": list(params.selectors),
                }
            )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "event=identity.svid.issued type=jwt spiffe_id=%s jti_hash=%s",
                params.spiffe_id,
                svid.jti_hash[:16],
            )
        return svid

    def issue_server_svid(
        self, spiffe_id: SpiffeId, dns_names: Sequence[str] = (), ttl: timedelta | None = None
    ) -> X509Svid:
        """The control plane's own SVID (key generated here), for its TLS listeners."""
        return self.issue_x509_svid(
            X509SvidParams(spiffe_id=spiffe_id, dns_names=tuple(dns_names), ttl=ttl)
        )
