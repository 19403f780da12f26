"""Attestation: SO_PEERCRED of real connecting processes, /proc-based selectors, Kubernetes
PSAT verification against a real JWKS (file and HTTP), and join tokens in the store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.attestation import (
    AttestationError,
    FileJwks,
    JoinTokenError,
    JoinTokens,
    K8sCgroupAttestor,
    PeerCredentials,
    PsatAttestor,
    PsatError,
    UnixAttestor,
    UrlJwks,
    WorkloadAttestation,
    peer_credentials,
)
from identity.spiffeid import TrustDomain
from zerogate.audit import AuditLog, tail
from zerogate.clock import ManualClock
from zerogate.store import Database

# --------------------------------------------------------------------------------------------
# SO_PEERCRED from a real peer process


def _connect_from_child() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A child process connects to an abstract Unix socket (no
    file permissions involved) and waits; returns our end and the child."""
    name = f"\0zerogate-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(1)
    code = f"import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect({name!r});sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    listener.settimeout(20)
    conn, _ = listener.accept()
    listener.close()
    return conn, child


def _end(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(10)


def test_peer_credentials_name_the_connecting_process() -> None:
    conn, child = _connect_from_child()
    try:
        peer = peer_credentials(conn)
        assert peer == PeerCredentials(pid=child.pid, uid=os.getuid(), gid=os.getgid())
        selectors = WorkloadAttestation().attest(peer)
        assert f"unix:uid:{os.getuid()}" in selectors
        assert f"unix:gid:{os.getgid()}" in selectors
        assert "unix:user:root" in selectors
        assert f"unix:path:{os.path.realpath(sys.executable)}" in selectors
    finally:
        conn.close()
        _end(child)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to become nobody")
def test_peer_of_another_user_gets_that_users_selectors() -> None:
    name = f"\0zerogate-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(name)
    listener.listen(1)
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, connect, wait until the parent is done
        try:
            os.setgid(65534)
            os.setuid(65534)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(name)
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    listener.settimeout(20)
    conn, _ = listener.accept()
    listener.close()
    try:
        peer = peer_credentials(conn)
        assert (peer.pid, peer.uid, peer.gid) == (pid, 65534, 65534)
        selectors = WorkloadAttestation().attest(peer)
        assert "unix:uid:65534" in selectors
        assert "unix:uid:0" not in selectors
        assert "unix:user:nobody" in selectors
    finally:
        conn.close()
        os.write(hold_w, b"x")
        os.waitpid(pid, 0)
        os.close(hold_r)
        os.close(hold_w)


def test_exited_process_fails_attestation() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)
    with pytest.raises(AttestationError, match="gone"):
        WorkloadAttestation().attest(PeerCredentials(child.pid, 0, 0))


def test_non_unix_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(AttestationError):
        peer_credentials(s)


def test_unreadable_executable_fails_rather_than_dropping_the_path_selector(
    tmp_path: Path,
) -> None:
    (tmp_path / "77").mkdir()  # a /proc/77 without an exe link
    with pytest.raises(AttestationError, match="executable"):
        UnixAttestor(proc_root=tmp_path).attest(PeerCredentials(77, 0, 0))


# cgroup files as kubelet writes them (cgroup v1 cgroupfs driver, v2 systemd driver)
CGROUP_V1 = (
    "12:memory:/kubepods/burstable/pod5f0e2a4c-1d2b-4c5e-9f10-1234567890ab/"
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
    "1:name=systemd:/kubepods/burstable/pod5f0e2a4c-1d2b-4c5e-9f10-1234567890ab/"
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
)
CGROUP_V2 = (
    "0::/kubepods.slice/kubepods-besteffort.slice/"
    "kubepods-besteffort-pod5f0e2a4c_1d2b_4c5e_9f10_1234567890ab.slice/"
    "cri-containerd-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope\n"
)


@pytest.mark.parametrize(
    ("text", "container"),
    [
        (CGROUP_V1, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
        (CGROUP_V2, "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
    ],
)
def test_k8s_cgroup_attestor_reads_pod_uid(tmp_path: Path, text: str, container: str) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(text)
    selectors = K8sCgroupAttestor(proc_root=tmp_path).attest(PeerCredentials(42, 0, 0))
    assert selectors == [
        "k8s:pod-uid:5f0e2a4c-1d2b-4c5e-9f10-1234567890ab",
        f"k8s:container-id:{container}",
    ]


def test_k8s_cgroup_attestor_outside_a_pod(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/user.slice/user-0.slice/session-1.scope\n")
    assert K8sCgroupAttestor(proc_root=tmp_path).attest(PeerCredentials(42, 0, 0)) == []


# --------------------------------------------------------------------------------------------
# Kubernetes projected service-account tokens

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://kubernetes.default.svc.cluster.local"


def _psat_claims(**override: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "aud": ["zerogate"],
        "exp": int((NOW + timedelta(hours=1)).timestamp()),
        "iat": int((NOW - timedelta(minutes=1)).timestamp()),
        "nbf": int((NOW - timedelta(minutes=1)).timestamp()),
        "iss": ISSUER,
        "sub": "system:serviceaccount:payments:api",
        "kubernetes.io": {
            "namespace": "payments",
            "pod": {"name": "api-7d9f", "uid": "0f8b7a6c-1111-2222-3333-444455556666"},
            "serviceaccount": {"name": "api", "uid": "9a9a9a9a-0000-1111-2222-333333333333"},
            "node": {"name": "node-1", "uid": "12121212-3434-5656-7878-909090909090"},
        },
    }
    claims.update(override)
    return claims


@pytest.fixture(scope="module")
def cluster_keys() -> dict[str, Any]:
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def _jwks(cluster_keys: dict[str, Any]) -> dict[str, Any]:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(cluster_keys["rsa"].public_key()))
    rsa_jwk.update(kid="rsa-1", use="sig", alg="RS256")
    ec_jwk = json.loads(ECAlgorithm.to_jwk(cluster_keys["ec"].public_key()))
    ec_jwk.update(kid="ec-1", use="sig", alg="ES256")
    return {"keys": [rsa_jwk, ec_jwk]}


@pytest.fixture
def jwks_file(tmp_path: Path, cluster_keys: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(cluster_keys)))
    return path


def _attestor(jwks_file: Path, **kw: Any) -> PsatAttestor:
    kw.setdefault("clock", ManualClock(NOW))
    return PsatAttestor(
        jwks=FileJwks(jwks_file), audience="zerogate", cluster="prod", issuer=ISSUER, **kw
    )


def _sign(key: Any, claims: dict[str, Any], alg: str = "RS256", kid: str | None = "rsa-1") -> str:
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def test_psat_maps_to_k8s_selectors(jwks_file: Path, cluster_keys: dict[str, Any]) -> None:
    result = _attestor(jwks_file).attest(_sign(cluster_keys["rsa"], _psat_claims()))
    assert result.selectors == {
        "k8s:ns:payments",
        "k8s:sa:api",
        "k8s:pod-name:api-7d9f",
        "k8s:pod-uid:0f8b7a6c-1111-2222-3333-444455556666",
        "k8s:node-name:node-1",
        "k8s:cluster:prod",
    }
    ec_token = _sign(cluster_keys["ec"], _psat_claims(), alg="ES256", kid="ec-1")
    assert _attestor(jwks_file).attest(ec_token).namespace == "payments"


@pytest.mark.parametrize(
    ("claims", "match"),
    [
        (_psat_claims(aud=["someone-else"]), "audience"),
        (_psat_claims(exp=int((NOW - timedelta(seconds=1)).timestamp())), "expired"),
        (_psat_claims(nbf=int((NOW + timedelta(minutes=5)).timestamp())), "not valid yet"),
        (_psat_claims(iss="https://evil.example"), "issuer"),
        (_psat_claims(sub="system:serviceaccount:payments:admin"), "sub does not match"),
        (
            _psat_claims(
                **{"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}}
            ),
            "not bound to a pod",
        ),
    ],
    ids=["wrong-aud", "expired", "nbf", "issuer", "sub", "legacy-unbound"],
)
def test_psat_rejections(
    jwks_file: Path, cluster_keys: dict[str, Any], claims: dict[str, Any], match: str
) -> None:
    with pytest.raises(PsatError, match=match):
        _attestor(jwks_file).attest(_sign(cluster_keys["rsa"], claims))


def test_psat_without_exp_is_rejected(jwks_file: Path, cluster_keys: dict[str, Any]) -> None:
    claims = _psat_claims()
    del claims["exp"]
    with pytest.raises(PsatError, match="exp"):
        _attestor(jwks_file).attest(_sign(cluster_keys["rsa"], claims))


def test_psat_signed_by_unknown_key_is_rejected(
    jwks_file: Path, cluster_keys: dict[str, Any]
) -> None:
    forged = _sign(cluster_keys["other"], _psat_claims())  # claims kid rsa-1, wrong key
    with pytest.raises(PsatError, match="rejected"):
        _attestor(jwks_file).attest(forged)
    with pytest.raises(PsatError, match="no key with kid"):
        _attestor(jwks_file).attest(_sign(cluster_keys["other"], _psat_claims(), kid="nope"))


def test_psat_alg_none_and_hmac_are_rejected(jwks_file: Path) -> None:
    unsigned = jwt.encode(_psat_claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    with pytest.raises(PsatError, match="not allowed"):
        _attestor(jwks_file).attest(unsigned)
    hmac = jwt.encode(_psat_claims(), "k" * 32, algorithm="HS256", headers={"kid": "rsa-1"})
    with pytest.raises(PsatError, match="not allowed"):
        _attestor(jwks_file).attest(hmac)


def test_psat_garbage_is_rejected(jwks_file: Path) -> None:
    with pytest.raises(PsatError):
        _attestor(jwks_file).attest("not-a-token")


def test_jwks_file_is_reloaded_after_key_rotation(
    jwks_file: Path, cluster_keys: dict[str, Any]
) -> None:
    attestor = _attestor(jwks_file)
    token = _sign(cluster_keys["other"], _psat_claims(), kid="rsa-2")
    with pytest.raises(PsatError):
        attestor.attest(token)
    doc = _jwks(cluster_keys)
    new = json.loads(RSAAlgorithm.to_jwk(cluster_keys["other"].public_key()))
    new.update(kid="rsa-2")
    doc["keys"].append(new)
    jwks_file.write_text(json.dumps(doc, indent=2))  # new size: reloaded
    assert attestor.attest(token).service_account == "api"


@pytest.fixture
def jwks_http(cluster_keys: dict[str, Any]) -> Iterator[str]:
    body = json.dumps(_jwks(cluster_keys)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/openid/v1/jwks"
    finally:
        server.shutdown()
        server.server_close()


def test_psat_against_jwks_url(jwks_http: str, cluster_keys: dict[str, Any]) -> None:
    attestor = PsatAttestor(
        jwks=UrlJwks(jwks_http), audience="zerogate", issuer=ISSUER, clock=ManualClock(NOW)
    )
    assert attestor.attest(_sign(cluster_keys["rsa"], _psat_claims())).pod_name == "api-7d9f"


def test_jwks_url_must_be_https() -> None:
    with pytest.raises(PsatError, match="https"):
        UrlJwks("http://kubernetes.example.com/openid/v1/jwks")


# --------------------------------------------------------------------------------------------
# Join tokens (SQLite and PostgreSQL)

TD = TrustDomain("example.org")


def test_join_token_redeems_once(database: Database) -> None:
    clock = ManualClock(NOW)
    tokens = JoinTokens(database, clock=clock, trust_domain=TD)
    issued = tokens.generate("spiffe://example.org/node/a", timedelta(minutes=10))
    assert issued.token not in repr(issued)
    redeemed = tokens.redeem(issued.token)
    assert redeemed.spiffe_id == "spiffe://example.org/node/a"
    assert redeemed.selectors == {f"join_token:{issued.token_id}"}
    with pytest.raises(JoinTokenError, match="already used"):
        tokens.redeem(issued.token)


def test_join_token_expires(database: Database) -> None:
    clock = ManualClock(NOW)
    tokens = JoinTokens(database, clock=clock, trust_domain=TD)
    issued = tokens.generate("spiffe://example.org/node/a", timedelta(minutes=10))
    clock.advance(timedelta(minutes=10))
    with pytest.raises(JoinTokenError, match="expired"):
        tokens.redeem(issued.token)
    assert tokens.purge_expired() == 1


@pytest.mark.parametrize(
    ("spiffe_id", "ttl", "error"),
    [
        ("spiffe://other.org/node/a", timedelta(minutes=1), JoinTokenError),
        ("spiffe://example.org/node/a", timedelta(0), JoinTokenError),
        ("spiffe://Example.org/node", timedelta(minutes=1), ValueError),
    ],
    ids=["foreign-trust-domain", "zero-ttl", "bad-id"],
)
def test_join_token_generate_rejects(
    database: Database, spiffe_id: str, ttl: timedelta, error: type[Exception]
) -> None:
    tokens = JoinTokens(database, clock=ManualClock(NOW), trust_domain=TD)
    with pytest.raises(error):
        tokens.generate(spiffe_id, ttl)


def test_unknown_join_token(database: Database) -> None:
    tokens = JoinTokens(database, clock=ManualClock(NOW))
    with pytest.raises(JoinTokenError, match="unknown"):
        tokens.redeem("made-up")
    with pytest.raises(JoinTokenError, match="empty"):
        tokens.redeem("")


def test_concurrent_redemption_has_one_winner(database: Database) -> None:
    tokens = JoinTokens(database, clock=ManualClock(NOW))
    issued = tokens.generate("spiffe://example.org/node/a", timedelta(minutes=10))
    results: list[str] = []
    barrier = threading.Barrier(4)

    def redeem() -> None:
        barrier.wait()
        try:
            tokens.redeem(issued.token)
            results.append("ok")
        except JoinTokenError:
            results.append("refused")
        except Exception as exc:  # a serialization failure is also a refusal
            results.append(f"error:{type(exc).__name__}")

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count("ok") == 1, results


def test_join_token_events_are_audited(audit_log: AuditLog, database: Database) -> None:
    tokens = JoinTokens(database, clock=ManualClock(NOW), audit=audit_log)
    issued = tokens.generate("spiffe://example.org/node/a", timedelta(minutes=10))
    tokens.redeem(issued.token)
    audit_log.flush()
    records = tail(database, 10)
    kinds = [r.kind for r in records]
    assert "identity.join_token.created" in kinds
    assert "identity.join_token.redeemed" in kinds
    for r in records:
        assert issued.token not in json.dumps(r.to_json())  # the secret never reaches audit


def test_join_token_migration_matches_table_definition(database: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from zerogate.store.tables import metadata

    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert [d for d in diff if "identity_join_token" in repr(d)] == []


def test_psat_attestor_from_settings(jwks_file: Path, cluster_keys: dict[str, Any]) -> None:
    from identity.attestation import psat_attestor_from_settings
    from zerogate.config import K8sPsatSettings

    assert psat_attestor_from_settings(K8sPsatSettings()) is None  # no cluster: off
    with pytest.raises(PsatError, match="jwks"):
        psat_attestor_from_settings(K8sPsatSettings(cluster="prod"))
    attestor = psat_attestor_from_settings(
        K8sPsatSettings(cluster="prod", issuer=ISSUER, jwks_file=jwks_file),
        clock=ManualClock(NOW),
    )
    assert attestor is not None
    token = _sign(cluster_keys["rsa"], _psat_claims())
    assert "k8s:cluster:prod" in attestor.attest(token).selectors
