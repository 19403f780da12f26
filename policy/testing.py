"""The Rego test runner behind ``zerogate policy test`` (a library, like OPA's
``v1/tester/runner.go``), with swappable reporters (``pretty``, ``json``).

Every rule named ``test_*`` in a ``*_test.rego`` module is evaluated with the serving modules
and data of the given paths loaded; it passes when its value is ``true``, fails when it is
false or undefined, errors when evaluation raises. ``todo_test_*`` rules are reported as
skipped. A module that does not parse or compile stops the run (``RunError`` with
``file:line:col``), as ``opa test`` does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from policy.engine import PolicyEngine
from policy.errors import PolicyCompileError, PolicyError, PolicyEvalError
from policy.sources import load_directory, merge_at

Outcome = Literal["pass", "fail", "error", "skip"]

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_TEST_RULE = re.compile(r"^((?:todo_)?test_[A-Za-z0-9_]*)\b", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class TestCase:
    __test__ = False  # not a pytest class

    package: str
    name: str
    file: str
    row: int

    @property
    def full_name(self) -> str:
        return f"data.{self.package}.{self.name}"


@dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False

    case: TestCase
    outcome: Outcome
    duration_ns: int
    message: str = ""


@dataclass(slots=True)
class LoadedTests:
    modules: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    cases: list[TestCase] = field(default_factory=list)


def load_paths(paths: Sequence[Path]) -> LoadedTests:
    """Read every path (directory or file); module ids are the file paths as given."""
    loaded = LoadedTests()
    errors = []
    for path in paths:
        try:
            sources = load_directory(path)
        except PolicyCompileError as exc:
            errors.extend(exc.errors)
            continue
        base = path if path.is_dir() else path.parent
        for rel, text in {**sources.modules, **sources.tests}.items():
            module_id = (base / rel).as_posix()
            loaded.modules[module_id] = text
            if rel.endswith("_test.rego"):
                loaded.cases.extend(discover(module_id, text))
        try:
            merge_at(loaded.data, (), dict(sources.data), origin=path.as_posix())
        except PolicyCompileError as exc:
            errors.extend(exc.errors)
    if errors:
        raise PolicyCompileError(errors)
    return loaded


def discover(module_id: str, text: str) -> list[TestCase]:
    """``test_*`` rule heads at the start of a line, in order, once per name."""
    match = _PACKAGE.search(text)
    if match is None:
        return []
    package = match.group(1)
    seen: set[str] = set()
    cases = []
    for rule in _TEST_RULE.finditer(text):
        name = rule.group(1)
        if name in seen:
            continue
        seen.add(name)
        row = text.count("\n", 0, rule.start()) + 1
        cases.append(TestCase(package, name, module_id, row))
    return cases


def run_tests(
    engine: PolicyEngine, loaded: LoadedTests, *, run: str | None = None
) -> list[TestResult]:
    """Load everything into ``engine`` (raises PolicyCompileError) and run the tests."""
    engine.load(loaded.modules, loaded.data)
    pattern = re.compile(run) if run else None
    results = []
    for case in loaded.cases:
        if pattern is not None and not pattern.search(case.full_name):
            continue
        if case.name.startswith("todo_"):
            results.append(TestResult(case, "skip", 0))
            continue
        start = time.perf_counter_ns()
        try:
            decision = engine.evaluate(f"{case.package}.{case.name}")
        except PolicyEvalError as exc:
            results.append(TestResult(case, "error", time.perf_counter_ns() - start, str(exc)))
            continue
        elapsed = time.perf_counter_ns() - start
        if decision.defined and decision.result is True:
            results.append(TestResult(case, "pass", elapsed))
        else:
            why = "undefined" if not decision.defined else f"got {json.dumps(decision.result)}"
            results.append(TestResult(case, "fail", elapsed, why))
    return results


# --- reporters ------------------------------------------------------------------------------

_RULE = "-" * 80


def _duration(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.3f}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e3:.0f}µs"


def _line(result: TestResult) -> str:
    label = result.outcome.upper() if result.outcome != "skip" else "SKIPPED"
    return f"{result.case.full_name}: {label} ({_duration(result.duration_ns)})"


def pretty_report(results: list[TestResult], out: TextIO, *, verbose: bool = False) -> None:
    """OPA's pretty reporter: failures first, then (verbose: every test) by file, summary."""
    bad = [r for r in results if r.outcome in ("fail", "error")]
    if bad:
        out.write("FAILURES\n" + _RULE + "\n")
        for r in bad:
            out.write(f"{_line(r)}\n  {r.case.file}:{r.case.row}: {r.message}\n\n")
        out.write("SUMMARY\n" + _RULE + "\n")
    shown = results if verbose else bad
    by_file: dict[str, list[TestResult]] = {}
    for r in shown:
        by_file.setdefault(r.case.file, []).append(r)
    for file, items in by_file.items():
        out.write(f"{file}:\n")
        for r in items:
            out.write(_line(r) + "\n")
        out.write("\n")
    counts = {k: sum(1 for r in results if r.outcome == k) for k in ("pass", "fail", "error")}
    skipped = sum(1 for r in results if r.outcome == "skip")
    total = len(results)
    out.write(_RULE + "\n")
    for key in ("pass", "fail", "error"):
        if counts[key]:
            out.write(f"{key.upper()}: {counts[key]}/{total}\n")
    if skipped:
        out.write(f"SKIPPED: {skipped}/{total}\n")


def json_report(results: list[TestResult], out: TextIO, *, verbose: bool = False) -> None:
    """OPA's JSON reporter shape: one object per test."""
    items = []
    for r in results:
        item: dict[str, Any] = {
            "location": {"file": r.case.file, "row": r.case.row, "col": 1},
            "package": f"data.{r.case.package}",
            "name": r.case.name,
            "duration": r.duration_ns,
        }
        if r.outcome == "fail":
            item["fail"] = True
            item["message"] = r.message
        elif r.outcome == "error":
            item["error"] = {"code": "eval_error", "message": r.message}
        elif r.outcome == "skip":
            item["skip"] = True
        items.append(item)
    out.write(json.dumps(items, indent=2) + "\n")


REPORTERS: dict[str, Callable[..., None]] = {"pretty": pretty_report, "json": json_report}


def exit_code(results: list[TestResult]) -> int:
    """0: all passed; 2: a test failed or errored (as ``opa test``)."""
    return 2 if any(r.outcome in ("fail", "error") for r in results) else 0


__all__ = [
    "REPORTERS",
    "LoadedTests",
    "PolicyError",
    "TestCase",
    "TestResult",
    "discover",
    "exit_code",
    "load_paths",
    "run_tests",
]
