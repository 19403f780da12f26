"""Audit log benchmark: group commit vs a naive commit-per-record writer, same run.

For SQLite (file, WAL, synchronous=FULL) and PostgreSQL (when reachable):
- throughput: 8 threads append as fast as they can (each waits for its own record to be
  durable before the next, as a request handler would); records/s;
- latency: one producer at a fixed rate of 1,000 appends/s; caller-visible p50/p99 (from
  ``append`` to the future resolving).
The naive writer does per record what the group writer does per batch: lock, read the head,
hash, insert, commit. Ratios are printed against it.

Usage: python bench/audit.py [--seconds 3] [--postgres URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from zerogate.audit import AuditLog, canonical_payload, format_ts, record_hash
from zerogate.clock import SYSTEM_CLOCK
from zerogate.store import Database
from zerogate.store.tables import audit_log

PAYLOAD = {
    "subject": "spiffe://zerogate.internal/ns/ml/sa/trainer",
    "model": "all-MiniLM-L6-v2",
    "decision": "allow",
    "tokens": {"in": 42, "out": 0},
    "latency_ms": 3.1,
}


class NaiveWriter:
    """One transaction per record: the baseline group commit is measured against."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.lock = threading.Lock()

    def append(self, kind: str, payload: dict[str, Any]) -> Future[int]:
        data = canonical_payload(payload, 1 << 20)
        fut: Future[int] = Future()
        with self.lock, self.db.engine.connect() as raw:
            conn = raw.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if self.db.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(31337)"))
                row = conn.execute(
                    text("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                ).first()
                seq, prev = (row[0] + 1, bytes(row[1])) if row else (1, bytes(32))
                now = SYSTEM_CLOCK.now()
                ts = format_ts(now)
                conn.execute(
                    insert(audit_log).values(
                        seq=seq,
                        ts=now,
                        kind=kind,
                        payload=data.decode(),
                        prev_hash=prev,
                        hash=record_hash(prev, seq, ts, kind, data),
                    )
                )
        fut.set_result(seq)
        return fut

    def close(self) -> None:
        pass


def throughput(append: Callable[[str, dict[str, Any]], Future[int]], seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * 8

    def worker(i: int) -> None:
        n = 0
        while time.monotonic() < stop:
            # a handler appends a few records per request and waits for them together
            futures = [append("bench.record", {**PAYLOAD, "w": i, "n": n + k}) for k in range(4)]
            for f in futures:
                f.result()
            n += 4
        counts[i] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def saturated(append: Callable[[str, dict[str, Any]], Future[int]], total: int) -> float:
    """8 producers keep many appends in flight (the writer's own capacity)."""
    per = total // 8

    def worker(i: int) -> None:
        futures = [append("bench.record", {**PAYLOAD, "w": i, "n": n}) for n in range(per)]
        for f in futures:
            f.result()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * 8 / (time.monotonic() - start)


def latency(
    append: Callable[[str, dict[str, Any]], Future[int]], rate: float, seconds: float
) -> tuple[float, float]:
    done: list[float] = []
    lock = threading.Lock()

    def record(started: float) -> Callable[[Future[int]], None]:
        def cb(_: Future[int]) -> None:
            with lock:
                done.append(time.perf_counter() - started)

        return cb

    interval = 1.0 / rate
    n = int(rate * seconds)
    next_at = time.perf_counter()
    futures = []
    for i in range(n):
        now = time.perf_counter()
        if now < next_at:
            time.sleep(next_at - now)
        started = time.perf_counter()
        fut = append("bench.latency", {**PAYLOAD, "n": i})
        fut.add_done_callback(record(started))
        futures.append(fut)
        next_at += interval
    for f in futures:
        f.result()
    q = statistics.quantiles(done, n=100)
    return q[49] * 1000, q[98] * 1000


def run_backend(name: str, make_url: Callable[[], str], seconds: float) -> None:
    results: dict[str, dict[str, float]] = {}
    for mode in ("naive", "group"):
        url = make_url()
        db = Database.open(url)
        with tempfile.TemporaryDirectory() as tmp:
            writer: AuditLog | NaiveWriter
            if mode == "group":
                writer = AuditLog.open(db, signing_key=Path(tmp) / "k.pem")
            else:
                writer = NaiveWriter(db)
            append = writer.append
            rps = throughput(append, seconds)
            sat = saturated(append, 40_000 if mode == "group" else 400)
            p50, p99 = latency(append, 1000.0, seconds)
            writer.close()
        db.close()
        results[mode] = {"rps": rps, "sat": sat, "p50": p50, "p99": p99}
        print(
            f"{name:10s} {mode:6s} 8 handlers {rps:8.0f}/s  saturated {sat:8.0f}/s  "
            f"@1000/s p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
        )
    ratio = results["group"]["rps"] / results["naive"]["rps"]
    sat_ratio = results["group"]["sat"] / results["naive"]["sat"]
    print(
        f"{name:10s} group/naive throughput ratio {ratio:.1f}x (8 handlers), "
        f"{sat_ratio:.1f}x (saturated); "
        f"p99 ratio {results['group']['p99'] / results['naive']['p99']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    tmpdir = Path(tempfile.mkdtemp())
    counter = iter(range(1000))
    run_backend("sqlite", lambda: f"sqlite:///{tmpdir / f'bench{next(counter)}.db'}", args.seconds)

    admin = create_engine(args.postgres, connect_args={"connect_timeout": 3})
    try:
        with admin.connect():
            pass
    except Exception as exc:
        print(f"postgresql skipped: {str(exc).splitlines()[0]}")
        return
    schemas: list[str] = []

    def pg_url() -> str:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        return f"{args.postgres}?options=-csearch_path%3D{schema}"

    try:
        run_backend("postgresql", pg_url, args.seconds)
    finally:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
