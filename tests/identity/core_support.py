"""Helpers for the identity core tests: a CA on a real database, forged certificates/tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.utils import base64url_encode

from identity.ca import CertificateAuthority
from identity.keys import Key, KeyType, MemoryKeyManager, generate_private_key, sign_certificate
from identity.rotation import AuthorityManager, Kind
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.clock import Clock
from zerogate.store import Database

TD = TrustDomain("example.org")
WORKLOAD = SpiffeId.parse("spiffe://example.org/workload")


def make_ca(
    db: Database,
    clock: Clock,
    *,
    trust_domain: TrustDomain = TD,
    ca_ttl: timedelta = timedelta(hours=24),
    key_type: KeyType = KeyType.EC_P256,
    **ca_kwargs: object,
) -> CertificateAuthority:
    manager = AuthorityManager(
        trust_domain=trust_domain,
        db=db,
        keys=MemoryKeyManager(),
        clock=clock,
        ca_ttl=ca_ttl,
        key_type=key_type,
    )
    manager.tick()
    return CertificateAuthority(manager, clock=clock, **ca_kwargs)  # type: ignore[arg-type]


def active_ca(ca: CertificateAuthority) -> tuple[x509.Certificate, Key]:
    authority, signer = ca.manager.active(Kind.X509)
    assert authority.certificate is not None
    return authority.certificate, signer


def forge_leaf(
    ca: CertificateAuthority,
    now: datetime,
    *,
    uris: list[str] | None = None,
    dns: list[str] | None = None,
    is_ca: bool = False,
) -> x509.Certificate:
    """A leaf signed by the active CA but built by the test, breaking a rule on purpose.
    With no ``uris`` and no ``dns`` it has no subjectAltName extension at all (RFC 5280
    section 4.2.1.6 forbids an empty one, and cryptography 51 refuses to build it)."""
    issuer, signer = active_ca(ca)
    public = generate_private_key(KeyType.EC_P256).public_key()
    uris = [str(WORKLOAD)] if uris is None else uris
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(seconds=10))
        .not_valid_after(now + timedelta(minutes=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return sign_certificate(signer, builder)


def jws(header: dict[str, object], claims: dict[str, object], signature: bytes) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64url_encode(json.dumps(obj).encode()).decode()

    return f"{part(header)}.{part(claims)}.{base64url_encode(signature).decode()}"


def hs256_with_public_key(ca: CertificateAuthority, kid: str, claims: dict[str, object]) -> str:
    """The algorithm-confusion attack: HMAC keyed with the bundle's public key PEM."""
    public = ca.bundle().jwt_authorities[0].public_key
    secret = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header: dict[str, object] = {"alg": "HS256", "kid": kid, "typ": "JWT"}

    def part(obj: dict[str, object]) -> bytes:
        return base64url_encode(json.dumps(obj).encode())

    signing_input = part(header) + b"." + part(claims)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64url_encode(mac)).decode()
