"""Admission webhook throughput and latency over HTTPS: everything loaded vs nothing loaded.

    .venv/bin/python bench/admission.py [--requests 2000] [--concurrency 16] [--rate 250]

Two configurations, measured in the same run, each served by its own server process
(uvicorn on zerogate's TLS listener pieces, one worker, on the event loop and HTTP protocol
``zerogate serve`` uses: ``zerogate.server.run_loop`` (uvloop) and
``zerogate.tls.PeerCertProtocol`` (httptools)):

- ``empty``: no native policy, no Gatekeeper templates (the transport + AdmissionReview +
  audit cost);
- ``full``: the shipped ``rego/`` policies (``zerogate.admission``) plus the 20 Gatekeeper
  library templates in tests/admission/gatekeeper-library, one constraint each, every
  constraint scoped to the kinds its template judges (13 of them match a Pod).

Both write one audit record per decision, as production does: a ``zerogate.audit.AuditLog``
(group commit, hash chain, signed checkpoints) on a SQLite file in the temporary directory.

The client sends real AdmissionReviews (tests/admission/payloads: a compliant pod and a denied
pod, alternating) over keep-alive HTTPS connections (a lean asyncio client with pre-encoded
requests, so that the server is what is measured) in two phases:

1. **saturation** (closed loop): ``--concurrency`` connections, each sending its next review
   as soon as the previous answer arrives. Gives the throughput (reviews/s) and the latency
   at that load (p50/p99 from send to answer; p99 here is mostly queueing:
   ``concurrency / throughput``).
2. **fixed rate** (open loop): reviews are due on a fixed schedule (``--rate`` per second,
   default 250 = half the issue's 500/s target), whether earlier ones have been answered or
   not, each on an idle keep-alive connection (a new one is opened when none is idle).
   Latency is measured from the *scheduled* send time, so a stalled server or client is
   charged for every review that should have gone out meanwhile (no coordinated omission).
   Reports p50/p99 and the rate actually achieved.

Prints both phases for both configurations and the full/empty ratios (the machine is shared:
compare ratios within one run rather than absolute figures across runs).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
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

from zerogate.cli import GO_RUNTIME_DEFAULTS  # noqa: E402

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


def _full_gatekeeper(native: Any = None) -> Any:
    from admission.gatekeeper import (
        GatekeeperSet,
        NativePolicy,
        load_objects,
        parse_constraint,
        parse_template,
        serving_engine,
    )

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
    gk = GatekeeperSet(serving_engine())  # as AdmissionService builds it
    if native is not None:  # as AdmissionService does on the embedded OPA
        gk.set_native(NativePolicy(*native), compile=False)
    errors = gk.replace(out_t, out_c)
    assert not errors, errors
    return gk


def serve(config: str, port_file: Path, cert: Path, key: Path) -> None:
    from fastapi import FastAPI

    import zerogate.server as zserver
    import zerogate.tls as ztls
    from admission.admit import Admitter
    from admission.webhook import router
    from policy.opa_embedded import OpaEmbeddedEngine
    from policy.sources import load_directory
    from zerogate.audit import AuditLog
    from zerogate.store import Database

    native = None
    gk = None
    if config == "full":
        sources = load_directory(REPO / "rego")
        engine = OpaEmbeddedEngine()
        engine.load(dict(sources.modules), dict(sources.data))
        native = engine.evaluate
        # the native policy compiled into the Gatekeeper engine too (one call per review),
        # as `zerogate serve` runs it on the embedded OPA (admission.service)
        separate = os.environ.get("ZEROGATE_BENCH_NATIVE") == "separate"
        gk = _full_gatekeeper(
            None if separate else (engine.revision, sources.modules, sources.data)
        )
    # one audit record per decision, as in production (group commit on SQLite)
    db = Database.open(f"sqlite:///{port_file.parent / f'audit-{config}.db'}")
    audit = AuditLog.open(db, signing_key=port_file.parent / f"audit-{config}.key")
    app = FastAPI()
    app.include_router(router(Admitter(native=native, gatekeeper=gk, audit=audit)))
    tls = ztls.ServerTLS(cert.read_bytes(), key.read_bytes(), None)
    sock = zserver.bind_socket("bench", "127.0.0.1", 0)
    # what `zerogate serve` runs: zerogate's listener server on run_loop (httptools, uvloop)
    protocol = ztls.PeerCertProtocol
    run_loop = zserver.run_loop
    server = zserver.listener_server(app, tls=tls)
    print(
        f"serve config={config} http={protocol.__name__} loop={run_loop.__module__}",
        file=sys.stderr,
    )
    gc.collect()  # as zerogate.server.ControlPlane.run does once everything is up
    gc.freeze()
    port_file.write_text(str(sock.getsockname()[1]))
    try:
        run_loop(server.serve(sockets=[sock]))
    finally:
        audit.close()
        db.close()


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _post(conn: Conn, request: bytes) -> bool:
    """One keep-alive HTTP/1.1 exchange on an open TLS stream (a lean client, so that the
    server, not the client, is what is measured); returns ``response.allowed``."""
    reader, writer = conn
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
    return bool(doc["response"]["allowed"])


class Client:
    """Pre-encoded requests and keep-alive TLS connections to one server."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.requests = []
        for name in ("pod-allowed.json", "pod-denied.json"):
            body = (PAYLOADS / name).read_bytes()
            self.requests.append(
                b"POST /admission/validate HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        self.idle: list[Conn] = []

    async def connect(self, warm: int) -> Conn:
        conn = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.ctx, server_hostname="localhost"
        )
        for i in range(warm):  # warm up: prepared queries, TLS session
            await _post(conn, self.requests[i % 2])
        return conn

    async def open(self, n: int, warm: int) -> None:
        self.idle += [await self.connect(warm) for _ in range(n - len(self.idle))]

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle = []


Phase = tuple[float, list[float], dict[str, int]]


async def saturate(client: Client, total: int, concurrency: int) -> Phase:
    """Closed loop: ``concurrency`` connections, each sending as soon as it is answered."""
    await client.open(concurrency, 20)
    latencies: list[float] = []
    outcomes = {"allowed": 0, "denied": 0}
    queue = list(range(total))

    async def worker(conn: Conn) -> None:
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            allowed = await _post(conn, client.requests[i % 2])
            latencies.append(time.perf_counter() - t0)
            outcomes["allowed" if allowed else "denied"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in client.idle[:concurrency]))
    elapsed = time.perf_counter() - start
    return total / elapsed, latencies, outcomes


async def fixed_rate(client: Client, total: int, rate: float, pool: int) -> Phase:
    """Open loop: review ``i`` is due at ``start + i / rate`` and goes out on an idle one of
    ``pool`` keep-alive connections; its latency runs from that scheduled time to its answer,
    so time spent waiting for a connection, for the client's loop or for the server all
    counts (no coordinated omission)."""
    await client.open(pool, 2)
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for conn in client.idle:
        idle.put_nowait(conn)
    latencies: list[float] = []
    outcomes = {"allowed": 0, "denied": 0}

    async def one(i: int, due: float) -> None:
        conn = await idle.get()
        allowed = await _post(conn, client.requests[i % 2])
        latencies.append(time.perf_counter() - due)
        outcomes["allowed" if allowed else "denied"] += 1
        idle.put_nowait(conn)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    return total / elapsed, latencies, outcomes


async def load(port: int, ca: Path, args: argparse.Namespace) -> tuple[Phase, Phase]:
    client = Client(port, ca)
    try:
        sat = await saturate(client, args.requests, args.concurrency)
        fixed = await fixed_rate(client, args.requests, args.rate, args.pool)
    finally:
        client.close()
    return sat, fixed


def _figures(phase: Phase) -> dict[str, Any]:
    rps, lat, outcomes = phase
    lat = sorted(lat)
    return {
        "reviews_per_s": rps,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
        "outcomes": outcomes,
    }


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
        # the Go runtime settings the zerogate CLI sets for the embedded OPA (zerogate.cli)
        env={**GO_RUNTIME_DEFAULTS, **os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{config} server did not start")
            time.sleep(0.1)
        time.sleep(0.5)
        sat, fixed = asyncio.run(load(int(port_file.read_text()), ca, args))
    finally:
        proc.terminate()
        proc.wait(10)
    return {"config": config, "saturation": _figures(sat), "fixed": _figures(fixed)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="reviews per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="saturation connections")
    parser.add_argument("--rate", type=float, default=250.0, help="fixed-rate reviews/s")
    parser.add_argument("--pool", type=int, default=64, help="fixed-rate connections")
    parser.add_argument("--configs", default="empty,full", help="comma-separated")
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
        results = [run(c, args, tmp, ca, cert, key) for c in args.configs.split(",")]
    print(f"{'config':<7} {'phase':<22} {'reviews/s':>9} {'p50 ms':>8} {'p99 ms':>8}  outcomes")
    phases = {
        "saturation": f"saturation c={args.concurrency}",
        "fixed": f"fixed {args.rate:g}/s",
    }
    for r in results:
        for phase, label in phases.items():
            f = r[phase]
            figures = f"{f['reviews_per_s']:>9.0f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f}"
            print(f"{r['config']:<7} {label:<22} {figures}  {f['outcomes']}")
    if len(results) == 2:
        empty, full = (r["saturation"] for r in results)
        fe, ff = (r["fixed"] for r in results)
        print(
            f"ratio full/empty: saturation throughput "
            f"{full['reviews_per_s'] / empty['reviews_per_s']:.2f}x, "
            f"p50 {full['p50_ms'] / empty['p50_ms']:.2f}x, "
            f"p99 {full['p99_ms'] / empty['p99_ms']:.2f}x; fixed rate "
            f"p50 {ff['p50_ms'] / fe['p50_ms']:.2f}x, p99 {ff['p99_ms'] / fe['p99_ms']:.2f}x"
        )


if __name__ == "__main__":
    main()
