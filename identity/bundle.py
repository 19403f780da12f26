"""SPIFFE bundles and the SVID validation every enforcement point uses.

Sources: SPIFFE Trust Domain and Bundle (spiffe/spiffe
``standards/SPIFFE_Trust_Domain_and_Bundle.md``) section 4 (the bundle is a JWKS, RFC 7517:
``use`` ``x509-svid`` keys carry exactly one ``x5c``
certificate, ``jwt-svid`` keys carry a ``kid``; ``spiffe_sequence`` and
``spiffe_refresh_hint`` at the top); X509-SVID 5 (validation); JWT-SVID 2-4 (header, claims,
validation), RFC 7515 (JWS) and RFC 7519 4.1 (``exp``, ``nbf``, ``aud``).

Rules kept here, once, for everyone:

- the bundle is chosen by the trust domain of the credential's own SPIFFE ID; there is never
  a merged trust store across trust domains;
- X.509: cryptography's verifier (``cryptography.x509.verification``) with an explicit time,
  after the leaf checks of X509-SVID 2/4 (exactly one URI SAN, CA:false, key usage);
- JWT: an explicit asymmetric algorithm allow-list (``none`` and ``HS*`` never), a required
  ``kid`` found in the bundle, required ``sub``/``aud``/``exp`` checked against the given time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import base64url_decode

from identity.errors import (
    BundleError,
    ChainVerificationError,
    JwtAlgorithmError,
    JwtAudienceError,
    JwtExpiredError,
    JwtMalformedError,
    JwtMissingClaimError,
    JwtMissingKidError,
    JwtNoBundleError,
    JwtNotYetValidError,
    JwtSignatureError,
    JwtSubjectError,
    JwtTypeError,
    JwtUnknownKidError,
    NoBundleError,
    X509SvidError,
)
from identity.keys import PublicKey
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId, TrustDomain
from identity.svid import JWT_ALGORITHMS, leaf_spiffe_id

USE_X509 = "x509-svid"
USE_JWT = "jwt-svid"


@dataclass(frozen=True, slots=True)
class JwtAuthority:
    """A JWT signing key published in a bundle under ``kid``."""

    kid: str
    public_key: PublicKey
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Bundle:
    """The trust anchors of one trust domain: X.509 CA certificates and JWT keys."""

    trust_domain: TrustDomain
    x509_authorities: tuple[x509.Certificate, ...] = ()
    jwt_authorities: tuple[JwtAuthority, ...] = ()
    sequence: int = 0
    refresh_hint_s: int | None = None
    _by_kid: dict[str, JwtAuthority] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_kid: dict[str, JwtAuthority] = {}
        for auth in self.jwt_authorities:
            if not auth.kid:
                raise BundleError("JWT authority without kid (Trust Domain and Bundle 4.2.2)")
            if auth.kid in by_kid:
                raise BundleError(f"duplicate JWT authority kid {auth.kid!r}")
            by_kid[auth.kid] = auth
        object.__setattr__(self, "_by_kid", by_kid)

    def jwt_key(self, kid: str) -> PublicKey | None:
        auth = self._by_kid.get(kid)
        return auth.public_key if auth else None

    # SPIFFE bundle JSON --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        keys: list[dict[str, Any]] = []
        for cert in self.x509_authorities:
            jwk = _public_jwk(cert.public_key())  # type: ignore[arg-type]
            jwk["use"] = USE_X509
            # RFC 7517 4.7: x5c holds standard (not URL-safe) base64 DER.
            jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
            keys.append(jwk)
        for auth in self.jwt_authorities:
            jwk = _public_jwk(auth.public_key)
            jwk["use"] = USE_JWT
            jwk["kid"] = auth.kid
            keys.append(jwk)
        out: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if self.refresh_hint_s is not None:
            out["spiffe_refresh_hint"] = self.refresh_hint_s
        return out

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, trust_domain: TrustDomain, data: str | bytes | Mapping[str, Any]) -> Bundle:
        """Parse a SPIFFE bundle (a JWKS). Keys of unknown ``use`` are ignored (4.2)."""
        if isinstance(data, str | bytes):
            try:
                doc = json.loads(data)
            except ValueError as exc:
                raise BundleError(f"bundle is not JSON: {exc}") from exc
        else:
            doc = data
        if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
            raise BundleError("bundle must be a JSON object with a 'keys' list (RFC 7517 5)")
        x509s: list[x509.Certificate] = []
        jwts: list[JwtAuthority] = []
        for i, jwk in enumerate(doc["keys"]):
            if not isinstance(jwk, Mapping):
                raise BundleError(f"bundle key {i} is not an object")
            use = jwk.get("use")
            if use == USE_X509:
                x5c = jwk.get("x5c")
                if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
                    raise BundleError(
                        f"bundle key {i}: x509-svid keys need exactly one x5c certificate (4.2.1)"
                    )
                try:
                    x509s.append(x509.load_der_x509_certificate(base64.b64decode(x5c[0])))
                except ValueError as exc:
                    raise BundleError(f"bundle key {i}: bad x5c certificate: {exc}") from exc
            elif use == USE_JWT:
                kid = jwk.get("kid")
                if not isinstance(kid, str) or not kid:
                    raise BundleError(f"bundle key {i}: jwt-svid keys need a kid (4.2.2)")
                jwts.append(JwtAuthority(kid, _parse_public_jwk(jwk, i)))
        seq = doc.get("spiffe_sequence", 0)
        hint = doc.get("spiffe_refresh_hint")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise BundleError("spiffe_sequence must be a non-negative integer")
        if hint is not None and (not isinstance(hint, int) or isinstance(hint, bool) or hint < 0):
            raise BundleError("spiffe_refresh_hint must be a non-negative integer (seconds)")
        return cls(trust_domain, tuple(x509s), tuple(jwts), seq, hint)

    # PEM ------------------------------------------------------------------------------------

    def to_pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode() for c in self.x509_authorities
        )

    @classmethod
    def from_pem(cls, trust_domain: TrustDomain, pem: str | bytes) -> Bundle:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise BundleError(f"bundle PEM holds no valid certificate: {exc}") from exc
        return cls(trust_domain, tuple(certs))


def _public_jwk(public: PublicKey) -> dict[str, Any]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(ECAlgorithm.to_jwk(public, as_dict=True))
    if isinstance(public, rsa.RSAPublicKey):
        return dict(RSAAlgorithm.to_jwk(public, as_dict=True))
    raise BundleError(f"unsupported public key {type(public).__name__}")


def _parse_public_jwk(jwk: Mapping[str, Any], index: int) -> PublicKey:
    kty = jwk.get("kty")
    key: (
        ec.EllipticCurvePrivateKey
        | ec.EllipticCurvePublicKey
        | rsa.RSAPrivateKey
        | rsa.RSAPublicKey
    )
    try:
        if kty == "EC":
            key = ECAlgorithm.from_jwk(dict(jwk))
        elif kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(jwk))
        else:
            raise BundleError(f"bundle key {index}: unsupported kty {kty!r}")
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"bundle key {index}: bad JWK: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return key
    raise BundleError(f"bundle key {index}: jwt-svid keys must be public keys")


class BundleSet(Mapping[TrustDomain, Bundle]):
    """Bundles by trust domain; validation picks exactly one, never a merged store."""

    def __init__(self, bundles: Iterable[Bundle] = ()) -> None:
        self._bundles: dict[TrustDomain, Bundle] = {}
        for b in bundles:
            if b.trust_domain in self._bundles:
                raise BundleError(f"two bundles for trust domain {b.trust_domain}")
            self._bundles[b.trust_domain] = b

    def __getitem__(self, key: TrustDomain) -> Bundle:
        return self._bundles[key]

    def __iter__(self) -> Iterator[TrustDomain]:
        return iter(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def with_bundle(self, bundle: Bundle) -> BundleSet:
        """A copy where ``bundle`` replaces its trust domain's bundle."""
        rest = [b for td, b in self._bundles.items() if td != bundle.trust_domain]
        return BundleSet([*rest, bundle])


Bundles = Bundle | BundleSet


def _pick(bundles: Bundles, td: TrustDomain) -> Bundle | None:
    if isinstance(bundles, Bundle):
        return bundles if bundles.trust_domain == td else None
    return bundles.get(td)


# X.509-SVID validation (X509-SVID 5) --------------------------------------------------------


def validate_x509_svid(
    chain: list[x509.Certificate] | tuple[x509.Certificate, ...],
    bundles: Bundles,
    now: datetime,
) -> SpiffeId:
    """The SPIFFE ID of a verified X.509-SVID chain (leaf first); raises X509SvidError."""
    if not chain:
        raise X509SvidError("empty certificate chain (X509-SVID 5: a leaf is required)")
    leaf, intermediates = chain[0], list(chain[1:])
    spiffe_id = leaf_spiffe_id(leaf)
    bundle = _pick(bundles, spiffe_id.trust_domain)
    if bundle is None or not bundle.x509_authorities:
        raise NoBundleError(
            f"no X.509 bundle for trust domain {spiffe_id.trust_domain} of {spiffe_id}"
        )
    for cert in intermediates:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise ChainVerificationError("intermediate lacks CA:true (X509-SVID 4.1)")
    verifier = (
        PolicyBuilder()
        .store(Store(list(bundle.x509_authorities)))
        .time(now.astimezone(UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise ChainVerificationError(
            f"X.509-SVID {spiffe_id} does not chain to the bundle of "
            f"{spiffe_id.trust_domain}: {exc}"
        ) from exc
    return spiffe_id


# JWT-SVID validation (JWT-SVID 4) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JwtClaims:
    """The verified claims of a JWT-SVID."""

    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expires_at: datetime
    issued_at: datetime | None
    kid: str
    claims: Mapping[str, Any]


def _numeric_date(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JwtMalformedError(f"JWT claim {name!r} must be a NumericDate (RFC 7519 2)")
    return datetime.fromtimestamp(value, UTC)


def validate_jwt_svid(token: str, audience: str, bundles: Bundles, now: datetime) -> JwtClaims:
    """Verify a JWT-SVID for ``audience`` at ``now``; raises a JwtSvidError subclass."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise JwtMalformedError("JWT-SVID must be a JWS compact serialisation (RFC 7515 7.1)")
    if not audience:
        raise JwtAudienceError("audience to validate against must not be empty (JWT-SVID 3.2)")
    try:
        header = jwt.get_unverified_header(token)
        payload = json.loads(base64url_decode(token.split(".")[1].encode("ascii")))
    except (jwt.DecodeError, ValueError, UnicodeEncodeError) as exc:
        raise JwtMalformedError(f"JWT-SVID cannot be decoded: {exc}") from exc
    if not isinstance(payload, dict):
        raise JwtMalformedError("JWT-SVID payload must be a JSON object (RFC 7519 7.2)")
    alg = header.get("alg")
    if alg not in JWT_ALGORITHMS:
        raise JwtAlgorithmError(
            f"JWT-SVID algorithm {alg!r} is not allowed (JWT-SVID 2.1: "
            f"one of {', '.join(sorted(JWT_ALGORITHMS))})"
        )
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise JwtTypeError(f"JWT-SVID typ {typ!r} must be JWT or JOSE (JWT-SVID 2.3)")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtMissingKidError("JWT-SVID header has no kid (JWT-SVID 2.2)")
    sub = payload.get("sub")
    if sub is None:
        raise JwtMissingClaimError("sub")
    try:
        spiffe_id = SpiffeId.parse(sub)
    except InvalidSpiffeIdError as exc:
        raise JwtSubjectError(f"JWT-SVID sub is not a SPIFFE ID (JWT-SVID 3.1): {exc}") from exc
    bundle = _pick(bundles, spiffe_id.trust_domain)
    if bundle is None:
        raise JwtNoBundleError(
            f"no JWT bundle for trust domain {spiffe_id.trust_domain} of {spiffe_id}"
        )
    public = bundle.jwt_key(kid)
    if public is None:
        raise JwtUnknownKidError(
            f"kid {kid!r} is not in the bundle of {spiffe_id.trust_domain} (JWT-SVID 4)"
        )
    try:
        # RFC 7515 5.2: the signature alone; claims are checked below against ``now``.
        jwt.PyJWS().decode_complete(token, key=public, algorithms=[alg])
    except jwt.PyJWTError as exc:
        raise JwtSignatureError(f"JWT-SVID signature does not verify: {exc}") from exc
    if "aud" not in payload:
        raise JwtMissingClaimError("aud")
    aud = payload["aud"]
    auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(auds, list) or not auds or not all(isinstance(a, str) for a in auds):
        raise JwtAudienceError("JWT-SVID aud must be a string or list of strings (RFC 7519 4.1.3)")
    if audience not in auds:
        raise JwtAudienceError(f"JWT-SVID audience {auds} does not contain {audience!r} (3.2)")
    exp = _numeric_date(payload, "exp")
    if exp is None:
        raise JwtMissingClaimError("exp")
    if now >= exp:
        raise JwtExpiredError(f"JWT-SVID expired at {exp.isoformat()} (RFC 7519 4.1.4)")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and now < nbf:
        raise JwtNotYetValidError(f"JWT-SVID not valid before {nbf.isoformat()} (4.1.5)")
    return JwtClaims(
        spiffe_id=spiffe_id,
        audience=tuple(auds),
        expires_at=exp,
        issued_at=_numeric_date(payload, "iat"),
        kid=kid,
        claims=payload,
    )
