"""The embedded OPA engine's own behaviour beyond the engine contract: hot paths prepared."""

from __future__ import annotations

import logging
import re

import pytest

from policy.opa_embedded import OpaEmbeddedEngine


def _prepared(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    out = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("event=policy.prepared "):
            out.append(dict(re.findall(r"(\w+)=(\S+)", message)))
    caplog.clear()
    return out


def test_hot_paths_are_prepared_on_each_new_instance_before_it_goes_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OPA prepares a query on its first evaluation per instance (~35-50 ms here, against
    well under 1 ms after: bench/runtime.py's first event): ``prepare`` evaluates the hot
    documents on every instance of a new revision while the previous revision is still the
    live one, as the engine's log line says."""
    caplog.set_level(logging.INFO, logger="policy.opa_embedded")
    engine = OpaEmbeddedEngine(pool_size=2)
    try:
        engine.prepare(["t/allow", "t/deny/0"])  # no revision yet: only remembered
        assert _prepared(caplog) == []
        first = engine.load({"t.rego": "package t\nallow if input.ok\n"}, {})
        [line] = _prepared(caplog)
        assert line["revision"] == first and line["live"] == "None"  # before the swap
        assert line["documents"] == "t.allow,t.deny" and line["instances"] == "2"
        second = engine.load({"t.rego": "package t\nallow if input.ok == 1\n"}, {})
        [line] = _prepared(caplog)
        assert (line["revision"], line["live"]) == (second, first)
        engine.prepare(["t/allow"])  # a later prepare: the live instances, at once
        [line] = _prepared(caplog)
        assert (line["revision"], line["live"], line["documents"]) == (second, second, "t.allow")
        assert engine.evaluate("t/allow", {"ok": 1}).result is True
    finally:
        engine.close()
