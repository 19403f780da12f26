"""Attestation: turning evidence about a caller into selectors (``type:value`` strings).

Three kinds of evidence, as in SPIRE:

- **Local workloads** on the Workload API socket: the kernel's record of the peer process
  (``SO_PEERCRED``: pid, uid, gid) is read by the server (identity/workload_server.py) and
  handed to :class:`WorkloadAttestation`, which runs its attestors: :class:`UnixAttestor`
  (``unix:uid:N``, ``unix:gid:N``, ``unix:user:NAME``, ``unix:group:NAME``,
  ``unix:path:/exe``) and, when plugged in, :class:`K8sCgroupAttestor` (``k8s:pod-uid:``,
  ``k8s:container-id:`` from ``/proc/PID/cgroup``). The workload does nothing to prove who
  it is (SPIFFE Workload Endpoint section 5: "MUST NOT require the workload to actively
  participate").
- **Kubernetes projected service-account tokens** from remote callers (like SPIRE's
  ``k8s_psat``): :class:`PsatAttestor` verifies the signature against the cluster's JWKS,
  the audience, issuer and expiry, and maps the token to ``k8s:ns:``, ``k8s:sa:``,
  ``k8s:pod-name:``, ``k8s:pod-uid:`` (+ ``k8s:node-name:``, ``k8s:cluster:``).
- **One-time join tokens** (:class:`JoinTokens`): ``zerogate token generate`` stores the
  SHA-256 of a random token bound to a SPIFFE ID; redeeming it once yields that ID.

Every failure raises :class:`AttestationError` (or a subclass) naming what failed; callers
deny on it (fail closed).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import ipaddress
import json
import logging
import os
import pwd
import re
import secrets
import socket
import struct
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import jwt
from sqlalchemy import select, update

from identity.errors import IdentityError
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import K8sPsatSettings
from zerogate.store import Database
from zerogate.store.tables.identity_attestation import identity_join_token

log = logging.getLogger(__name__)

PROC_ROOT = Path("/proc")


class AttestationError(IdentityError):
    """The caller could not be attested; callers must deny."""

    code = "attestation_failed"


class PsatError(AttestationError):
    code = "invalid_psat"


class JoinTokenError(AttestationError):
    code = "invalid_join_token"


def selector(kind: str, value: str | int) -> str:
    """``type:value`` (the value may itself contain ``:``, as ``unix:path:`` values can)."""
    return f"{kind}:{value}"


# ---------------------------------------------------------------------------------------------
# Local workloads: SO_PEERCRED and /proc


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The kernel's record of the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """``SO_PEERCRED`` of a connected Unix socket: the credentials of the process that called
    ``connect()``, recorded by the kernel at that moment (unix(7))."""
    if sock.family != socket.AF_UNIX:
        raise AttestationError(f"peer credentials need a Unix socket, got family {sock.family}")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    if pid <= 0:
        raise AttestationError("the kernel reported no peer process for this socket")
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


def process_start_time(pid: int, proc_root: Path = PROC_ROOT) -> int:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks since boot): with the pid it
    names one process instance, so a recycled pid is noticed (proc(5))."""
    try:
        stat = (proc_root / str(pid) / "stat").read_text()
    except OSError as exc:
        raise AttestationError(f"process {pid} is gone: {exc.strerror}") from exc
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError) as exc:
        raise AttestationError(f"unreadable /proc/{pid}/stat") from exc


class WorkloadAttestor(Protocol):
    """One source of selectors for a local caller (SPIRE's WorkloadAttestor plugin)."""

    name: str

    def attest(self, peer: PeerCredentials) -> Iterable[str]: ...


class UnixAttestor:
    """Selectors from the caller's uid/gid and executable, like SPIRE's ``unix`` attestor."""

    name = "unix"

    def __init__(self, *, proc_root: Path = PROC_ROOT, discover_path: bool = True) -> None:
        self._proc_root = proc_root
        self._discover_path = discover_path

    def attest(self, peer: PeerCredentials) -> list[str]:
        out = [selector("unix:uid", peer.uid), selector("unix:gid", peer.gid)]
        with contextlib.suppress(KeyError):
            out.append(selector("unix:user", pwd.getpwuid(peer.uid).pw_name))
        with contextlib.suppress(KeyError):
            out.append(selector("unix:group", grp.getgrgid(peer.gid).gr_name))
        if self._discover_path:
            exe = self._proc_root / str(peer.pid) / "exe"
            try:
                out.append(selector("unix:path", os.readlink(exe)))
            except OSError as exc:
                # SPIRE fails attestation too when the path cannot be discovered: a selector
                # silently missing could match a broader entry than intended.
                raise AttestationError(
                    f"cannot read the executable of pid {peer.pid}: {exc.strerror}"
                ) from exc
        return out


# /proc/PID/cgroup lines of kubelet-managed containers, cgroupfs and systemd drivers, v1 and v2:
#   .../kubepods/burstable/pod<uid>/<container id>
#   .../kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
_CONTAINER_ID = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")


class K8sCgroupAttestor:
    """``k8s:pod-uid:`` and ``k8s:container-id:`` of a caller running in a Kubernetes pod,
    read from ``/proc/PID/cgroup`` (the first step of SPIRE's ``k8s`` workload attestor;
    names, namespaces and service accounts need the kubelet and are left to a later
    attestor). Processes outside a pod get no selectors from it."""

    name = "k8s"

    def __init__(self, *, proc_root: Path = PROC_ROOT) -> None:
        self._proc_root = proc_root

    def attest(self, peer: PeerCredentials) -> list[str]:
        try:
            text = (self._proc_root / str(peer.pid) / "cgroup").read_text()
        except OSError as exc:
            raise AttestationError(f"cannot read the cgroups of pid {peer.pid}") from exc
        for line in text.splitlines():
            path = line.split(":", 2)[-1]
            pod = _POD_UID.search(path)
            if pod is None:
                continue
            out = [selector("k8s:pod-uid", pod.group(1).replace("_", "-"))]
            container = _CONTAINER_ID.search(path)
            if container is not None:
                out.append(selector("k8s:container-id", container.group(1)))
            return out
        return []


class WorkloadAttestation:
    """Runs every attestor for one caller and returns the union of their selectors.

    The pid from ``SO_PEERCRED`` could be recycled between ``connect()`` and our reading of
    ``/proc``; like SPIRE's peertracker, the process start time is read before and after the
    attestors run, and attestation fails when the process changed or exited meanwhile.
    """

    def __init__(
        self,
        attestors: Sequence[WorkloadAttestor] | None = None,
        *,
        proc_root: Path = PROC_ROOT,
    ) -> None:
        self._attestors = (
            list(attestors) if attestors is not None else [UnixAttestor(proc_root=proc_root)]
        )
        self._proc_root = proc_root

    def attest(self, peer: PeerCredentials) -> frozenset[str]:
        before = process_start_time(peer.pid, self._proc_root)
        selectors: set[str] = set()
        for attestor in self._attestors:
            selectors.update(attestor.attest(peer))
        if process_start_time(peer.pid, self._proc_root) != before:
            raise AttestationError(f"process {peer.pid} was replaced during attestation")
        log.debug(
            "event=workload.attested pid=%s uid=%s selectors=%s",
            peer.pid,
            peer.uid,
            ",".join(sorted(selectors)),
        )
        return frozenset(selectors)


# ---------------------------------------------------------------------------------------------
# Kubernetes projected service-account tokens (SPIRE k8s_psat)

# Algorithms Kubernetes signs service-account tokens with (RS256 by default, ES256 with EC
# keys); "none" and HMAC are never accepted (RFC 8725 section 3.1).
PSAT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256")


class JwksSource(Protocol):
    """The cluster's service-account signing keys."""

    def key(self, kid: str | None) -> jwt.PyJWK: ...


def _select_key(keys: Sequence[jwt.PyJWK], kid: str | None, origin: str) -> jwt.PyJWK:
    if kid is not None:
        for k in keys:
            if k.key_id == kid:
                return k
        raise PsatError(f"no key with kid {kid!r} in the cluster JWKS ({origin})")
    if len(keys) == 1:
        return keys[0]
    raise PsatError(f"token has no kid and the cluster JWKS ({origin}) holds {len(keys)} keys")


def _parse_jwks(text: str | bytes, origin: str) -> list[jwt.PyJWK]:
    try:
        data = json.loads(text)
        keys = jwt.PyJWKSet.from_dict(data).keys
    except (ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
        raise PsatError(f"cluster JWKS {origin} is not a usable JWK set: {exc}") from exc
    return list(keys)


class FileJwks:
    """A JWKS file (``kubectl get --raw /openid/v1/jwks``), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[jwt.PyJWK] = []

    def key(self, kid: str | None) -> jwt.PyJWK:
        with self._lock:
            try:
                st = self._path.stat()
            except OSError as exc:
                raise PsatError(f"cluster JWKS file {self._path} unreadable: {exc}") from exc
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._keys = _parse_jwks(self._path.read_bytes(), str(self._path))
                self._stamp = stamp
            keys = self._keys
        return _select_key(keys, kid, str(self._path))


class UrlJwks:
    """The cluster's JWKS fetched over HTTPS (plain HTTP only for loopback addresses),
    cached, and re-fetched when a token names an unknown kid (key rotation)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, lifespan_s: int = 300) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "https" and not (
            parsed.scheme == "http" and _is_loopback(parsed.hostname or "")
        ):
            raise PsatError(f"cluster JWKS URL must be https, got {url!r}")
        self._client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=lifespan_s, timeout=int(timeout_s)
        )
        self._url = url

    def key(self, kid: str | None) -> jwt.PyJWK:
        try:
            if kid is None:
                return _select_key(list(self._client.get_jwk_set().keys), None, self._url)
            return self._client.get_signing_key(kid)
        except jwt.PyJWKClientError as exc:
            raise PsatError(f"cluster JWKS {self._url}: {exc}") from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class PsatAttestation:
    """A verified projected service-account token."""

    cluster: str
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    node_name: str
    selectors: frozenset[str]


class PsatAttestor:
    """Verifies Kubernetes projected service-account tokens offline against the cluster's
    JWKS (signature, ``aud``, ``iss`` when configured, ``exp``/``nbf``/``iat`` with the
    injected clock) and maps them to ``k8s:`` selectors. Legacy secret-based tokens carry no
    expiry or pod binding and are refused."""

    def __init__(
        self,
        *,
        jwks: JwksSource,
        audience: str,
        cluster: str = "",
        issuer: str = "",
        clock: Clock = SYSTEM_CLOCK,
        leeway: timedelta = timedelta(seconds=0),
    ) -> None:
        if not audience:
            raise PsatError("k8s_psat needs an audience")
        self._jwks = jwks
        self._audience = audience
        self._cluster = cluster
        self._issuer = issuer
        self._clock = clock
        self._leeway = leeway

    def attest(self, token: str) -> PsatAttestation:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise PsatError(f"service-account token is not a JWS: {exc}") from exc
        alg = header.get("alg")
        if alg not in PSAT_ALGORITHMS:
            raise PsatError(f"service-account token algorithm {alg!r} is not allowed")
        kid = header.get("kid")
        key = self._jwks.key(kid if isinstance(kid, str) else None)
        try:
            # Time claims are checked below against the injected clock, not time.time().
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iat", "aud", "sub"],
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise PsatError(
                f"service-account token audience does not include {self._audience!r}"
            ) from exc
        except jwt.PyJWTError as exc:
            raise PsatError(f"service-account token rejected: {exc}") from exc
        self._check_times(claims)
        if self._issuer and claims.get("iss") != self._issuer:
            raise PsatError(
                f"service-account token issuer {claims.get('iss')!r} is not {self._issuer!r}"
            )
        return self._to_attestation(claims)

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.now().timestamp()
        leeway = self._leeway.total_seconds()
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            raise PsatError("service-account token exp is not a number")
        if now >= exp + leeway:
            raise PsatError("service-account token has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + leeway < nbf:
            raise PsatError("service-account token is not valid yet (nbf)")

    def _to_attestation(self, claims: Mapping[str, Any]) -> PsatAttestation:
        k8s = claims.get("kubernetes.io")
        if not isinstance(k8s, dict):
            raise PsatError("not a projected service-account token: no kubernetes.io claim")
        namespace = k8s.get("namespace")
        sa = _name(k8s.get("serviceaccount"))
        pod = k8s.get("pod")
        pod_name, pod_uid = _name(pod), _uid(pod)
        if not (isinstance(namespace, str) and namespace and sa):
            raise PsatError("service-account token lacks namespace or service account")
        if not (pod_name and pod_uid):
            raise PsatError("service-account token is not bound to a pod (projected token needed)")
        if claims.get("sub") != f"system:serviceaccount:{namespace}:{sa}":
            raise PsatError("service-account token sub does not match its namespace and account")
        node_name = _name(k8s.get("node"))
        sels = {
            selector("k8s:ns", namespace),
            selector("k8s:sa", sa),
            selector("k8s:pod-name", pod_name),
            selector("k8s:pod-uid", pod_uid),
        }
        if node_name:
            sels.add(selector("k8s:node-name", node_name))
        if self._cluster:
            sels.add(selector("k8s:cluster", self._cluster))
        return PsatAttestation(
            cluster=self._cluster,
            namespace=namespace,
            service_account=sa,
            pod_name=pod_name,
            pod_uid=pod_uid,
            node_name=node_name,
            selectors=frozenset(sels),
        )


def psat_attestor_from_settings(
    settings: K8sPsatSettings, *, clock: Clock = SYSTEM_CLOCK
) -> PsatAttestor | None:
    """The configured ``identity.k8s_psat`` attestor; None when ``cluster`` is empty (off)."""
    if not settings.cluster:
        return None
    jwks: JwksSource
    if settings.jwks_file is not None and settings.jwks_url:
        raise PsatError("identity.k8s_psat: give jwks_file or jwks_url, not both")
    if settings.jwks_file is not None:
        jwks = FileJwks(settings.jwks_file)
    elif settings.jwks_url:
        jwks = UrlJwks(settings.jwks_url)
    else:
        raise PsatError("identity.k8s_psat: a cluster needs jwks_file or jwks_url")
    return PsatAttestor(
        jwks=jwks,
        audience=settings.audience,
        cluster=settings.cluster,
        issuer=settings.issuer,
        clock=clock,
    )


def _name(obj: object) -> str:
    value = obj.get("name") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


def _uid(obj: object) -> str:
    value = obj.get("uid") if isinstance(obj, dict) else None
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------------------------
# One-time join tokens


class AuditSink(Protocol):
    def append(self, kind: str, payload: Mapping[str, Any]) -> Future[int]: ...


@dataclass(frozen=True, slots=True)
class IssuedJoinToken:
    token: str = field(repr=False)
    token_id: str
    spiffe_id: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class JoinTokenRedemption:
    token_id: str
    spiffe_id: str
    selectors: frozenset[str]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class JoinTokens:
    """Join tokens in the store: generated bound to a SPIFFE ID, redeemed at most once."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        audit: AuditSink | None = None,
        trust_domain: TrustDomain | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._audit = audit
        self._trust_domain = trust_domain

    def generate(self, spiffe_id: str, ttl: timedelta) -> IssuedJoinToken:
        sid = SpiffeId.parse(spiffe_id)
        if self._trust_domain is not None and not sid.member_of(self._trust_domain):
            raise JoinTokenError(
                f"{sid} is not in the trust domain {self._trust_domain}: join tokens are only "
                "issued for our own trust domain"
            )
        if ttl <= timedelta(0):
            raise JoinTokenError(f"join token TTL must be positive, got {ttl.total_seconds()}s")
        token = secrets.token_urlsafe(32)
        digest = _token_hash(token)
        now = self._clock.now()
        issued = IssuedJoinToken(
            token=token, token_id=digest[:16], spiffe_id=str(sid), expires_at=now + ttl
        )
        with self._db.begin() as conn:
            conn.execute(
                identity_join_token.insert().values(
                    token_hash=digest,
                    token_id=issued.token_id,
                    spiffe_id=issued.spiffe_id,
                    created_at=now,
                    expires_at=issued.expires_at,
                    used_at=None,
                )
            )
        self._record(
            "identity.join_token.created",
            {
                "token_id": issued.token_id,
                "spiffe_id": issued.spiffe_id,
                "expires_at": issued.expires_at.isoformat(),
            },
        )
        log.info(
            "event=join_token.created token_id=%s spiffe_id=%s expires_at=%s",
            issued.token_id,
            issued.spiffe_id,
            issued.expires_at.isoformat(),
        )
        return issued

    def redeem(self, token: str) -> JoinTokenRedemption:
        if not token:
            raise JoinTokenError("join token is empty")
        digest = _token_hash(token)
        now = self._clock.now()
        table = identity_join_token
        with self._db.begin() as conn:
            row = conn.execute(select(table).where(table.c.token_hash == digest)).first()
            if row is None:
                raise JoinTokenError("unknown join token")
            if row.used_at is not None:
                raise JoinTokenError(f"join token {row.token_id} was already used")
            if now >= row.expires_at:
                raise JoinTokenError(f"join token {row.token_id} has expired")
            # The conditional UPDATE is the single-use guarantee across concurrent redeemers.
            result = conn.execute(
                update(table)
                .where(table.c.token_hash == digest, table.c.used_at.is_(None))
                .values(used_at=now)
            )
            if result.rowcount != 1:
                raise JoinTokenError(f"join token {row.token_id} was already used")
        redemption = JoinTokenRedemption(
            token_id=row.token_id,
            spiffe_id=row.spiffe_id,
            selectors=frozenset({selector("join_token", row.token_id)}),
        )
        self._record(
            "identity.join_token.redeemed",
            {"token_id": redemption.token_id, "spiffe_id": redemption.spiffe_id},
        )
        log.info(
            "event=join_token.redeemed token_id=%s spiffe_id=%s",
            redemption.token_id,
            redemption.spiffe_id,
        )
        return redemption

    def purge_expired(self) -> int:
        """Delete expired and used tokens; returns how many rows went."""
        now = self._clock.now()
        table = identity_join_token
        with self._db.begin() as conn:
            result = conn.execute(
                table.delete().where((table.c.expires_at <= now) | table.c.used_at.is_not(None))
            )
        return int(result.rowcount)

    def _record(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self._audit is None:
            return
        # Fail closed: a credential event that cannot be audited is an error for the caller.
        self._audit.append(kind, payload).result(timeout=30)
