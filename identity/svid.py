"""What goes into a SPIFFE credential, and whether what came out is spec-valid.

SPIRE splits this into ``pkg/server/credtemplate`` (templates) and
``pkg/server/credvalidator`` (checks on every credential signed); we keep both here because
they read the same standards:

- X509-SVID (spiffe/spiffe ``standards/X509-SVID.md``) sections 2 (exactly one URI SAN),
  4.1 (basic constraints), 4.3 (key usage), 4.4 (extended key usage), 5 (validation).
- JWT-SVID (``standards/JWT-SVID.md``) sections 2 (JOSE header: ``alg``, ``kid``, ``typ``)
  and 3 (claims ``sub``, ``aud``, ``exp``); RFC 7515 (JWS compact serialisation) and
  RFC 7519 4.1 (registered claims).

``identity.ca`` calls ``validate_*`` on every credential before handing it out; the same leaf
checks run in ``identity.bundle.validate_x509_svid`` at every enforcement point.
"""

from __future__ import annotations

import functools
import json
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
from jwt.utils import base64url_encode

from identity.errors import InvalidCaCertError, InvalidLeafError, JwtSvidError
from identity.keys import Key, PublicKey
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain

# Certificates start a little in the past so that peers with a slow clock accept them (SPIRE
# backdates by 10 s as well).
BACKDATE = timedelta(seconds=10)
# JWS algorithms a JWT-SVID may use (JWT-SVID 2.1 via RFC 7518 3.1). "none" and HS* are
# never accepted: a JWT-SVID is signed with an asymmetric key from the bundle.
JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)
CA_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
    ]
)


def new_serial() -> int:
    """A random positive serial of at most 20 octets (RFC 5280 4.1.2.2)."""
    return x509.random_serial_number()


def _spiffe_san(spiffe_id: SpiffeId) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(str(spiffe_id))


def ca_certificate_builder(
    *,
    trust_domain: TrustDomain,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
    issuer: x509.Certificate | None,
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """A signing CA: self-signed when ``issuer`` is None, else an intermediate under it.

    X509-SVID 4.1: CA flag set (critical); 4.3: keyCertSign (+cRLSign); 2: URI SAN of the trust
    domain ID. SKI/AKI as RFC 5280 4.2.1.1/4.2.1.2 (cryptography's verifier wants AKI).
    """
    serial = serial or new_serial()
    subject = x509.Name([*CA_SUBJECT, x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial))])
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    if issuer is None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        issuer_name = subject
    else:
        aki = _aki_from_issuer(issuer)
        issuer_name = issuer.subject
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_spiffe_san(trust_domain.id())]), critical=False
        )
    )


def _aki_from_issuer(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_LEAF_SUBJECT = [
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
]
_LEAF_NAME = x509.Name(_LEAF_SUBJECT)


def _preencoded(
    oid: x509.ObjectIdentifier, critical: bool, value: x509.ExtensionType
) -> x509.Extension[x509.ExtensionType]:
    """An extension whose DER (made by cryptography's own encoder) is computed once; the
    builder then copies bytes instead of re-encoding the same value for every SVID."""
    return x509.Extension(oid, critical, x509.UnrecognizedExtension(oid, value.public_bytes()))


# The fixed part of every X.509-SVID leaf (X509-SVID 4.1, 4.3, 4.4), encoded once.
_LEAF_BC = _preencoded(
    ExtensionOID.BASIC_CONSTRAINTS, True, x509.BasicConstraints(ca=False, path_length=None)
)
_LEAF_KU = _preencoded(
    ExtensionOID.KEY_USAGE,
    True,
    x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=True,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    ),
)
_LEAF_EKU = _preencoded(
    ExtensionOID.EXTENDED_KEY_USAGE,
    False,
    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
)


@functools.lru_cache(maxsize=32)
def _subject(cert: x509.Certificate) -> x509.Name:
    return cert.subject


@functools.lru_cache(maxsize=32)
def _aki_from_issuer_cached(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    return _aki_from_issuer(issuer)


@functools.lru_cache(maxsize=32)
def _aki_extension(issuer: x509.Certificate) -> x509.Extension[x509.ExtensionType]:
    return _preencoded(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False, _aki_from_issuer(issuer))


def x509_svid_builder(
    *,
    spiffe_id: SpiffeId,
    public_key: PublicKey,
    issuer: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
    dns_names: Sequence[str] = (),
    serial: int | None = None,
) -> x509.CertificateBuilder:
    """An X.509-SVID leaf (X509-SVID 2, 4.1, 4.3, 4.4; SPIRE credtemplate)."""
    name = _LEAF_NAME
    if dns_names:
        name = x509.Name([*_LEAF_SUBJECT, x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])])
    sans: list[x509.GeneralName] = [_spiffe_san(spiffe_id)]
    sans += [x509.DNSName(n) for n in dns_names]
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        _LEAF_BC,
        _LEAF_KU,
        _LEAF_EKU,
        x509.Extension(
            ExtensionOID.SUBJECT_KEY_IDENTIFIER,
            False,
            x509.SubjectKeyIdentifier.from_public_key(public_key),
        ),
        _aki_extension(issuer),
        x509.Extension(
            ExtensionOID.SUBJECT_ALTERNATIVE_NAME, False, x509.SubjectAlternativeName(sans)
        ),
    ]
    return x509.CertificateBuilder(
        issuer_name=_subject(issuer),
        subject_name=name,
        public_key=public_key,
        serial_number=serial or new_serial(),
        not_valid_before=not_before - BACKDATE,
        not_valid_after=not_after,
        extensions=extensions,
    )


# Validators -------------------------------------------------------------------------------


def _extensions(cert: x509.Certificate) -> dict[type[x509.ExtensionType], x509.Extension[Any]]:
    """Every extension of ``cert`` by value type, parsed once."""
    return {type(e.value): e for e in cert.extensions}


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(cls)
    except x509.ExtensionNotFound:
        return None


def leaf_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X.509-SVID leaf, checking X509-SVID 2, 4.1 and 4.3.

    Raises InvalidLeafError naming the rule broken.
    """
    return _check_leaf(_extensions(cert))


def _check_leaf(exts: dict[type[x509.ExtensionType], x509.Extension[Any]]) -> SpiffeId:
    san = exts.get(x509.SubjectAlternativeName)
    if san is None:
        raise InvalidLeafError("leaf has no URI SAN (X509-SVID 2: exactly one is required)")
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise InvalidLeafError(
            f"leaf has {len(uris)} URI SANs (X509-SVID 2: exactly one is required)"
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except InvalidSpiffeIdError as exc:
        raise InvalidLeafError(f"leaf URI SAN is not a valid SPIFFE ID: {exc}") from exc
    if not spiffe_id.path:
        raise InvalidLeafError(
            f"leaf SPIFFE ID {spiffe_id} has no path (X509-SVID 2: a leaf names a workload)"
        )
    bc = exts.get(x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        raise InvalidLeafError("leaf has CA:true (X509-SVID 4.1: leaf CA flag must be false)")
    ku = exts.get(x509.KeyUsage)
    if ku is None:
        raise InvalidLeafError("leaf has no key usage (X509-SVID 4.3: digitalSignature required)")
    usage = ku.value
    if not usage.digital_signature:
        raise InvalidLeafError("leaf key usage lacks digitalSignature (X509-SVID 4.3)")
    if usage.key_cert_sign or usage.crl_sign:
        raise InvalidLeafError("leaf key usage has keyCertSign or cRLSign (X509-SVID 4.3)")
    return spiffe_id


def validate_issued_x509_svid(
    cert: x509.Certificate, *, spiffe_id: SpiffeId, issuer: x509.Certificate
) -> None:
    """What the CA checks on a leaf it has just signed (SPIRE credvalidator)."""
    exts = _extensions(cert)
    got = _check_leaf(exts)
    if got != spiffe_id:
        raise InvalidLeafError(f"issued leaf names {got}, expected {spiffe_id}")
    bc = exts.get(x509.BasicConstraints)
    if bc is None or not bc.critical:
        raise InvalidLeafError("leaf basic constraints must be present and critical (4.1)")
    eku = exts.get(x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.CLIENT_AUTH not in eku.value:
        raise InvalidLeafError("leaf lacks EKU clientAuth (X509-SVID 4.4)")
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku.value:
        raise InvalidLeafError("leaf lacks EKU serverAuth (X509-SVID 4.4)")
    if cert.not_valid_after_utc > issuer.not_valid_after_utc:
        raise InvalidLeafError("leaf outlives its issuing CA")
    aki = exts.get(x509.AuthorityKeyIdentifier)
    if aki is None or aki.value != _aki_from_issuer_cached(issuer):
        raise InvalidLeafError("leaf authority key identifier does not name its issuer (RFC 5280)")
    if cert.issuer != _subject(issuer):
        raise InvalidLeafError("leaf issuer name is not its CA's subject (RFC 5280 4.1.2.4)")


def validate_ca_certificate(cert: x509.Certificate, trust_domain: TrustDomain) -> None:
    """A signing certificate: CA:true (4.1), keyCertSign (4.3), URI SAN of the trust domain."""
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:  # type: ignore[attr-defined]
        raise InvalidCaCertError("signing certificate lacks CA:true (X509-SVID 4.1)")
    if not bc.critical:
        raise InvalidCaCertError("signing certificate basic constraints not critical (4.1)")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:  # type: ignore[attr-defined]
        raise InvalidCaCertError("signing certificate lacks keyCertSign (X509-SVID 4.3)")
    san = _ext(cert, x509.SubjectAlternativeName)
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []  # type: ignore[attr-defined]
    if uris != [str(trust_domain.id())]:
        raise InvalidCaCertError(
            f"signing certificate URI SAN {uris} is not [{trust_domain.id()}] (X509-SVID 2)"
        )
    for cls in (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier):
        if _ext(cert, cls) is None:
            raise InvalidCaCertError(f"signing certificate lacks {cls.__name__} (RFC 5280)")


# JWT-SVID ---------------------------------------------------------------------------------


def new_jti() -> str:
    return secrets.token_urlsafe(18)


def jwt_svid_claims(
    *,
    spiffe_id: SpiffeId,
    audience: Sequence[str],
    issued_at: datetime,
    expires_at: datetime,
    jti: str,
) -> dict[str, object]:
    """JWT-SVID 3 claims: ``sub`` the SPIFFE ID, ``aud`` a list, ``exp``; plus ``iat``/``jti``."""
    if not audience or any(not isinstance(a, str) or not a for a in audience):
        raise JwtSvidError("JWT-SVID audience must be a non-empty list of strings (JWT-SVID 3.2)")
    if not spiffe_id.path:
        raise JwtSvidError(f"JWT-SVID subject {spiffe_id} has no path (JWT-SVID 3.1)")
    return {
        "sub": str(spiffe_id),
        "aud": list(audience),
        "exp": int(expires_at.timestamp()),
        "iat": int(issued_at.timestamp()),
        "jti": jti,
    }


def _json_b64(obj: object) -> bytes:
    return base64url_encode(json.dumps(obj, separators=(",", ":")).encode())


_EC_WIDTH = {"ES256": 32, "ES384": 48, "ES512": 66}


@functools.lru_cache(maxsize=64)
def _jws_header(algorithm: str, kid: str) -> bytes:
    return _json_b64({"alg": algorithm, "kid": kid, "typ": "JWT"})


def encode_jws(claims: dict[str, object], *, key: Key, kid: str, algorithm: str) -> str:
    """JWS compact serialisation (RFC 7515 7.1) with header ``alg``, ``kid``, ``typ: JWT``."""
    if algorithm not in JWT_ALGORITHMS:
        raise JwtSvidError(f"algorithm {algorithm} is not allowed for JWT-SVIDs (JWT-SVID 2.1)")
    signing_input = _jws_header(algorithm, kid) + b"." + _json_b64(claims)
    signature = key.sign(signing_input, algorithm)
    if algorithm.startswith("ES"):
        # RFC 7518 3.4: ECDSA signatures are R || S (fixed width), not DER.
        r, s_ = decode_dss_signature(signature)
        width = _EC_WIDTH[algorithm]
        signature = r.to_bytes(width, "big") + s_.to_bytes(width, "big")
    return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


def validate_issued_jwt_claims(
    claims: dict[str, object], *, spiffe_id: SpiffeId, audience: Sequence[str]
) -> None:
    """What the CA checks on a JWT-SVID's claims before signing (JWT-SVID 3)."""
    if claims.get("sub") != str(spiffe_id):
        raise JwtSvidError(f"JWT-SVID sub {claims.get('sub')!r} is not {spiffe_id} (3.1)")
    aud = claims.get("aud")
    if not isinstance(aud, list) or not aud or list(audience) != aud:
        raise JwtSvidError("JWT-SVID aud must be the non-empty requested list (3.2)")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int) or exp <= iat:
        raise JwtSvidError("JWT-SVID exp must be an integer NumericDate after iat (3.3)")
