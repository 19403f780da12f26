"""Who is calling: the SPIFFE ID of a model call, from its credential, with identity's
validators (no cryptography of our own).

Order (DESIGN.md 7):

1. **mTLS X.509-SVID.** The verified client leaf from the connection (``zerogate.tls``
   publishes it in the ASGI TLS extension, since uvicorn does not), re-checked with
   ``validate_x509_svid`` against the bundle of the leaf's own trust domain (X509-SVID 5).
   When the peer is a configured trusted proxy, its ``x-forwarded-client-cert`` (or, without
   one, the bearer token it passed through) names the caller instead.
2. **JWT-SVID bearer** (``Authorization: Bearer``, RFC 6750 2.1) validated with
   ``validate_jwt_svid`` for the service's audience(s) (JWT-SVID 3.2). A verified token is
   cached (bounded LRU keyed by the token's SHA-256) until its ``exp``, so the signature is
   checked once per token; a hit still re-checks expiry and that its ``kid`` is still in the
   bundle (a tainted or removed key invalidates cached tokens at once).
3. **x-forwarded-client-cert** (Envoy's XFCC, ``By=...;Hash=...;URI=spiffe://...``) only from a
   peer whose own X.509-SVID is one of ``trusted_proxy_ids``; from anyone else it is refused.

Anything else is a 401 naming what was wrong. A valid credential of a SPIFFE ID (or SVID
serial, or JWT ``jti``) on the deny list is a 403: revocation beats a still-valid token. A
bundle older than its refresh hint x ``staleness_factor`` makes every call a 503.
"""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cryptography import x509
from starlette.datastructures import Headers

from identity.bundle import JwtClaims, validate_jwt_svid, validate_x509_svid
from identity.errors import IdentityError, JwtAudienceError
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId
from inference.refusals import AuthenticationError, BundleStaleError, IdentityDeniedError
from inference.trust import TrustSnapshot, TrustSource
from zerogate.clock import Clock
from zerogate.tls import Scope, peer_certificate

Method = Literal["mtls", "jwt", "xfcc"]
XFCC_HEADER = "x-forwarded-client-cert"


class DenyCheck(Protocol):
    """``identity.denylist.DenyList`` as the gate uses it."""

    def is_denied(
        self,
        *,
        spiffe_id: SpiffeId | str | None = None,
        x509_serial: int | str | None = None,
        jti_hash: str | None = None,
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    spiffe_id: SpiffeId
    method: Method
    via: SpiffeId | None = None  # the trusted proxy, for XFCC

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.trust_domain.name

    @property
    def path(self) -> str:
        return self.spiffe_id.path


class TokenCache:
    """Verified JWT-SVIDs by SHA-256 of the token, least recently used evicted first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[bytes, JwtClaims] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> JwtClaims | None:
        with self._lock:
            claims = self._items.get(key)
            if claims is not None:
                self._items.move_to_end(key)
            return claims

    def put(self, key: bytes, claims: JwtClaims) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._items[key] = claims
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def drop(self, key: bytes) -> None:
        with self._lock:
            self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """Envoy's x-forwarded-client-cert: elements split by ``,``, pairs by ``;``, values
    optionally double-quoted (then ``,;=`` may appear inside). Keys are case-insensitive;
    values of ``Cert``/``Chain`` stay URL-encoded PEM."""
    elements: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key, buf = "", []
    in_quotes, reading_key = False, True
    i = 0
    while i < len(value):
        ch = value[i]
        if in_quotes:
            if ch == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 2
                continue
            if ch == '"':
                in_quotes = False
            else:
                buf.append(ch)
        elif ch == '"' and not reading_key:
            in_quotes = True
        elif ch == "=" and reading_key:
            key, buf, reading_key = "".join(buf).strip().lower(), [], False
        elif ch in ";,":
            if key:
                current[key] = "".join(buf).strip()
            elif "".join(buf).strip():
                raise ValueError(f"pair without '=' in {XFCC_HEADER}")
            key, buf, reading_key = "", [], True
            if ch == ",":
                elements.append(current)
                current = {}
        else:
            buf.append(ch)
        i += 1
    if in_quotes:
        raise ValueError(f"unterminated quote in {XFCC_HEADER}")
    if key:
        current[key] = "".join(buf).strip()
    elif "".join(buf).strip():
        raise ValueError(f"pair without '=' in {XFCC_HEADER}")
    elements.append(current)
    return [e for e in elements if e]


class Authenticator:
    """Turns a request's credential into a ``Principal`` or raises a ``Refusal``."""

    def __init__(
        self,
        trust: TrustSource,
        *,
        audiences: Sequence[str],
        clock: Clock,
        deny: DenyCheck | None = None,
        trusted_proxy_ids: Sequence[str] = (),
        staleness_factor: float = 3.0,
        token_cache_size: int = 10_000,
    ) -> None:
        if not audiences:
            raise ValueError("at least one JWT-SVID audience is required (JWT-SVID 3.2)")
        self._trust = trust
        self._audiences = tuple(audiences)
        self._clock = clock
        self._deny = deny
        self._proxies = frozenset(str(SpiffeId.parse(p)) for p in trusted_proxy_ids)
        self._factor = staleness_factor
        self.token_cache = TokenCache(token_cache_size)

    def authenticate(self, scope: Scope, headers: Headers | Mapping[str, str]) -> Principal:
        now = self._clock.now()
        snapshot = self._trust.current()
        if snapshot.stale(now, self._factor):
            raise BundleStaleError(
                f"trust bundle last refreshed {snapshot.fetched_at.isoformat()}, more than "
                f"{snapshot.refresh_hint_s:g}s x {self._factor:g} ago: refusing calls until "
                "it is refreshed",
            )
        principal = self._identify(scope, headers, snapshot)
        self._check_denied(principal.spiffe_id)
        return principal

    # --- the credential kinds -------------------------------------------------------------

    def _identify(
        self, scope: Scope, headers: Headers | Mapping[str, str], snapshot: TrustSnapshot
    ) -> Principal:
        xfcc = headers.get(XFCC_HEADER)
        bearer = _bearer(headers.get("authorization"))
        cert = _peer(scope)
        if cert is not None:
            peer = self._x509(cert, snapshot, what="client certificate")
            if str(peer) in self._proxies:
                if xfcc is not None:
                    return self._xfcc(xfcc, peer, snapshot)
                if bearer is not None:
                    return self._jwt(bearer, snapshot)
            elif xfcc is not None:
                raise AuthenticationError(
                    f"{XFCC_HEADER} is only accepted from a trusted proxy; {peer} is not one"
                )
            return Principal(peer, "mtls")
        if xfcc is not None:
            raise AuthenticationError(
                f"{XFCC_HEADER} is only accepted over mTLS from a trusted proxy"
            )
        if bearer is not None:
            return self._jwt(bearer, snapshot)
        if headers.get("authorization") is not None:
            raise AuthenticationError(
                "the Authorization header must be 'Bearer <JWT-SVID>' (RFC 6750 2.1)"
            )
        raise AuthenticationError(
            "no credential: present an X.509-SVID client certificate or a JWT-SVID bearer token"
        )

    def _x509(self, cert: x509.Certificate, snapshot: TrustSnapshot, *, what: str) -> SpiffeId:
        try:
            spiffe_id = validate_x509_svid([cert], snapshot.bundles, self._clock.now())
        except IdentityError as exc:
            raise AuthenticationError(f"{what} is not a valid X.509-SVID: {exc}") from exc
        if self._deny is not None and self._deny.is_denied(x509_serial=cert.serial_number):
            raise IdentityDeniedError(
                f"the X.509-SVID of {spiffe_id} (serial {cert.serial_number:x}) is revoked",
                spiffe_id=str(spiffe_id),
            )
        return spiffe_id

    def _jwt(self, token: str, snapshot: TrustSnapshot) -> Principal:
        now = self._clock.now()
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        claims = self.token_cache.get(key)
        if claims is not None:
            bundle = snapshot.bundles.get(claims.spiffe_id.trust_domain)
            if now >= claims.expires_at or bundle is None or bundle.jwt_key(claims.kid) is None:
                self.token_cache.drop(key)
                claims = None  # verify afresh: the error names what is wrong now
        if claims is None:
            claims = self._verify(token, snapshot)
            self.token_cache.put(key, claims)
        jti = claims.claims.get("jti")
        if (
            self._deny is not None
            and isinstance(jti, str)
            and self._deny.is_denied(jti_hash=hashlib.sha256(jti.encode()).hexdigest())
        ):
            raise IdentityDeniedError(
                f"this JWT-SVID of {claims.spiffe_id} is revoked", spiffe_id=str(claims.spiffe_id)
            )
        return Principal(claims.spiffe_id, "jwt")

    def _verify(self, token: str, snapshot: TrustSnapshot) -> JwtClaims:
        now = self._clock.now()
        last: IdentityError | None = None
        for audience in self._audiences:
            try:
                return validate_jwt_svid(token, audience, snapshot.bundles, now)
            except JwtAudienceError as exc:
                last = exc
            except IdentityError as exc:
                raise AuthenticationError(f"invalid JWT-SVID: {exc}") from exc
        raise AuthenticationError(f"invalid JWT-SVID: {last}")

    def _xfcc(self, value: str, proxy: SpiffeId, snapshot: TrustSnapshot) -> Principal:
        try:
            elements = parse_xfcc(value)
        except ValueError as exc:
            raise AuthenticationError(f"malformed {XFCC_HEADER}: {exc}") from exc
        if not elements:
            raise AuthenticationError(f"empty {XFCC_HEADER}")
        # Envoy appends the element for its own downstream peer last (APPEND_FORWARD)
        element = elements[-1]
        by = element.get("by")
        if by is not None and by != str(proxy):
            raise AuthenticationError(
                f"{XFCC_HEADER} By={by} does not name the proxy that sent it ({proxy})"
            )
        uri = element.get("uri")
        if not uri:
            raise AuthenticationError(f"{XFCC_HEADER} carries no URI (SPIFFE ID) of the client")
        try:
            client = SpiffeId.parse(uri)
        except InvalidSpiffeIdError as exc:
            raise AuthenticationError(f"{XFCC_HEADER} URI is not a SPIFFE ID: {exc}") from exc
        if client.trust_domain not in snapshot.bundles:
            raise AuthenticationError(
                f"{XFCC_HEADER} client {client} is of trust domain {client.trust_domain}, "
                "for which this service holds no bundle"
            )
        if "cert" in element:
            try:
                cert = x509.load_pem_x509_certificate(
                    urllib.parse.unquote(element["cert"]).encode("ascii")
                )
            except ValueError as exc:
                raise AuthenticationError(f"{XFCC_HEADER} Cert is not a PEM certificate") from exc
            if self._x509(cert, snapshot, what=f"{XFCC_HEADER} Cert") != client:
                raise AuthenticationError(f"{XFCC_HEADER} Cert and URI name different IDs")
        return Principal(client, "xfcc", via=proxy)

    def _check_denied(self, spiffe_id: SpiffeId) -> None:
        if self._deny is not None and self._deny.is_denied(spiffe_id=spiffe_id):
            # the deny list's own reason (e.g. the Falco rule that revoked it) when it has one
            explain = getattr(self._deny, "denial_reason", None)
            why = explain(spiffe_id=spiffe_id) if callable(explain) else None
            raise IdentityDeniedError(
                f"{spiffe_id} is revoked (on the identity deny list)" + (f": {why}" if why else ""),
                spiffe_id=str(spiffe_id),
            )


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _peer(scope: Scope) -> x509.Certificate | None:
    try:
        return peer_certificate(scope)
    except ValueError as exc:
        raise AuthenticationError(f"client certificate cannot be parsed: {exc}") from exc


def describe(principal: Principal) -> dict[str, Any]:
    """The subject as audit records and spans carry it."""
    out: dict[str, Any] = {"spiffe_id": str(principal.spiffe_id), "method": principal.method}
    if principal.via is not None:
        out["via"] = str(principal.via)
    return out
