"""The PolicyEngine contract, run against every engine (opa, regorus, opa-server).

Table cases live as YAML in tests/policy/cases/ (OPA v1/test/cases style): a new case needs no
code. The functions below cover what a table cannot: revisions, atomic refusal of a bad
load, threads, errors on misuse.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from policy.engine import Decision, PolicyEngine, compute_revision
from policy.errors import (
    PolicyCompileError,
    PolicyEvalError,
    PolicyInputError,
    PolicyUnavailableError,
)

CASES_DIR = Path(__file__).parent / "cases"


def _load_cases() -> list[Any]:
    params = []
    for file in sorted(CASES_DIR.glob("*.yaml")):
        for case in yaml.safe_load(file.read_text())["cases"]:
            params.append(pytest.param(case, id=f"{file.stem}: {case['note']}"))
    return params


def _modules(case: dict[str, Any]) -> dict[str, str]:
    return {f"test-{i}.rego": text for i, text in enumerate(case.get("modules") or [])}


@pytest.mark.parametrize("case", _load_cases())
def test_case(any_engine: PolicyEngine, case: dict[str, Any]) -> None:
    modules = _modules(case)
    want_error = case.get("want_error")
    if want_error and want_error["kind"] == "compile":
        with pytest.raises(PolicyCompileError) as info:
            any_engine.load(modules, case.get("data") or {})
        first = info.value.errors[0]
        assert (first.file, first.row) == (want_error["file"], want_error["row"]), str(info.value)
        assert first.col >= 1
        assert f"{first.file}:{first.row}:{first.col}: " in str(info.value)
        return
    revision = any_engine.load(modules, case.get("data") or {})
    if want_error:
        with pytest.raises(PolicyEvalError):
            any_engine.evaluate(case["path"], case.get("input"))
        return
    decision = any_engine.evaluate(case["path"], case.get("input"))
    assert decision.revision == revision
    if case.get("want_defined") is False:
        assert not decision.defined
        assert decision.result is None
    else:
        assert decision.defined
        assert decision.result == case["want_result"]


POLICY_V1 = "package t\nversion := 1\nallow if input.ok == true\n"
POLICY_V2 = "package t\nversion := 2\nallow if input.ok == true\n"


def test_revision_is_the_content_hash(any_engine: PolicyEngine) -> None:
    rev = any_engine.load({"a.rego": POLICY_V1}, {"x": 1})
    assert rev == compute_revision({"a.rego": POLICY_V1}, {"x": 1})
    assert any_engine.revision == rev
    assert any_engine.load({"a.rego": POLICY_V2}, {"x": 1}) != rev
    assert any_engine.load({"a.rego": POLICY_V1}, {"x": 2}) != rev


def test_bad_load_keeps_previous_revision(any_engine: PolicyEngine) -> None:
    rev = any_engine.load({"a.rego": POLICY_V1}, {})
    with pytest.raises(PolicyCompileError):
        any_engine.load({"a.rego": POLICY_V2, "b.rego": "package b\nx := [\n"}, {})
    assert any_engine.revision == rev
    decision = any_engine.evaluate("t/version")
    assert (decision.result, decision.revision) == (1, rev)


def test_evaluate_before_load_is_unavailable(any_engine: PolicyEngine) -> None:
    with pytest.raises(PolicyUnavailableError):
        any_engine.evaluate("t/allow", {})


def test_input_must_be_json(any_engine: PolicyEngine) -> None:
    any_engine.load({"a.rego": POLICY_V1}, {})
    with pytest.raises(PolicyInputError):
        any_engine.evaluate("t/allow", {"ok": object()})


@pytest.mark.parametrize("path", ["t..allow", 't/"x', "t/\x00"])
def test_malformed_paths_are_refused(any_engine: PolicyEngine, path: str) -> None:
    any_engine.load({"a.rego": POLICY_V1}, {})
    with pytest.raises(PolicyInputError):
        any_engine.evaluate(path, {})


def test_decisions_carry_unique_ids_and_timing(any_engine: PolicyEngine) -> None:
    any_engine.load({"a.rego": POLICY_V1}, {})
    decisions = [any_engine.evaluate("t/allow", {"ok": True}) for _ in range(5)]
    assert all(isinstance(d, Decision) and d.result is True for d in decisions)
    assert len({d.decision_id for d in decisions}) == 5
    assert all(d.eval_ns > 0 for d in decisions)


def test_evaluations_from_many_threads(any_engine: PolicyEngine) -> None:
    any_engine.load({"a.rego": "package t\ndouble := 2 * input.n\n"}, {})
    failures: list[str] = []

    def worker(base: int) -> None:
        try:
            for n in range(base, base + 25):
                got = any_engine.evaluate("t/double", {"n": n}).result
                if got != 2 * n:
                    failures.append(f"{n}: {got}")
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_closed_engine_is_unavailable(any_engine: PolicyEngine) -> None:
    any_engine.load({"a.rego": POLICY_V1}, {})
    any_engine.close()
    with pytest.raises(PolicyUnavailableError):
        any_engine.evaluate("t/allow", {})


NEEDS_INPUT = (
    "package t\nversion := 1\n"
    "allow if input.ok == true\n"
    'deny contains msg if { input.n > 1; msg := sprintf("%d", [input.n / 0]) }\n'
)


def test_prepare_never_raises_and_changes_no_decision(any_engine: PolicyEngine) -> None:
    """Hot paths may be undefined, need input, or fail without it (a division by zero):
    preparing them never raises, before or after a load, and decisions are unchanged."""
    any_engine.prepare(["t/allow", "t/deny", "t/missing", "nowhere/at/all"])
    any_engine.load({"t.rego": NEEDS_INPUT}, {})
    any_engine.prepare(["t/version"])
    assert any_engine.evaluate("t/allow", {"ok": True}).result is True
    assert any_engine.evaluate("t/allow", {"ok": False}).defined is False
    assert any_engine.evaluate("t/version").result == 1
    assert any_engine.evaluate("t/missing").defined is False
    with pytest.raises(PolicyCompileError):  # a bad revision is still refused as a whole
        any_engine.load({"t.rego": "package t\nallow if {"}, {})
    assert any_engine.evaluate("t/version").result == 1
