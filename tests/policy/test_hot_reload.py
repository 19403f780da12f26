"""Hot reload under load: 4 threads decide continuously while the store swaps revisions 100
times; every decision's result must be exactly what the revision it reports holds."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from policy.cache import DecisionCache
from policy.engine import PolicyEngine, compute_revision
from policy.errors import PolicyCompileError
from policy.service import PolicyService
from policy.sources import load_directory
from policy.store import PolicyStore

SWAPS = 100
THREADS = 4


def _write(root: Path, n: int) -> None:
    (root / "a.rego").write_text(f"package hot\n\nversion_a := {n}\n")
    (root / "b.rego").write_text(
        'package hot\n\nresult := {"a": version_a, "b": version_b, "d": data.cfg.v}\n\n'
        f"version_b := {n}\n"
    )
    (root / "cfg").mkdir(exist_ok=True)
    (root / "cfg" / "data.json").write_text(json.dumps({"v": n}))


def _announce(root: Path, expected: dict[str, dict[str, int]]) -> None:
    """Record what the revision about to be loaded holds, computed from the files alone,
    before the engine can serve it."""
    sources = load_directory(root)
    found = {
        key: int(m.group(1))
        for key, text in (("a", sources.modules["a.rego"]), ("b", sources.modules["b.rego"]))
        if (m := re.search(rf"version_{key} := (\d+)", text))
    }
    found["d"] = sources.data["cfg"]["v"]
    expected[compute_revision(sources.modules, sources.data)] = found


def test_no_decision_mixes_revisions(tmp_path: Path, embedded_engine: PolicyEngine) -> None:
    _write(tmp_path, 0)
    store = PolicyStore(embedded_engine, tmp_path)
    expected: dict[str, dict[str, int]] = {}
    _announce(tmp_path, expected)
    store.reload()
    service = PolicyService(store, cache=DecisionCache(100), audit=None)
    stop = threading.Event()
    problems: list[str] = []
    counts = [0] * THREADS

    def worker(i: int) -> None:
        try:
            while not stop.is_set():
                key = "k" if i % 2 else None  # half the threads also go through the cache
                d = service.decide("hot/result", {"i": i}, cache_key=key, log=False)
                counts[i] += 1
                want = expected.get(d.revision)
                if d.result != want:
                    problems.append(f"revision {d.revision}: got {d.result}, holds {want}")
                    return
        except Exception as exc:
            problems.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    try:
        for n in range(1, SWAPS + 1):
            _write(tmp_path, n)
            _announce(tmp_path, expected)
            store.reload()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert problems == []
    assert store.reloads == SWAPS + 1
    assert store.revision is not None
    assert expected[store.revision] == {"a": SWAPS, "b": SWAPS, "d": SWAPS}
    assert all(c > 0 for c in counts), counts


def test_bad_revision_during_load_is_never_served(
    tmp_path: Path, embedded_engine: PolicyEngine
) -> None:
    n = 3
    _write(tmp_path, n)
    store = PolicyStore(embedded_engine, tmp_path)
    store.reload()
    good = store.revision
    (tmp_path / "b.rego").write_text("package hot\nresult := {\n")
    with pytest.raises(PolicyCompileError, match=r"b\.rego:"):
        store.reload()
    d = store.engine.evaluate("hot/result")
    assert (d.revision, d.result) == (good, {"a": n, "b": n, "d": n})
