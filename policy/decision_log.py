"""Decision-log records in OPA's shape, written to the audit log as kind ``policy.decision``.

Shape (OPA docs, "Decision Logs"): ``decision_id``, ``path``, ``input``, ``result`` (absent
when undefined), ``bundles.{name}.revision``, ``timestamp`` (RFC 3339), ``metrics.
timer_rego_query_eval_ns``, ``trace_id`` (when a span is active), ``erased`` (the masked
paths). Masking follows OPA's ``system.log.mask`` paths: ``/input/a/b`` removes ``b`` from
``input.a`` (``/result/...`` likewise); a path that is not present is ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from opentelemetry import trace

from policy.engine import Decision
from policy.errors import PolicyInputError

DECISION_KIND = "policy.decision"
BUNDLE_NAME = "zerogate"


def parse_mask(paths: Iterable[str]) -> list[tuple[str, ...]]:
    """Validate ``/input/...`` or ``/result/...`` paths once, at start."""
    out = []
    for raw in paths:
        parts = tuple(p for p in raw.split("/") if p)
        if len(parts) < 2 or parts[0] not in ("input", "result"):
            raise PolicyInputError(
                f"decision log mask path {raw!r} must start with /input/ or /result/"
            )
        out.append(parts)
    return out


def _erase(doc: dict[str, Any], parts: tuple[str, ...]) -> bool:
    node: Any = doc
    for key in parts[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    if isinstance(node, dict) and parts[-1] in node:
        del node[parts[-1]]
        return True
    return False


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def decision_record(
    decision: Decision,
    input: Any,
    *,
    timestamp: datetime,
    mask: list[tuple[str, ...]],
    bundle: str = BUNDLE_NAME,
    engine: str = "",
) -> dict[str, Any]:
    """One OPA-shaped decision-log entry (a JSON object) for the audit log."""
    doc: dict[str, Any] = {"input": input}
    if decision.defined:
        doc["result"] = decision.result
    erased: list[str] = []
    if mask:
        doc = copy.deepcopy(doc)
        for parts in mask:
            if _erase(doc, parts):
                erased.append("/" + "/".join(parts))
    record: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "path": decision.path,
        "bundles": {bundle: {"revision": decision.revision}},
        "timestamp": timestamp.isoformat().replace("+00:00", "Z"),
        "metrics": {"timer_rego_query_eval_ns": decision.eval_ns},
        "labels": {"engine": engine, "cached": str(decision.cached).lower()},
    }
    if input is not None and "input" in doc:
        record["input"] = doc["input"]
    if "result" in doc:
        record["result"] = doc["result"]
    if erased:
        record["erased"] = erased
    trace_id = current_trace_id()
    if trace_id is not None:
        record["trace_id"] = trace_id
    if decision.labels:
        record["labels"].update(dict(decision.labels))
    return record


def result_reasons(result: Mapping[str, Any] | Any) -> list[str]:
    """Reasons of a raw result (same rules as ``Decision.reasons``)."""
    probe = Decision(result, "", "", 0)
    return probe.reasons
