"""Differential test: the shipped policies give the same answers on OPA and regorus.

For every shipped package, inputs are harvested from its test module (object-valued helper
rules such as ``base``), taken from ``differential/inputs.yaml``, and mutated (each key
removed, each leaf set to null or to a value of the wrong type). The whole package document
is evaluated on both embedded engines and must be equal. The shipped tests must also have
the same outcome on both. Any disagreement fails and names the input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy.engine import PolicyEngine
from policy.errors import PolicyEvalError
from policy.opa_embedded import OpaEmbeddedEngine
from policy.regorus import RegorusEngine
from policy.sources import load_directory
from policy.testing import load_paths, run_tests

REPO = Path(__file__).resolve().parents[2]
REGO = REPO / "rego"
EXTRA = yaml.safe_load((Path(__file__).parent / "differential" / "inputs.yaml").read_text())
PACKAGES = ["zerogate.inference", "zerogate.identity", "zerogate.admission", "zerogate.runtime"]


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[OpaEmbeddedEngine, RegorusEngine]]:
    loaded = load_paths([REGO])
    opa, reg = OpaEmbeddedEngine(), RegorusEngine()
    opa.load(loaded.modules, loaded.data)
    reg.load(loaded.modules, loaded.data)
    yield opa, reg
    opa.close()
    reg.close()


def _harvest(opa: OpaEmbeddedEngine, package: str) -> list[Any]:
    doc = opa.evaluate(f"{package}_test").result or {}
    found = [v for k, v in doc.items() if not k.startswith("test_") and isinstance(v, dict)]
    return found + list(EXTRA.get(package, []))


def _leaf_paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaf_paths(v, (*at, k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaf_paths(v, (*at, i))
    else:
        yield at


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _variants(base: dict[str, Any]) -> Iterator[Any]:
    yield base
    yield {}
    yield None
    for key in base:
        yield {k: v for k, v in base.items() if k != key}
    for path in _leaf_paths(base):
        if not path:
            continue
        yield _set(base, path, None)
        yield _set(base, path, "wrong-type")
        yield _set(base, path, 7)


def _answer(engine: PolicyEngine, package: str, inp: Any) -> Any:
    try:
        decision = engine.evaluate(package, inp)
    except PolicyEvalError:
        return "<error>"
    return decision.result if decision.defined else "<undefined>"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_documents_agree(
    engines: tuple[OpaEmbeddedEngine, RegorusEngine], package: str
) -> None:
    opa, reg = engines
    inputs = _harvest(opa, package)
    assert inputs, f"no inputs harvested for {package}"
    checked = 0
    disagreements = []
    for base in inputs:
        for inp in _variants(base):
            a, b = _answer(opa, package, inp), _answer(reg, package, inp)
            checked += 1
            if a != b:
                disagreements.append(
                    f"input={json.dumps(inp)}\n  opa={json.dumps(a)}\n  regorus={json.dumps(b)}"
                )
    assert not disagreements, f"{len(disagreements)}/{checked} differ:\n" + "\n".join(
        disagreements[:5]
    )
    assert checked >= 10


def test_shipped_tests_have_the_same_outcome_on_both_engines() -> None:
    loaded = load_paths([REGO])
    outcomes = []
    for engine in (OpaEmbeddedEngine(), RegorusEngine()):
        results = run_tests(engine, loaded)
        outcomes.append({r.case.full_name: r.outcome for r in results})
        engine.close()
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0].values()) == {"pass"}
    assert len(outcomes[0]) == sum(1 for _ in loaded.cases)


def test_serving_set_excludes_tests() -> None:
    sources = load_directory(REGO)
    assert sources.modules and all(not m.endswith("_test.rego") for m in sources.modules)
