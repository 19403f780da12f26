"""``zerogate admission verify``: run Gatekeeper ``gator verify`` suites.

Suite format (Gatekeeper docs, "gator CLI", ``kind: Suite``,
``apiVersion: test.gatekeeper.sh/v1alpha1``)::

    tests:
    - name: required-labels
      template: template.yaml          # a ConstraintTemplate file
      constraint: samples/constraint.yaml
      cases:
      - name: allowed
        object: samples/allowed.yaml   # a Kubernetes object, or an AdmissionReview
        inventory: [samples/ns.yaml]   # optional: objects for data.inventory
        assertions:
        - violations: no               # yes | no | N
          message: "regex"             # optional: count only violations whose msg matches

Paths are relative to the suite file. As in gator, an object is reviewed as a CREATE of it
(``input.review.object``), the constraint's ``match`` applies, and ``skip: true`` skips a
test or case. Our extension: ``template`` may name a directory of native Rego
(``package zerogate.admission``; its ``data.json`` lands under ``data.<dirname>``); its
``deny`` messages are the violations and no constraint is needed.

Exit codes follow ``zerogate policy test``: 0 all passed, 2 a case failed, 1 a suite could
not be run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from admission.gatekeeper import (
    GatekeeperSet,
    default_engine,
    inventory_from,
    parse_constraint,
    parse_template,
)
from policy.engine import PolicyEngine
from policy.errors import PolicyError
from policy.sources import load_directory

__all__ = ["CaseResult", "SuiteError", "exit_code", "report", "review_for", "run_suites"]


class SuiteError(Exception):
    """A suite cannot be run (unreadable file, bad template, bad assertion)."""


@dataclass(slots=True)
class CaseResult:
    suite: str
    test: str
    case: str
    status: str  # ok | FAIL | skip | error
    seconds: float
    reasons: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.test}/{self.case}"


def review_for(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``input.review`` gator builds for a plain object (a CREATE of it), or the
    ``request`` of an AdmissionReview."""
    if obj.get("kind") == "AdmissionReview" and isinstance(obj.get("request"), Mapping):
        return dict(obj["request"])
    api = str(obj.get("apiVersion", ""))
    group, _, version = api.rpartition("/")
    meta = obj.get("metadata") or {}
    review: dict[str, Any] = {
        "kind": {"group": group, "version": version, "kind": str(obj.get("kind", ""))},
        "name": str(meta.get("name", "")),
        "operation": "CREATE",
        "object": dict(obj),
        "userInfo": {"username": "gator"},
    }
    if meta.get("namespace"):
        review["namespace"] = str(meta["namespace"])
    return review


def _load_yaml(path: Path) -> list[Any]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise SuiteError(f"{path}: {exc}") from None


def _one(path: Path) -> Mapping[str, Any]:
    docs = _load_yaml(path)
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise SuiteError(f"{path}: expected exactly one object, found {len(docs)}")
    return docs[0]


Judge = Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]


def _gatekeeper_judge(base: Path, test: Mapping[str, Any], engine: PolicyEngine) -> Judge:
    template = parse_template(_one(base / str(test["template"])), source=str(test["template"]))
    if not test.get("constraint"):
        raise SuiteError(f"test {test.get('name')!r}: a Gatekeeper test needs a constraint")
    constraint = parse_constraint(
        _one(base / str(test["constraint"])), source=str(test["constraint"])
    )
    gk = GatekeeperSet(engine)
    errors = gk.replace([template], [constraint], {})
    if errors:
        raise SuiteError(
            f"template {template.name} does not compile: "
            + "; ".join(str(e) for e in errors[template.name])
        )
    if constraint.kind != template.kind:
        raise SuiteError(f"constraint kind {constraint.kind} is not the template's {template.kind}")

    def judge(review: Mapping[str, Any], inventory: Mapping[str, Any]) -> list[str]:
        if inventory != gk.inventory:
            gk.replace([template], [constraint], inventory)
        violations, _ = gk.review(review)
        return [v.msg for v in violations]

    return judge


def _native_judge(directory: Path, engine: PolicyEngine) -> Judge:
    sources = load_directory(directory)
    engine.load(dict(sources.modules), {directory.name: dict(sources.data)})

    def judge(review: Mapping[str, Any], inventory: Mapping[str, Any]) -> list[str]:
        doc = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": review}
        result = engine.evaluate("zerogate/admission", doc).result
        deny = result.get("deny") if isinstance(result, Mapping) else None
        return [m for m in deny or [] if isinstance(m, str)]

    return judge


def _check(assertion: Mapping[str, Any], messages: list[str]) -> str | None:
    want = assertion.get("violations", "yes")
    pattern = assertion.get("message")
    found = messages
    if pattern is not None:
        try:
            rx = re.compile(str(pattern))
        except re.error as exc:
            raise SuiteError(f"assertion message {pattern!r} is not a regex: {exc}") from None
        found = [m for m in messages if rx.search(m)]
    about = f" matching {pattern!r}" if pattern is not None else ""
    # YAML 1.1 reads bare yes/no as booleans
    if want is True or want == "yes":
        return None if found else f"got no violations{about}, want at least one"
    if want is False or want == "no":
        return None if not found else f"got {len(found)} violations{about}, want none: {found}"
    if isinstance(want, int) or (isinstance(want, str) and want.isdigit()):
        n = int(want)
        return None if len(found) == n else f"got {len(found)} violations{about}, want {n}: {found}"
    raise SuiteError(f"assertion violations must be yes, no or a count, got {want!r}")


def run_suites(
    paths: Sequence[Path],
    *,
    run: str | None = None,
    engine_factory: Callable[[], PolicyEngine] = default_engine,
) -> list[CaseResult]:
    """Run every suite; ``run`` filters ``test/case`` names by regex. SuiteError on a suite
    that cannot run at all."""
    pattern = re.compile(run) if run else None
    results: list[CaseResult] = []
    for suite_path in paths:
        suite = _one(suite_path)
        if suite.get("kind") != "Suite":
            raise SuiteError(f"{suite_path}: kind must be Suite, got {suite.get('kind')!r}")
        base = suite_path.parent
        for test in suite.get("tests") or []:
            tname = str(test.get("name", ""))
            cases = test.get("cases") or []
            wanted = [
                c
                for c in cases
                if pattern is None or pattern.search(f"{tname}/{c.get('name', '')}")
            ]
            if not wanted:
                continue
            if test.get("skip"):
                results += [
                    CaseResult(str(suite_path), tname, str(c.get("name")), "skip", 0.0)
                    for c in wanted
                ]
                continue
            engine = engine_factory()
            try:
                template_path = base / str(test.get("template", ""))
                try:
                    judge = (
                        _native_judge(template_path, engine)
                        if template_path.is_dir()
                        else _gatekeeper_judge(base, test, engine)
                    )
                except PolicyError as exc:
                    raise SuiteError(f"{suite_path}: test {tname!r}: {exc}") from None
                for case in wanted:
                    results.append(_run_case(str(suite_path), tname, base, case, judge))
            finally:
                engine.close()
    return results


def _run_case(
    suite: str, test: str, base: Path, case: Mapping[str, Any], judge: Judge
) -> CaseResult:
    cname = str(case.get("name", ""))
    if case.get("skip"):
        return CaseResult(suite, test, cname, "skip", 0.0)
    start = time.perf_counter()
    try:
        obj = _one(base / str(case["object"]))
        inv_objects = [o for p in case.get("inventory") or [] for o in _load_yaml(base / str(p))]
        messages = judge(review_for(obj), inventory_from(inv_objects) if inv_objects else {})
        reasons = [r for a in case.get("assertions") or [] if (r := _check(a, messages))]
    except (SuiteError, PolicyError, KeyError) as exc:
        return CaseResult(suite, test, cname, "error", time.perf_counter() - start, [str(exc)])
    status = "FAIL" if reasons else "ok"
    return CaseResult(suite, test, cname, status, time.perf_counter() - start, reasons)


def report(results: list[CaseResult], out: TextIO, *, verbose: bool = False) -> None:
    """gator-style lines: one per case, then a per-suite ``ok``/``FAIL`` summary."""
    by_suite: dict[str, list[CaseResult]] = {}
    for r in results:
        by_suite.setdefault(r.suite, []).append(r)
        if verbose or r.status != "ok":
            label = {"ok": "PASS", "FAIL": "FAIL", "skip": "SKIP", "error": "ERROR"}[r.status]
            out.write(f"    --- {label}: {r.name} ({r.seconds:.3f}s)\n")
            for reason in r.reasons:
                out.write(f"        {reason}\n")
    for suite, rs in by_suite.items():
        bad = any(r.status in ("FAIL", "error") for r in rs)
        total = sum(r.seconds for r in rs)
        out.write(f"{'FAIL' if bad else 'ok'}\t{suite}\t{total:.3f}s\n")
    passed = sum(r.status == "ok" for r in results)
    out.write(f"PASS: {passed}/{len(results)}\n")


def exit_code(results: list[CaseResult]) -> int:
    return 2 if any(r.status in ("FAIL", "error") for r in results) else 0
