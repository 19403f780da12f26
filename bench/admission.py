"""Admission webhook throughput and latency over HTTPS: everything loaded vs nothing loaded.

    .venv/bin/python bench/admission.py [--requests 2000] [--concurrency 16]

Two configurations, measured in the same run, each served by its own server process
(uvicorn on zerogate's TLS listener pieces, one worker, like ``zerogate serve``):

- ``empty``: no native policy, no Gatekeeper templates (the transport + AdmissionReview cost);
- ``full``: the shipped ``rego/`` policies (``zerogate.admission``) plus the 20 Gatekeeper
  library templates in tests/admission/gatekeeper-library, one constraint each, every
  constraint scoped to the kinds its template judges (13 of them match a Pod).

The client sends real AdmissionReviews (tests/admission/payloads: a compliant pod, a denied
pod) over keep-alive HTTPS connections and prints reviews/s, p50 and p99, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LIBRARY = REPO / "tests" / "admission" / "gatekeeper-library"
PAYLOADS = REPO / "tests" / "admission" / "payloads"


def _issue(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def make(cn: str, issuer: Any = None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer[0].subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if issuer:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        return b.sign(issuer[1] if issuer else key, hashes.SHA256()), key

    ca = make("bench-ca")
    leaf = make("bench-webhook", ca)
    pem = serialization.Encoding.PEM
    (tmp / "ca.pem").write_bytes(ca[0].public_bytes(pem))
    (tmp / "cert.pem").write_bytes(leaf[0].public_bytes(pem))
    (tmp / "key.pem").write_bytes(
        leaf[1].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"


def _full_gatekeeper() -> Any:
    from admission.gatekeeper import GatekeeperSet, load_objects, parse_constraint, parse_template

    templates = [
        parse_template(o, source=s)
        for o, s in load_objects(sorted(LIBRARY.glob("*/template.yaml")))
    ]
    params: dict[str, Any] = {
        "K8sAllowedRepos": {"repos": ["ghcr.io/"]},
        "K8sRequiredLabels": {"labels": [{"key": "owner"}]},
        "K8sDisallowedTags": {"tags": ["latest"]},
        "K8sContainerLimits": {"cpu": "4", "memory": "16Gi"},
        "K8sPSPCapabilities": {"allowedCapabilities": [], "requiredDropCapabilities": []},
        "K8sPSPHostFilesystem": {"allowedHostPaths": []},
        "K8sPSPHostNetworkingPorts": {"hostNetwork": False, "min": 80, "max": 9000},
        "K8sReplicaLimits": {"ranges": [{"min_replicas": 1, "max_replicas": 50}]},
        "K8sDisallowAnonymous": {"allowedRoles": []},
    }
    # each constraint matches what its template judges, as operators scope them
    scope = {
        "K8sHttpsOnly": "Ingress",
        "K8sUniqueIngressHost": "Ingress",
        "K8sBlockNodePort": "Service",
        "K8sBlockLoadBalancer": "Service",
        "K8sBlockWildcardIngress": "Ingress",
        "K8sDisallowAnonymous": "ClusterRoleBinding",
        "K8sReplicaLimits": "Deployment",
        "K8sRequiredLabels": "*",
    }
    out_t, out_c = [], []
    assert len(templates) == 20, len(templates)
    for t in templates:
        kind = t.kind
        out_t.append(t)
        out_c.append(
            parse_constraint(
                {
                    "apiVersion": "constraints.gatekeeper.sh/v1beta1",
                    "kind": kind,
                    "metadata": {"name": f"c-{kind.lower()}"},
                    "spec": {
                        "match": {
                            "kinds": [{"apiGroups": ["*"], "kinds": [scope.get(t.kind, "Pod")]}]
                        },
                        "parameters": params.get(t.kind, {}),
                    },
                }
            )
        )
    gk = GatekeeperSet()
    errors = gk.replace(out_t, out_c)
    assert not errors, errors
    return gk


def serve(config: str, port_file: Path, cert: Path, key: Path) -> None:
    import uvicorn
    from fastapi import FastAPI

    from admission.admit import Admitter
    from admission.webhook import router
    from policy.opa_embedded import OpaEmbeddedEngine
    from policy.sources import load_directory
    from zerogate.server import _QuietServer, bind_socket
    from zerogate.tls import PeerCertH11Protocol, ServerTLS

    native = None
    gk = None
    if config == "full":
        sources = load_directory(REPO / "rego")
        engine = OpaEmbeddedEngine()
        engine.load(dict(sources.modules), dict(sources.data))
        native = engine.evaluate
        gk = _full_gatekeeper()
    app = FastAPI()
    app.include_router(router(Admitter(native=native, gatekeeper=gk, audit=None)))
    tls = ServerTLS(cert.read_bytes(), key.read_bytes(), None)
    sock = bind_socket("bench", "127.0.0.1", 0)
    # zerogate.server.bind_socket creates the socket with proto 0, so asyncio does not set
    # TCP_NODELAY on accepted connections (Nagle + delayed ACK: ~40 ms per response).
    # Accepted sockets inherit the option from the listener: set it here (reported upstream).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = _QuietServer(
        uvicorn.Config(
            app,
            log_config=None,
            lifespan="off",
            ssl_context_factory=tls.uvicorn_factory(),
            http=PeerCertH11Protocol,
            access_log=False,
        )
    )
    port_file.write_text(str(sock.getsockname()[1]))
    asyncio.run(server.serve(sockets=[sock]))


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> dict[str, Any]:
    """One keep-alive HTTP/1.1 exchange on an open TLS stream (a lean client, so that the
    server, not the client, is what is measured)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    status = int(head.split(b" ", 2)[1])
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    doc: dict[str, Any] = json.loads(body)
    return doc


async def load(
    port: int, ca: Path, total: int, concurrency: int
) -> tuple[float, list[float], dict[str, int]]:
    requests = []
    for name in ("pod-allowed.json", "pod-denied.json"):
        body = (PAYLOADS / name).read_bytes()
        requests.append(
            b"POST /admission/validate HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    ctx = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    outcomes = {"allowed": 0, "denied": 0}
    conns = [
        await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        for _ in range(concurrency)
    ]
    for reader, writer in conns:  # warm up: prepared queries, TLS sessions
        for i in range(20):
            await _post(reader, writer, requests[i % 2])
    queue = list(range(total))

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            doc = await _post(reader, writer, requests[i % 2])
            latencies.append(time.perf_counter() - t0)
            outcomes["allowed" if doc["response"]["allowed"] else "denied"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(r, w) for r, w in conns))
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    return total / elapsed, latencies, outcomes


def run(
    config: str, args: argparse.Namespace, tmp: Path, ca: Path, cert: Path, key: Path
) -> dict[str, Any]:
    port_file = tmp / f"{config}.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            config,
            "--port-file",
            str(port_file),
            "--cert",
            str(cert),
            "--key",
            str(key),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{config} server did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        rps, lat, outcomes = asyncio.run(
            load(int(port_file.read_text()), ca, args.requests, args.concurrency)
        )
    finally:
        proc.terminate()
        proc.wait(10)
    lat.sort()
    return {
        "config": config,
        "reviews_per_s": rps,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "outcomes": outcomes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", choices=["empty", "full"])
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port_file, args.cert, args.key)
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ca, cert, key = _issue(tmp)
        results = [run(c, args, tmp, ca, cert, key) for c in ("empty", "full")]
    print(f"{'config':<8} {'reviews/s':>10} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    for r in results:
        figures = f"{r['reviews_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
        print(f"{r['config']:<8} {figures}  {r['outcomes']}")
    empty, full = results
    print(
        f"ratio full/empty: throughput {full['reviews_per_s'] / empty['reviews_per_s']:.2f}x, "
        f"p50 {full['p50_ms'] / empty['p50_ms']:.2f}x, p99 {full['p99_ms'] / empty['p99_ms']:.2f}x"
    )


if __name__ == "__main__":
    main()
