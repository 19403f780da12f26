"""The SPIFFE Workload API servicer (``SpiffeWorkloadAPI`` of the SPIFFE ``workload.proto``).

One job: check the request, attest the caller, ask the core (identity/workload_cache.py)
and convert the answer to protobuf. No issuance logic lives here.

Served with grpclib (an asyncio gRPC server) rather than grpcio because grpcio gives a
handler no way to reach the connection's socket: on a Unix socket ``context.peer()`` is just
``"unix:"`` and the auth context holds only the transport security type, so the caller's
``SO_PEERCRED`` cannot be read. grpclib exposes the asyncio transport of each connection and
therefore the socket; see docs/workload_api.md for the comparison. Clients are unchanged:
py-spiffe's grpcio ``WorkloadApiClient`` talks to it over the same HTTP/2 wire format.

Rules, with their source:

- Every request must carry the metadata ``workload.spiffe.io: true`` exactly once, else
  INVALID_ARGUMENT (SPIFFE Workload Endpoint sections 3 and 6).
- FetchX509SVID streams the full state at once and again after every change; a caller with
  no identity gets PERMISSION_DENIED, never an empty ``svids`` list (Workload API 4.3, 5.2.1).
  When the last identity of a stream is deleted, disabled or denied, the stream ends with
  PERMISSION_DENIED (the client "SHOULD cease using the redacted SVIDs", 5.2.1).
- FetchX509Bundles / FetchJWTBundles stream bundles keyed by the trust domain's SPIFFE ID;
  JWT bundles hold only ``use: jwt-svid`` keys, each with ``kid`` (6.2.2).
- FetchJWTSVID: ``audience`` must be non-empty (INVALID_ARGUMENT, 4.5); a requested
  ``spiffe_id`` the caller is not entitled to gives PERMISSION_DENIED (6.2.1).
- ValidateJWTSVID: empty ``audience`` or ``svid`` and every validation failure give
  INVALID_ARGUMENT; ``claims`` carry every claim, with ``aud`` always a list (6.2.3).
- Bundle and validation RPCs require the caller to hold an identity unless
  ``allow_unauthenticated_verifiers`` (as SPIRE's agent option of that name).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from identity import proto
from identity.attestation import AttestationError, WorkloadAttestation, peer_credentials
from identity.bundle import USE_JWT, Bundle
from identity.errors import IdentityError, JwtSvidError
from identity.spiffeid import InvalidSpiffeIdError, SpiffeId
from identity.workload_cache import WorkloadCache, X509State

log = logging.getLogger(__name__)

X509SvidStream = Stream[proto.X509SVIDRequest, proto.X509SVIDResponse]
X509BundlesStream = Stream[proto.X509BundlesRequest, proto.X509BundlesResponse]
JwtSvidStream = Stream[proto.JWTSVIDRequest, proto.JWTSVIDResponse]
JwtBundlesStream = Stream[proto.JWTBundlesRequest, proto.JWTBundlesResponse]
ValidateStream = Stream[proto.ValidateJWTSVIDRequest, proto.ValidateJWTSVIDResponse]


def check_security_header(metadata: Mapping[str, Any] | None) -> None:
    """Workload Endpoint 3 and 6: exactly one ``workload.spiffe.io`` value, ``true``
    (case-sensitive), else INVALID_ARGUMENT (clients must not retry)."""
    values = list(metadata.getall(proto.WORKLOAD_API_HEADER, [])) if metadata else []  # type: ignore[attr-defined]
    if values != [proto.WORKLOAD_API_HEADER_VALUE]:
        raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")


def _peer_socket(stream: Stream[Any, Any]) -> Any:
    # grpclib.protocol.Peer keeps the connection's asyncio transport as ``_transport``; its
    # public methods (addr, cert) do not cover SO_PEERCRED. grpclib is pinned (<0.5) and the
    # Workload API tests fail if this ever stops working.
    transport = getattr(stream.peer, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        raise AttestationError("the connection exposes no socket to read peer credentials from")
    return sock


T = TypeVar("T")


def unique_hints(items: Sequence[T], hint: Callable[[T], str]) -> list[T]:
    """Workload API 5.2.1/6.2.1: a non-empty hint must be unique in one response; like SPIRE,
    later identities repeating a hint are left out (entries are in a stable order)."""
    seen: set[str] = set()
    out: list[T] = []
    for item in items:
        h = hint(item)
        if h and h in seen:
            log.warning("event=workload_api.duplicate_hint hint=%s", h)
            continue
        seen.add(h)
        out.append(item)
    return out


def x509_response(state: X509State) -> proto.X509SVIDResponse:
    own, federated = _split_bundles(state.bundles)
    own_der = _x509_bundle_der(own)
    return proto.X509SVIDResponse(
        svids=[
            proto.X509SVID(
                spiffe_id=i.entry.spiffe_id,
                x509_svid=i.svid.chain_der(),
                x509_svid_key=i.svid.private_key_der,
                bundle=own_der,
                hint=i.entry.hint,
            )
            for i in unique_hints(state.identities, lambda i: i.entry.hint)
        ],
        federated_bundles={str(b.trust_domain.id()): _x509_bundle_der(b) for b in federated},
    )


def x509_bundles_response(bundles: Sequence[Bundle]) -> proto.X509BundlesResponse:
    return proto.X509BundlesResponse(
        bundles={str(b.trust_domain.id()): _x509_bundle_der(b) for b in bundles}
    )


def jwt_bundles_response(bundles: Sequence[Bundle]) -> proto.JWTBundlesResponse:
    return proto.JWTBundlesResponse(
        bundles={str(b.trust_domain.id()): jwt_jwks(b) for b in bundles}
    )


def jwt_jwks(bundle: Bundle) -> bytes:
    """The bundle's JWT-SVID keys as a JWK Set: only ``use: jwt-svid`` keys, each with
    ``kid`` (Workload API 6.2.2: "MUST NOT include keys with other uses")."""
    keys = [k for k in bundle.to_dict()["keys"] if k.get("use") == USE_JWT and k.get("kid")]
    return json.dumps({"keys": keys}, separators=(",", ":")).encode()


def _x509_bundle_der(bundle: Bundle) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in bundle.x509_authorities)


def _split_bundles(bundles: Sequence[Bundle]) -> tuple[Bundle, tuple[Bundle, ...]]:
    if not bundles:
        raise GRPCError(Status.UNAVAILABLE, "no trust bundle available yet")
    return bundles[0], tuple(bundles[1:])


def claims_struct(claims: Mapping[str, Any]) -> proto.Struct:
    out = dict(claims)
    aud = out.get("aud")
    if isinstance(aud, str):
        out["aud"] = [aud]  # JWT-SVID 3.2 / Workload API 6.2.3: aud as a list
    struct = proto.Struct()
    struct.update(out)
    return struct


class WorkloadApiService:
    """grpclib servable implementing ``SpiffeWorkloadAPI``."""

    def __init__(
        self,
        cache: WorkloadCache,
        attestation: WorkloadAttestation,
        *,
        allow_unauthenticated_verifiers: bool = False,
    ) -> None:
        self._cache = cache
        self._attestation = attestation
        self._allow_unauthenticated_verifiers = allow_unauthenticated_verifiers
        self._closing = False
        self._responses: dict[Hashable, proto.X509SVIDResponse] = {}
        self._streams = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def open(self) -> None:
        """Accept calls (again, after a ``drain``)."""
        self._closing = False

    async def drain(self, timeout: float) -> None:
        """End every open stream with UNAVAILABLE (clients reconnect, Workload Endpoint 6)
        and wait up to ``timeout`` seconds for them to finish."""
        self._closing = True
        self._cache.notify()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def _next_change(self, generation: int) -> None:
        await self._cache.wait_changed(generation)
        if self._closing:
            raise GRPCError(Status.UNAVAILABLE, "the Workload API is shutting down")

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        if self._closing:
            raise GRPCError(Status.UNAVAILABLE, "the Workload API is shutting down")
        self._streams += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._streams -= 1
            if self._streams == 0:
                self._idle.set()

    def __mapping__(self) -> dict[str, Handler]:
        return {
            proto.method_path("FetchX509SVID"): Handler(
                self.fetch_x509_svid,
                Cardinality.UNARY_STREAM,
                proto.X509SVIDRequest,
                proto.X509SVIDResponse,
            ),
            proto.method_path("FetchX509Bundles"): Handler(
                self.fetch_x509_bundles,
                Cardinality.UNARY_STREAM,
                proto.X509BundlesRequest,
                proto.X509BundlesResponse,
            ),
            proto.method_path("FetchJWTSVID"): Handler(
                self.fetch_jwt_svid,
                Cardinality.UNARY_UNARY,
                proto.JWTSVIDRequest,
                proto.JWTSVIDResponse,
            ),
            proto.method_path("FetchJWTBundles"): Handler(
                self.fetch_jwt_bundles,
                Cardinality.UNARY_STREAM,
                proto.JWTBundlesRequest,
                proto.JWTBundlesResponse,
            ),
            proto.method_path("ValidateJWTSVID"): Handler(
                self.validate_jwt_svid,
                Cardinality.UNARY_UNARY,
                proto.ValidateJWTSVIDRequest,
                proto.ValidateJWTSVIDResponse,
            ),
        }

    # common steps ------------------------------------------------------------------------

    async def _begin(self, stream: Stream[Any, Any], method: str) -> tuple[Any, frozenset[str]]:
        """Header check, request, attestation. Returns (request, selectors)."""
        check_security_header(stream.metadata)
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "request message missing")
        try:
            peer = peer_credentials(_peer_socket(stream))
            selectors = self._attestation.attest(peer)
        except AttestationError as exc:
            log.warning("event=workload_api.attestation_failed method=%s reason=%s", method, exc)
            raise GRPCError(
                Status.PERMISSION_DENIED, f"workload attestation failed: {exc}"
            ) from exc
        log.debug("event=workload_api.call method=%s pid=%s uid=%s", method, peer.pid, peer.uid)
        return request, selectors

    def _require_identity(self, selectors: frozenset[str]) -> None:
        if self._allow_unauthenticated_verifiers:
            return
        if not self._core(lambda: self._cache.entries_for(selectors)):
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")

    def _core(self, fn: Any) -> Any:
        """Run a core call; failures other than a verdict become UNAVAILABLE (retryable)."""
        try:
            return fn()
        except GRPCError:
            raise
        except Exception as exc:
            log.exception("event=workload_api.core_failed")
            raise GRPCError(Status.UNAVAILABLE, f"identity core unavailable: {exc}") from exc

    # X.509-SVID profile ------------------------------------------------------------------

    async def fetch_x509_svid(self, stream: X509SvidStream) -> None:
        with self._tracked():
            await self._fetch_x509_svid(stream)

    async def _fetch_x509_svid(self, stream: X509SvidStream) -> None:
        _, selectors = await self._begin(stream, "FetchX509SVID")
        last: object = None
        while True:
            generation = self._cache.generation
            state: X509State = self._core(lambda: self._cache.x509_state(selectors))
            if not state.identities:
                # Workload API 5.2.1: never an empty svids list; PERMISSION_DENIED instead.
                raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
            fingerprint = state.fingerprint
            if fingerprint != last:
                await stream.send_message(self._x509_response(state))
                last = fingerprint
            await self._next_change(generation)

    def _x509_response(self, state: X509State) -> proto.X509SVIDResponse:
        # Callers with the same identities share one message: after a rotation, 500 streams
        # cost one conversion, not 500 (the map is keyed by content, so it cannot go stale).
        key = state.fingerprint
        response = self._responses.get(key)
        if response is None:
            if len(self._responses) >= 256:
                self._responses.clear()
            response = self._responses[key] = x509_response(state)
        return response

    async def fetch_x509_bundles(self, stream: X509BundlesStream) -> None:
        with self._tracked():
            await self._fetch_x509_bundles(stream)

    async def _fetch_x509_bundles(self, stream: X509BundlesStream) -> None:
        _, selectors = await self._begin(stream, "FetchX509Bundles")
        last: object = None
        while True:
            generation = self._cache.generation
            self._require_identity(selectors)
            bundles: tuple[Bundle, ...] = self._core(self._cache.bundles)
            fingerprint = tuple(_x509_bundle_der(b) for b in bundles)
            if fingerprint != last:
                await stream.send_message(x509_bundles_response(bundles))
                last = fingerprint
            await self._next_change(generation)

    # JWT-SVID profile --------------------------------------------------------------------

    async def fetch_jwt_svid(self, stream: JwtSvidStream) -> None:
        request, selectors = await self._begin(stream, "FetchJWTSVID")
        audience = list(request.audience)
        if not audience or any(not a for a in audience):
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        wanted = request.spiffe_id
        if wanted:
            try:
                SpiffeId.parse(wanted)
            except InvalidSpiffeIdError as exc:
                raise GRPCError(
                    Status.INVALID_ARGUMENT, f"invalid requested SPIFFE ID: {exc}"
                ) from exc
        svids = self._core(lambda: self._cache.jwt_svids(selectors, audience, wanted))
        if not svids:
            raise GRPCError(
                Status.PERMISSION_DENIED,
                f"no identity issued for {wanted}" if wanted else "no identity issued",
            )
        await stream.send_message(
            proto.JWTSVIDResponse(
                svids=[
                    proto.JWTSVID(spiffe_id=entry.spiffe_id, svid=token, hint=entry.hint)
                    for entry, token in unique_hints(svids, lambda s: s[0].hint)
                ]
            )
        )

    async def fetch_jwt_bundles(self, stream: JwtBundlesStream) -> None:
        with self._tracked():
            await self._fetch_jwt_bundles(stream)

    async def _fetch_jwt_bundles(self, stream: JwtBundlesStream) -> None:
        _, selectors = await self._begin(stream, "FetchJWTBundles")
        last: object = None
        while True:
            generation = self._cache.generation
            self._require_identity(selectors)
            bundles: tuple[Bundle, ...] = self._core(self._cache.bundles)
            response = jwt_bundles_response(bundles)
            fingerprint = tuple(sorted(response.bundles.items()))
            if fingerprint != last:
                await stream.send_message(response)
                last = fingerprint
            await self._next_change(generation)

    async def validate_jwt_svid(self, stream: ValidateStream) -> None:
        request, selectors = await self._begin(stream, "ValidateJWTSVID")
        if not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            raise GRPCError(Status.INVALID_ARGUMENT, "svid must be specified")
        self._require_identity(selectors)
        try:
            claims = self._cache.validate_jwt(request.svid, request.audience)
        except (JwtSvidError, IdentityError, ValueError) as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
        spiffe_id = str(claims.spiffe_id)
        if self._core(lambda: self._cache.is_denied(spiffe_id)):
            raise GRPCError(Status.INVALID_ARGUMENT, f"{spiffe_id} is denied (revoked)")
        await stream.send_message(
            proto.ValidateJWTSVIDResponse(spiffe_id=spiffe_id, claims=claims_struct(claims.claims))
        )
