"""Small pieces: engine registry and fallback, Decision helpers, masking, remote failures
(fail closed within the budget), error-location parsing."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fastapi import FastAPI
from policy_helpers import make_app, make_service, serve

from policy.decision_log import decision_record, parse_mask
from policy.engine import Decision, PolicyEngine, create_engine, normalize_path
from policy.errors import (
    EngineLoadError,
    PolicyInputError,
    PolicyUnavailableError,
    parse_opa_errors,
)
from policy.opa_remote import OpaRemoteEngine
from policy.regorus import RegorusEngine
from zerogate.clock import ManualClock
from zerogate.config import PolicySettings


def _broken_opa(settings: PolicySettings) -> PolicyEngine:
    raise OSError("libopabridge.so: cannot open shared object file")


def _regorus(settings: PolicySettings) -> PolicyEngine:
    return RegorusEngine()


def test_opa_failing_to_load_falls_back_to_regorus_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = {"opa": _broken_opa, "regorus": _regorus}
    with caplog.at_level(logging.WARNING, logger="policy.engine"):
        engine = create_engine(PolicySettings(), registry=registry)
    assert engine.name == "regorus"
    assert "event=policy.engine_fallback" in caplog.text


def test_other_engines_do_not_fall_back() -> None:
    registry = {"opa-server": _broken_opa, "regorus": _regorus}
    with pytest.raises(EngineLoadError):
        create_engine(PolicySettings(engine="opa-server"), registry=registry)
    with pytest.raises(EngineLoadError, match="unknown policy engine"):
        create_engine(PolicySettings(), name="wasm")


def test_default_engine_is_real_opa() -> None:
    engine = create_engine(PolicySettings())
    assert engine.name == "opa"
    engine.close()


def test_opa_server_needs_urls() -> None:
    with pytest.raises(EngineLoadError, match="opa_urls"):
        create_engine(PolicySettings(engine="opa-server"))


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("a/b/c", ("a", "b", "c")),
        ("a.b.c", ("a", "b", "c")),
        ("/data/a/b", ("a", "b")),
        ("data.a", ("a",)),
        ("", ()),
        ("rules/my-rule", ("rules", "my-rule")),
    ],
)
def test_paths(path: str, want: tuple[str, ...]) -> None:
    assert normalize_path(path) == want


@pytest.mark.parametrize(
    ("result", "allowed", "reasons"),
    [
        (True, True, []),
        (False, False, []),
        ({"allow": True, "reasons": []}, True, []),
        ({"allow": "yes"}, False, []),
        ({"allow": False, "reasons": ["a", "b"]}, False, ["a", "b"]),
        ({"deny": ["x"]}, False, ["x"]),
        ({"violation": [{"msg": "v", "details": {}}]}, False, ["v"]),
        (None, False, []),
    ],
)
def test_decision_helpers(result: object, allowed: bool, reasons: list[str]) -> None:
    d = Decision(result, "rev", "id", 1)
    assert (d.allowed, d.reasons) == (allowed, reasons)


def test_mask_paths_are_validated_and_applied() -> None:
    with pytest.raises(PolicyInputError):
        parse_mask(["secret"])
    mask = parse_mask(["/input/a/token", "/result/debug", "/input/absent/x"])
    clock = ManualClock()
    d = Decision({"allow": True, "debug": {"x": 1}}, "rev", "id-1", 42, path="p/q")
    inp = {"a": {"token": "t", "keep": 1}}
    record = decision_record(d, inp, timestamp=clock.now(), mask=mask)
    assert record["input"] == {"a": {"keep": 1}}
    assert record["result"] == {"allow": True}
    assert record["erased"] == ["/input/a/token", "/result/debug"]
    assert inp == {"a": {"token": "t", "keep": 1}}  # the caller's input is untouched
    assert record["timestamp"] == "2026-01-01T00:00:00Z"
    assert record["bundles"] == {"zerogate": {"revision": "rev"}}


def test_opa_error_text_to_locations() -> None:
    text = (
        "2 errors occurred:\nx.rego:4: rego_parse_error: unexpected } token\n\t}\n\t^\n"
        "y.rego:2: rego_type_error: undefined function nope"
    )
    found = parse_opa_errors(text, {"y.rego": "package y\nallow if nope(1)\n"})
    assert [str(e) for e in found] == [
        "x.rego:4:1: unexpected } token",
        "y.rego:2:10: undefined function nope",
    ]


# --- remote engine: fail closed within the budget ------------------------------------------


def test_remote_down_fails_closed_fast() -> None:
    engine = OpaRemoteEngine(["http://127.0.0.1:9"], timeout_s=0.5)
    engine._revision = "r"  # as if loaded earlier: the server has gone away since
    start = time.monotonic()
    with pytest.raises(PolicyUnavailableError, match="no OPA server answered"):
        engine.evaluate("a/b", {})
    assert time.monotonic() - start < 1.0
    engine.close()


def test_remote_slow_server_is_cut_at_the_budget_and_next_is_not_tried_late() -> None:
    slow = FastAPI()

    @slow.post("/v1/data/{path:path}")
    async def sleepy(path: str) -> dict[str, object]:
        await asyncio.sleep(2)
        return {"result": True}

    with serve(slow) as slow_url:
        engine = OpaRemoteEngine([slow_url], timeout_s=0.3)
        engine._revision = "r"
        start = time.monotonic()
        with pytest.raises(PolicyUnavailableError):
            engine.evaluate("a/b", {})
        assert time.monotonic() - start < 1.0
        engine.close()


def test_remote_moves_on_to_the_next_server() -> None:
    service = make_service(None)
    with serve(make_app(service)) as url:
        engine = OpaRemoteEngine(["http://127.0.0.1:9", url], timeout_s=2.0)
        engine.load({"a.rego": "package a\nb := 1\n"}, {})
        assert engine.evaluate("a/b").result == 1
        engine.close()
    service.close()


def test_known_difference_not_with_undefined_argument_is_pinned() -> None:
    """regorus answers true for `not f(x, <undefined>)`, OPA undefined (docs/policy.md).
    Shipped policies avoid the construct; if regorus changes, this test says so."""
    from policy.opa_embedded import OpaEmbeddedEngine

    module = {
        "m.rego": "package m\n\nf(a, b) if a == b\n\nallow if not f(input.a, input.missing)\n"
    }
    answers = {}
    for engine in (OpaEmbeddedEngine(), RegorusEngine()):
        engine.load(module, {})
        d = engine.evaluate("m/allow", {"a": 1})
        answers[engine.name] = d.result if d.defined else "undefined"
        engine.close()
    assert answers == {"opa": "undefined", "regorus": True}
