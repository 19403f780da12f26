"""Policy decision latency, per engine, for the shipped inference policy.

    .venv/bin/python bench/policy.py [--n 3000] [--remote]

For each embedded engine (opa, regorus), in the same run and on the same realistic input
(~1 KB, the shape the inference gate sends):

- bare:    the engine library called directly (the floor: no wrapper, no cache)
- engine:  ``PolicyEngine.evaluate`` (path normalisation, Decision, timing)
- cold:    ``PolicyService.decide`` without a cache key (every call evaluates)
- cached:  ``PolicyService.decide`` with a cache key (hits after the first call)
- logged:  cold + the decision-log record appended to a real AuditLog (SQLite)

and, with ``--remote``, ``opa-server`` through zerogate's own OPA REST API on a loopback
uvicorn. Prints evals/s, p50/p99 in microseconds, CPU microseconds per call (process time:
steadier than wall time on a shared machine; the remote row's server runs in-process, so
its CPU includes the server's work), the minimum (the uncontended cost on a busy machine)
and each row's p50 ratio to its engine's bare floor.
Targets (issue 4): cold p50 <= 400 us on opa, <= 100 us on regorus, <= 10 us on a hit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this file's directory comes first on sys.path and its name would hide the
# ``policy`` package: put the repository root there instead.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
PATH = "zerogate/inference/decision"
INPUT: dict[str, Any] = {
    "subject": {
        "spiffe_id": "spiffe://zerogate.internal/ns/ml/sa/trainer",
        "trust_domain": "zerogate.internal",
        "path": "/ns/ml/sa/trainer",
    },
    "request": {
        "model": "SmolLM2-135M-Instruct",
        "operation": "chat",
        "stream": True,
        "max_tokens": 256,
        "input_tokens": 412,
    },
    "runtime": {"quarantined": False, "reasons": []},
    "usage": {
        "requests_last_minute": 12,
        "tokens_last_minute": 5230,
        "tokens_today": 181022,
        "requests_today": 301,
    },
    "time": "2026-06-01T12:00:00Z",
    "request_id": "0b9c2f8e-6a3e-4a51-9d0e-3c8f2d1e7a44",
    "client": {"address": "10.1.2.3", "user_agent": "OpenAI/Python 1.40.0"},
    "attributes": {
        "source": {"principal": "spiffe://zerogate.internal/ns/ml/sa/trainer"},
        "destination": {"principal": "spiffe://zerogate.internal/inference"},
        "request": {"http": {"method": "POST", "path": "/v1/chat/completions", "size": 1830}},
    },
}


def measure(fn: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(min(200, n)):
        fn()
    samples = []
    start = time.perf_counter()
    cpu = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu
    samples.sort()
    return {
        "per_s": n / total,
        "cpu": cpu / n * 1e6,
        "min": samples[0] / 1000,
        "p50": statistics.median(samples) / 1000,
        "p99": samples[int(len(samples) * 0.99) - 1] / 1000,
    }


def bare_call(engine: Any) -> Callable[[], Any]:
    """The library call with no zerogate code around it."""
    if engine.name == "opa":
        native = engine._state.instances[0]
        dotted = PATH.replace("/", ".")
        return lambda: native.eval_document(dotted, INPUT)
    engines = engine._engines()
    encoded = json.dumps(INPUT)
    query = "data." + PATH.replace("/", ".")

    def call() -> Any:
        engines.with_input.set_input_json(encoded)
        return engines.with_input.eval_rule(query)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--remote", action="store_true", help="also measure opa-server")
    args = parser.parse_args()

    from policy.cache import DecisionCache
    from policy.opa_embedded import OpaEmbeddedEngine
    from policy.regorus import RegorusEngine
    from policy.service import PolicyService
    from policy.store import PolicyStore
    from zerogate.audit import AuditLog
    from zerogate.store import Database

    tmp = Path(tempfile.mkdtemp(prefix="zerogate-bench-"))
    db = Database.open(f"sqlite:///{tmp / 'bench.db'}")
    audit = AuditLog.open(db, signing_key=tmp / "audit.pem")
    rows: list[tuple[str, str, dict[str, float]]] = []
    print(f"input {len(json.dumps(INPUT))} bytes, path data.{PATH.replace('/', '.')}, n={args.n}")

    for engine_cls in (OpaEmbeddedEngine, RegorusEngine):
        engine = engine_cls()
        store = PolicyStore(engine, REPO / "rego")
        store.reload()
        service = PolicyService(store, cache=DecisionCache(10000), audit=audit)
        decision = service.decide(PATH, INPUT, log=False)
        assert decision.allowed, decision.result
        name = engine.name
        rows.append((name, "bare", measure(bare_call(engine), args.n)))
        key = ("spiffe://zerogate.internal/ns/ml/sa/trainer", "SmolLM2-135M-Instruct", "chat")
        modes: dict[str, Callable[[], Any]] = {
            "engine": partial(engine.evaluate, PATH, INPUT),
            "cold": partial(service.decide, PATH, INPUT, log=False),
            "cached": partial(service.decide, PATH, INPUT, cache_key=key, log=False),
            "logged": partial(service.decide, PATH, INPUT),
        }
        for mode, call in modes.items():
            rows.append((name, mode, measure(call, args.n)))
        audit.flush()

    if args.remote:
        rows.extend(_remote(args.n))

    audit.close()
    db.close()
    print(
        f"{'engine':<11}{'mode':<8}{'evals/s':>10}{'min us':>9}{'p50 us':>10}{'p99 us':>10}"
        f"{'cpu us':>9}{'x bare p50':>12}"
    )
    floors = {e: r["p50"] for e, mode, r in rows if mode == "bare"}
    for engine_name, mode, r in rows:
        floor = floors.get(engine_name) or floors["opa"]
        print(
            f"{engine_name:<11}{mode:<8}{r['per_s']:>10.0f}{r['min']:>9.1f}{r['p50']:>10.1f}"
            f"{r['p99']:>10.1f}"
            f"{r['cpu']:>9.1f}{r['p50'] / floor:>12.2f}"
        )
    by = {(e, m): r for e, m, r in rows}
    print(
        "ratios: opa cold/regorus cold p50 = "
        f"{by[('opa', 'cold')]['p50'] / by[('regorus', 'cold')]['p50']:.1f}x; "
        f"opa cold/cached = {by[('opa', 'cold')]['p50'] / by[('opa', 'cached')]['p50']:.0f}x; "
        f"regorus cold/cached = "
        f"{by[('regorus', 'cold')]['p50'] / by[('regorus', 'cached')]['p50']:.0f}x"
    )


def _remote(n: int) -> list[tuple[str, str, dict[str, float]]]:
    import uvicorn
    from fastapi import FastAPI

    from policy.api import router
    from policy.cache import DecisionCache
    from policy.opa_embedded import OpaEmbeddedEngine
    from policy.opa_remote import OpaRemoteEngine
    from policy.service import PolicyService
    from policy.sources import load_directory
    from policy.store import PolicyStore

    store = PolicyStore(OpaEmbeddedEngine(), None)
    store.reload()
    served = PolicyService(store, cache=DecisionCache(0), audit=None)
    app = FastAPI()
    app.include_router(router(served, lambda: None))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    remote = OpaRemoteEngine([f"http://127.0.0.1:{port}"], timeout_s=2.0)
    sources = load_directory(REPO / "rego")
    remote.load(sources.modules, sources.data)
    rows = [
        ("opa-server", "engine", measure(lambda: remote.evaluate(PATH, INPUT), max(n // 10, 50)))
    ]
    remote.close()
    server.should_exit = True
    thread.join(timeout=10)
    return rows


if __name__ == "__main__":
    main()
