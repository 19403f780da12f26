"""Runtime ingestion benchmark: durable events/s via single POSTs vs NDJSON batches, and
event-to-enforcement latency (POST of a Critical alert -> the quarantine the gates read).

    .venv/bin/python bench/runtime.py [--seconds 5] [--database-url URL]

Throughput: the server (uvicorn, the real runtime router, SQLite in a temp dir unless
--database-url) runs in a child process; this process drives it with httpx over loopback.
Every accepted event is committed and audited before its reply, as in production. The caller
is taken from a header (mTLS termination is not part of what is measured). The baseline is
single-event POSTs, measured in the same run; the ratio batched/single is printed.

Latency: in one process (server in a thread), POST a Critical "Terminal shell in container"
alert for a pod whose registration entry exists, and time until
``QuarantineService.is_quarantined`` (what the inference gate and Workload API read) returns
the record. A new pod per sample, so throttling does not hide work. Then the same with the
POST sent by another process, as Falco sends it: its client no longer competes with the
server's threads for this interpreter's lock, and the time ends when the quarantine is
visible (``time.monotonic``, one clock for every process of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALERT: dict[str, Any] = json.loads(
    (ROOT / "tests/runtime/corpus/falco-docs-terminal-shell.json").read_text()
)
FALCO_ID = "spiffe://zerogate.internal/falco"
HEADERS = {"x-bench-spiffe-id": FALCO_ID}
NOISE = {"priority": "Notice", "rule": "Noisy rule"}  # the flood: matches no response rule


def _alert(n: int, pod: str | None = None, noise: bool = False) -> dict[str, Any]:
    alert: dict[str, Any] = json.loads(json.dumps(ALERT))
    if noise:
        alert.update(NOISE)
    alert["output_fields"]["evt.num"] = n
    if pod is not None:
        alert["output_fields"]["k8s.pod.name"] = pod
    return alert


async def _caller(request: Request) -> str | None:
    return request.headers.get("x-bench-spiffe-id") or None


def _app(rt: Any) -> FastAPI:
    from zerogate.telemetry import FASTAPI_TELEMETRY_OFF

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        rt.parser.close()  # before uvicorn re-raises SIGTERM, as RuntimeService.stop does

    app = FastAPI(lifespan=lifespan, telemetry=FASTAPI_TELEMETRY_OFF)  # as zerogate.server
    rt.install(app, caller=_caller)  # as zerogate.wiring does
    return app


def serve(url: str, key: Path, port_file: Path, parse_processes: str, respond: bool) -> None:
    """Child process: the runtime behind uvicorn; ``parse_processes`` is a number or ``auto``
    (the setting's default). ``respond``: with the shipped response policy and the responder
    thread, as ``zerogate serve`` runs it; otherwise ingestion only."""
    import uvicorn

    from runtime.service import open_runtime
    from zerogate.audit import AuditLog
    from zerogate.config import Settings
    from zerogate.store import Database

    db = Database.open(url)
    audit = AuditLog.open(db, signing_key=key)
    runtime: dict[str, Any] = {"max_body_bytes": 64 << 20}
    if parse_processes != "auto":
        runtime["parse_processes"] = int(parse_processes)
    if respond:
        from identity.entries import EntryRepository
        from policy.service import open_policy
        from zerogate.clock import SYSTEM_CLOCK

        settings = Settings(runtime=runtime, policy={"rego_dir": ROOT / "rego", "watch": False})
        policy = open_policy(settings, audit)
        entries = EntryRepository(db, clock=SYSTEM_CLOCK, audit=audit)
        rt = open_runtime(settings, db, audit, policy=policy, entries=entries)
        assert rt.responder is not None
        rt.responder.start_thread()
    else:
        rt = open_runtime(Settings(runtime=runtime), db, audit)
    rt.ingestor.start()
    rt.parser.start()
    sock = socket.socket()
    # uvicorn leaves a socket it is handed as it is: without TCP_NODELAY every reply waits
    # for the peer's delayed ACK (~40 ms per request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(_app(rt), log_level="warning", access_log=False)
    gc.collect()  # as zerogate.server.ControlPlane.run does once everything is up
    gc.freeze()
    uvicorn.Server(config).run(sockets=[sock])


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 exchange on an open stream. A lean client (no httpx), so that
    the server, not the client, is what the 2 cores spend their time on."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    status = int(head.split(b" ", 2)[1])
    return status, await reader.readexactly(length)


def _request(body: bytes, content_type: str) -> bytes:
    return (
        b"POST /v1/runtime/falco HTTP/1.1\r\nHost: bench\r\n"
        + f"x-bench-spiffe-id: {FALCO_ID}\r\nContent-Type: {content_type}\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live children (the parse
    workers) so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu_seconds(c) for c in children)


Rate = tuple[float, float, float, float]
"""(events per second, server CPU microseconds per event, request p50 ms, request p99 ms)"""


async def _drive(
    port: int,
    seconds: float,
    concurrency: int,
    requests: list[bytes],
    per_request: int,
    check: Any,
    pid: int,
) -> Rate:
    """Send the prepared ``requests`` over ``concurrency`` keep-alive connections for
    ``seconds``; returns events acknowledged per second and the server's CPU time per event
    (a figure the other processes on a shared machine do not move much)."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    done = 0
    waits: list[float] = []
    cpu0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    deadline = time.monotonic() + seconds

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal done
        while time.monotonic() < deadline and requests:
            sent = time.perf_counter()
            status, body = await _exchange(reader, writer, requests.pop())
            waits.append(time.perf_counter() - sent)
            check(status, body)
            done += per_request

    await asyncio.gather(*(worker(r, w) for r, w in conns))
    rate = done / (time.perf_counter() - t0)
    cpu_us = (_cpu_seconds(pid) - cpu0) / max(done, 1) * 1e6
    for _, writer in conns:
        writer.close()
    if not requests:
        raise SystemExit("the benchmark ran out of prepared requests: prepare more")
    waits.sort()
    p50 = waits[len(waits) // 2] * 1000
    p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000
    return rate, cpu_us, p50, p99


def _check_single(status: int, body: bytes) -> None:
    if status != 200 or json.loads(body)["status"] != "stored":
        raise SystemExit(f"single POST failed: {status} {body[:300]!r}")


def singles(
    port: int, pid: int, seconds: float, concurrency: int, start: int, noise: bool = False
) -> Rate:
    """Single-alert POSTs (Falco http_output, Falcosidekick): events/s. The alert is the
    corpus's Critical one, or with ``noise`` a Notice alert of a rule no policy acts on."""
    requests = [
        _request(json.dumps(_alert(n, noise=noise)).encode(), "application/json")
        for n in range(start, start + int(seconds * 8000) + 1000)
    ]
    return asyncio.run(_drive(port, seconds, concurrency, requests, 1, _check_single, pid))


def batches(
    port: int,
    pid: int,
    seconds: float,
    concurrency: int,
    size: int,
    start: int,
    noise: bool = False,
) -> Rate:
    """NDJSON batches of ``size`` alerts: events/s."""
    requests = [
        _request(
            "\n".join(
                json.dumps(_alert(start + b * size + i, noise=noise)) for i in range(size)
            ).encode(),
            "application/x-ndjson",
        )
        for b in range(int(seconds * 40000 / size) + 10)
    ]

    def check(status: int, body: bytes) -> None:
        if status != 200 or json.loads(body)["accepted"] != size:
            raise SystemExit(f"batch POST failed: {status} {body[:300]!r}")

    return asyncio.run(_drive(port, seconds, concurrency, requests, size, check, pid))


@contextlib.contextmanager
def _server(
    url: str, tmp: Path, parse_processes: str, respond: bool = False
) -> Iterator[tuple[int, int]]:
    """A ``serve`` child process; yields (port, pid)."""
    import httpx

    port_file = tmp / "port"
    port_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["--serve", url, str(tmp / "audit.pem"), str(port_file), parse_processes,
            "respond" if respond else "ingest"]  # fmt: skip
    child = subprocess.Popen([sys.executable, __file__, *args], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text()):
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("benchmark server did not start")
            time.sleep(0.05)
        port = int(port_file.read_text())
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield port, child.pid
    finally:
        child.terminate()
        child.wait(timeout=30)


Rates = tuple[list[tuple[int, Rate]], list[tuple[str, Rate]], list[tuple[str, Rate]]]


def throughput(
    url: str, tmp: Path, seconds: float, concurrency: list[int], parse_processes: list[str]
) -> Rates:
    """Single POSTs at each ``concurrency`` and batches at each ``parse_processes`` with
    ingestion alone; then both again (the first concurrency, the default parsing) with the
    responder running, as ``zerogate serve`` runs it: once with Notice alerts of a rule the
    policy does not act on (a noisy pod's flood: each event decided, nothing logged or done),
    once with Critical alerts (each event decided, decision-logged and acted on, its ``alert``
    action throttled after the first: the responder's worst case)."""
    with _server(url, tmp, "auto") as (port, pid):
        singles(port, pid, 1.0, concurrency[0], 10**8)  # warm-up
        single_rates = [
            (c, singles(port, pid, seconds, c, (3 + i) * 10**8)) for i, c in enumerate(concurrency)
        ]
    batch_rates = []
    for i, processes in enumerate(parse_processes):
        with _server(url, tmp, processes) as (port, pid):
            batches(port, pid, 1.0, 4, 1000, (10 + 2 * i) * 10**8)  # warm-up
            batch_rates.append(
                (processes, batches(port, pid, seconds, 4, 1000, (11 + 2 * i) * 10**8))
            )
    responding: list[tuple[str, Rate]] = []
    kinds = [("Notice alerts, no action", True), ("Critical alerts, all act", False)]
    for k, (kind, noise) in enumerate(kinds):
        base = (20 + 4 * k) * 10**8
        with _server(url, tmp, "auto", respond=True) as (port, pid):
            singles(port, pid, 1.0, concurrency[0], base, noise)  # warm-up
            single = singles(port, pid, seconds, concurrency[0], base + 10**8, noise)
            responding.append(
                (f"single-event POSTs ({concurrency[0]:>2} in flight), {kind}", single)
            )
            batch = batches(port, pid, seconds, 4, 1000, base + 2 * 10**8, noise)
            responding.append((f"NDJSON batches of 1000 (4 in flight), {kind}", batch))
    return single_rates, batch_rates, responding


class _Sender:
    """Another process that POSTs alerts, as Falco is: for each JSON line written to it, it
    answers the ``time.monotonic()`` at which it started the POST (CLOCK_MONOTONIC, the same
    clock in every process of the machine)."""

    def __init__(self, base: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._proc = subprocess.Popen(
            [sys.executable, __file__, "--post-to", base],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def post(self, alert: dict[str, Any]) -> float:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(alert).encode() + b"\n")
        self._proc.stdin.flush()
        started, status = self._proc.stdout.readline().split()
        if status != b"200":
            raise SystemExit(f"the sender's POST failed: {status!r}")
        return float(started)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


def post_to(base: str) -> None:
    """The ``_Sender`` child: one keep-alive connection, one POST per stdin line."""
    import httpx

    with httpx.Client(base_url=base, timeout=30) as client:
        for line in sys.stdin.buffer:
            started = time.monotonic()
            reply = client.post(
                "/v1/runtime/falco",
                content=line,
                headers={**HEADERS, "content-type": "application/json"},
            )
            sys.stdout.write(f"{started!r} {reply.status_code}\n")
            sys.stdout.flush()


def latency(
    url: str, tmp: Path, samples: int, *, flood: int = 0
) -> tuple[list[float], list[float], list[float]]:
    """Event-to-enforcement samples: ``samples`` on an idle responder, POSTed from this
    process (the baseline of earlier runs: until both the reply and the quarantine are in);
    ``samples`` more POSTed by another process, as Falco is (until the quarantine is
    visible, on the monotonic clock both share); then (``flood`` > 0) 5 more, each POSTed
    right after a batch of ``flood`` Notice alerts from a noisy pod, so the Critical alert
    arrives behind a responder backlog."""
    import httpx

    from identity.entries import EntryRepository, EntrySpec, Selector
    from identity.spiffeid import SpiffeId
    from policy.service import open_policy
    from runtime.quarantine import QuarantineChange
    from runtime.service import open_runtime
    from zerogate.audit import AuditLog
    from zerogate.clock import SYSTEM_CLOCK
    from zerogate.config import Settings
    from zerogate.store import Database

    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from runtime_server import serve as serve_in_thread

    db = Database.open(url)
    audit = AuditLog.open(db, signing_key=tmp / "audit-lat.pem")
    settings = Settings(policy={"rego_dir": ROOT / "rego", "watch": False})
    policy = open_policy(settings, audit)
    audit.flush()
    entries = EntryRepository(db, clock=SYSTEM_CLOCK, audit=audit)
    for i in range(2 * samples + (5 if flood else 0)):
        entries.create(
            EntrySpec(
                spiffe_id=SpiffeId.parse(f"spiffe://zerogate.internal/ns/default/pod/lat-{i}"),
                selectors=(
                    Selector.parse("k8s:ns:default"),
                    Selector.parse(f"k8s:pod-name:lat-{i}"),
                ),
            )
        )
    rt = open_runtime(settings, db, audit, policy=policy, entries=entries)
    out: list[float] = []
    apart: list[float] = []  # POSTed by another process
    flooded: list[float] = []
    noisy = 0

    async def enforce(
        client: httpx.Client, i: int, into: list[float], flood: int, sender: _Sender | None = None
    ) -> None:
        nonlocal noisy
        sid = f"spiffe://zerogate.internal/ns/default/pod/lat-{i}"
        seen = threading.Event()
        enforced: list[float] = []

        def on_change(
            change: QuarantineChange, sid: str = sid, seen: threading.Event = seen
        ) -> None:
            if change.record.spiffe_id == sid:
                enforced.append(time.monotonic())
                seen.set()

        unsubscribe = rt.quarantine.subscribe(on_change)
        if flood:
            body = "\n".join(
                json.dumps({**_alert(2 * 10**9 + noisy + k, pod="noisy"), **NOISE})
                for k in range(flood)
            )
            noisy += flood
            await asyncio.to_thread(
                client.post,
                "/v1/runtime/falco",
                content=body.encode(),
                headers={**HEADERS, "content-type": "application/x-ndjson"},
            )
        if sender is not None:
            started = await asyncio.to_thread(sender.post, _alert(10**9 + i, pod=f"lat-{i}"))
            await asyncio.to_thread(seen.wait, 30)
            assert rt.quarantine.is_quarantined(sid) is not None, sid
            into.append((enforced[0] - started) * 1000)
            unsubscribe()
            return
        t0 = time.perf_counter()
        await asyncio.to_thread(
            client.post,
            "/v1/runtime/falco",
            json=_alert(10**9 + i, pod=f"lat-{i}"),
            headers=HEADERS,
        )
        await asyncio.to_thread(seen.wait, 30)
        assert rt.quarantine.is_quarantined(sid) is not None, sid
        into.append((time.perf_counter() - t0) * 1000)
        unsubscribe()

    async def run() -> None:
        await rt.start()
        gc.collect()  # as zerogate.server.ControlPlane.run does once everything is up
        gc.freeze()
        try:
            with serve_in_thread(_app(rt)) as base, httpx.Client(base_url=base) as client:
                for i in range(samples):
                    await enforce(client, i, out, 0)
                sender = _Sender(base)
                try:
                    await asyncio.to_thread(sender.post, _alert(3 * 10**9))  # its connection
                    for i in range(samples, 2 * samples):
                        await enforce(client, i, apart, 0, sender)
                finally:
                    sender.close()
                for i in range(2 * samples, 2 * samples + (5 if flood else 0)):
                    while rt.responder is not None and rt.responder.backlog:
                        await asyncio.sleep(0.05)  # each sample starts from a fresh backlog
                    await enforce(client, i, flooded, flood)
        finally:
            await rt.stop()
            audit.close()
            db.close()

    asyncio.run(run())
    return out, apart, flooded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--database-url", default="")
    parser.add_argument(
        "--concurrency",
        default="8,32,64",
        help="single POSTs in flight, comma-separated: one phase each (one Falco's http_output "
        "sends one at a time, so this is the number of Falco senders)",
    )
    parser.add_argument(
        "--flood",
        type=int,
        default=2000,
        help="Notice alerts POSTed just before each of 5 more enforcement samples (0: none)",
    )
    parser.add_argument(
        "--parse-processes",
        default="0,auto",
        help="runtime.parse_processes for the batch phases, comma-separated: one phase each "
        "(0: batches parsed in the serving process, the baseline; auto: the default)",
    )
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--post-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.post_to:
        post_to(args.post_to)
        return
    if args.serve:
        serve(
            args.serve[0],
            Path(args.serve[1]),
            Path(args.serve[2]),
            args.serve[3],
            args.serve[4] == "respond",
        )
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
        single_rates, batch_rates, responding = throughput(
            url,
            tmp,
            args.seconds,
            [int(c) for c in args.concurrency.split(",")],
            args.parse_processes.split(","),
        )
        lat_url = args.database_url or f"sqlite:///{tmp / 'latency.db'}"
        idle, apart, flooded = latency(lat_url, tmp, args.samples, flood=args.flood)
        lat = sorted(idle)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    backend = url.split(":", 1)[0]
    print(f"database: {backend}   cores: {os.cpu_count()}")
    for c, (rate, cpu, r50, r99) in single_rates:
        print(
            f"single-event POSTs ({c:>2} in flight): {rate:8.0f} events/s"
            f"  server CPU {cpu:6.0f} us/event  reply p50 {r50:5.1f} ms p99 {r99:5.1f} ms"
            "   target >= 3000/s"
        )
    for processes, (rate, cpu, r50, r99) in batch_rates:
        print(
            f"NDJSON batches of 1000 (4 in flight, parse processes {processes:>4}): "
            f"{rate:6.0f} events/s  server CPU {cpu:4.0f} us/event  reply p50 {r50:5.1f} ms"
            f" p99 {r99:5.1f} ms   target >= 20000/s"
        )
    for what, (rate, cpu, r50, r99) in responding:
        print(
            f"{what}, responder running: {rate:6.0f} events/s  server CPU {cpu:5.0f} us/event"
            f"  reply p50 {r50:5.1f} ms p99 {r99:5.1f} ms"
        )
    single = single_rates[0][1][0]
    base = batch_rates[0][1][0]
    for processes, (rate, *_) in batch_rates:
        print(
            f"ratio batched (parse processes {processes}) / single "
            f"({single_rates[0][0]} in flight): {rate / single:5.1f}x;"
            f" / batched (parse processes {batch_rates[0][0]}): {rate / base:5.2f}x"
        )
    print(
        f"event-to-enforcement ({len(lat)} samples): p50 {p50:.1f} ms  p99 {p99:.1f} ms"
        "   target p99 <= 50 ms"
    )
    if apart:
        far = sorted(apart)
        far99 = far[min(len(far) - 1, int(len(far) * 0.99))]
        print(
            f"event-to-enforcement, POSTed by another process ({len(far)} samples): "
            f"p50 {statistics.median(far):.1f} ms  p99 {far99:.1f} ms   target p99 <= 50 ms"
        )
    if flooded:
        print(
            f"event-to-enforcement behind {args.flood} Notice alerts (5 samples): "
            f"{', '.join(f'{x:.0f}' for x in flooded)} ms"
        )


if __name__ == "__main__":
    main()
