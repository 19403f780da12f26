"""PolicyStore and PolicyService: sources, revisions, refusal of bad content, the watcher,
the decision cache and the decision log (real audit log on SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from policy.cache import DecisionCache
from policy.engine import PolicyEngine, compute_revision
from policy.errors import PolicyCompileError, PolicyInputError, PolicyNotFoundError
from policy.opa_embedded import OpaEmbeddedEngine
from policy.service import PolicyService, open_policy
from policy.sources import load_directory
from policy.store import PolicyStore
from zerogate.audit import AuditLog, tail
from zerogate.config import load_settings
from zerogate.store import Database
from zerogate.telemetry import Telemetry

AUTHZ = """package app.authz

default allow := false

allow if input.user in data.app.admins

decision := {"allow": allow, "reasons": reasons, "cache": cache}

default cache := true

cache := false if input.cache == false

reasons contains "not an admin" if not allow
"""
AUTHZ_TEST = """package app.authz_test

import data.app.authz

test_admin_allowed if authz.allow with input as {"user": "alice"}
"""


def _tree(root: Path) -> Path:
    (root / "app").mkdir(parents=True)
    (root / "app" / "authz.rego").write_text(AUTHZ)
    (root / "app" / "authz_test.rego").write_text(AUTHZ_TEST)
    (root / "app" / "data.json").write_text(json.dumps({"admins": ["alice"]}))
    (root / "limits").mkdir()
    (root / "limits" / "data.yaml").write_text("rpm: 10\n")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return _tree(tmp_path / "rego")


@pytest.fixture
def store(tree: Path, embedded_engine: PolicyEngine) -> PolicyStore:
    s = PolicyStore(embedded_engine, tree, poll_interval_s=0.05)
    s.reload(reason="start")
    return s


def test_sources_place_data_at_its_directory_and_keep_tests_apart(tree: Path) -> None:
    sources = load_directory(tree)
    assert set(sources.modules) == {"app/authz.rego"}
    assert set(sources.tests) == {"app/authz_test.rego"}
    assert sources.data == {"app": {"admins": ["alice"]}, "limits": {"rpm": 10}}


def test_store_serves_files_with_a_content_hash_revision(store: PolicyStore) -> None:
    snap = store.snapshot
    assert snap.revision == compute_revision(snap.modules, snap.data)
    assert "app/authz_test.rego" not in snap.modules
    decision = store.engine.evaluate("app/authz/allow", {"user": "alice"})
    assert (decision.result, decision.revision) == (True, snap.revision)
    assert store.engine.evaluate("limits/rpm").result == 10


def test_unchanged_content_is_not_a_new_revision(store: PolicyStore) -> None:
    before = (store.revision, store.reloads)
    assert store.reload() == before[0]
    assert store.reloads == before[1]


def test_bad_module_is_refused_with_location_and_old_revision_stays(
    store: PolicyStore, tree: Path
) -> None:
    good = store.revision
    (tree / "app" / "broken.rego").write_text("package app.broken\n\nallow if {\n  input.x ==\n}\n")
    with pytest.raises(PolicyCompileError) as info:
        store.reload()
    assert "app/broken.rego:5:" in str(info.value)
    assert store.revision == good
    assert store.reload_failures == 1
    assert store.engine.evaluate("app/authz/allow", {"user": "alice"}).revision == good


def test_bad_data_file_is_refused_with_location(store: PolicyStore, tree: Path) -> None:
    good = store.revision
    (tree / "app" / "data.json").write_text('{"admins": [\n  "alice",\n}\n')
    with pytest.raises(PolicyCompileError) as info:
        store.reload()
    assert "app/data.json:3:1: " in str(info.value)
    assert store.revision == good


def test_watcher_reloads_on_file_change_and_ignores_bad_files(
    store: PolicyStore, tree: Path
) -> None:
    store.start_watching()
    try:
        first = store.revision
        (tree / "app" / "data.json").write_text(json.dumps({"admins": ["alice", "bob"]}))
        _wait(lambda: store.revision != first)
        second = store.revision
        assert store.engine.evaluate("app/authz/allow", {"user": "bob"}).result is True
        (tree / "app" / "authz.rego").write_text("package app.authz\nallow if {\n")
        _wait(lambda: store.reload_failures >= 1)
        assert store.revision == second
    finally:
        store.stop_watching()


def _wait(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_api_modules_layer_over_files(store: PolicyStore) -> None:
    file_rev = store.revision
    rev = store.put_module("extra", "package extra\nx := 1\n")
    assert rev != file_rev
    assert store.engine.evaluate("extra/x").result == 1
    with pytest.raises(PolicyCompileError):
        store.put_module("extra", "package extra\nx := [\n")
    assert store.module("extra") == "package extra\nx := 1\n"
    with pytest.raises(PolicyInputError):
        store.delete_module("app/authz.rego")
    assert store.delete_module("extra") == file_rev
    with pytest.raises(PolicyNotFoundError):
        store.delete_module("extra")


def test_api_data_writes(store: PolicyStore) -> None:
    store.put_data("app/admins", ["carol"])
    assert store.engine.evaluate("app/authz/allow", {"user": "carol"}).result is True
    store.delete_data("app/admins")
    assert store.engine.evaluate("app/authz/allow", {"user": "alice"}).result is True


# --- service: cache, decision log ------------------------------------------------------------


@pytest.fixture
def service(store: PolicyStore) -> PolicyService:
    return PolicyService(store, cache=DecisionCache(100), audit=None)


def test_decision_cache_hits_misses_and_revision_change(service: PolicyService, tree: Path) -> None:
    first = service.decide("app/authz/decision", {"user": "alice"}, cache_key=("alice",))
    again = service.decide("app/authz/decision", {"user": "alice"}, cache_key=("alice",))
    assert (first.cached, again.cached) == (False, True)
    assert again.result == first.result and again.revision == first.revision
    assert again.decision_id != first.decision_id
    assert (service.cache.hits, service.cache.misses) == (1, 1)
    (tree / "app" / "data.json").write_text(json.dumps({"admins": []}))
    service.reload()
    after = service.decide("app/authz/decision", {"user": "alice"}, cache_key=("alice",))
    assert not after.cached and after.result["allow"] is False
    assert after.reasons == ["not an admin"]


def test_policy_can_opt_out_of_the_cache(service: PolicyService) -> None:
    inp = {"user": "alice", "cache": False}
    service.decide("app/authz/decision", inp, cache_key="k")
    second = service.decide("app/authz/decision", inp, cache_key="k")
    assert not second.cached
    assert len(service.cache) == 0


def test_decisions_without_key_are_not_cached(service: PolicyService) -> None:
    service.decide("app/authz/allow", {"user": "alice"})
    assert not service.decide("app/authz/allow", {"user": "alice"}).cached


def test_decision_log_and_reload_failure_are_audited(
    database: Database, audit_log: AuditLog, tree: Path
) -> None:
    settings = load_settings(
        None,
        policy={
            "rego_dir": str(tree),
            "watch": False,
            "decision_log_mask": ["/input/secret", "/input/nested/token"],
        },
    )
    telemetry = Telemetry.in_memory()
    service = open_policy(settings, audit_log, telemetry=telemetry, engine=OpaEmbeddedEngine())
    inp = {"user": "bob", "secret": "s3cret", "nested": {"token": "t", "keep": 1}}
    with telemetry.tracer("test").start_as_current_span("request") as span:
        denied = service.decide("app/authz/decision", inp)
        trace_id = format(span.get_span_context().trace_id, "032x")
    service.decide("app/authz/nothing", {"user": "x"})
    (tree / "app" / "authz.rego").write_text("package app.authz\nallow if {\n")
    with pytest.raises(PolicyCompileError):
        service.reload()
    audit_log.flush()

    records = tail(database, 10, kind="policy.decision")
    by_id = {r.payload["decision_id"]: r.payload for r in records}
    logged = by_id[denied.decision_id]
    assert logged["path"] == "app/authz/decision"
    assert logged["result"] == {"allow": False, "reasons": ["not an admin"], "cache": True}
    assert logged["input"] == {"user": "bob", "nested": {"keep": 1}}
    assert sorted(logged["erased"]) == ["/input/nested/token", "/input/secret"]
    assert logged["bundles"] == {"zerogate": {"revision": denied.revision}}
    assert logged["metrics"]["timer_rego_query_eval_ns"] == denied.eval_ns
    assert logged["trace_id"] == trace_id
    assert logged["timestamp"].endswith("Z")
    undefined = [p for p in by_id.values() if p["path"] == "app/authz/nothing"]
    assert len(undefined) == 1 and "result" not in undefined[0]

    failed = tail(database, 5, kind="policy.reload_failed")
    assert len(failed) == 1
    error = failed[0].payload["errors"][0]
    assert error["location"]["file"] == "app/authz.rego"
    assert failed[0].payload["active_revision"] == denied.revision
    assert b"zerogate_policy_reload_failures" in telemetry.prometheus_text()
    service.close()


def test_bad_mask_path_is_refused(tree: Path) -> None:
    settings = load_settings(None, policy={"rego_dir": str(tree), "decision_log_mask": ["/secret"]})
    with pytest.raises(PolicyInputError):
        open_policy(settings, None, engine=OpaEmbeddedEngine())


def test_open_policy_serves_the_shipped_inference_policy() -> None:
    """What the inference gate will do, with zerogate's defaults (rego/ shipped)."""
    settings = load_settings(None, policy={"watch": False})
    service = open_policy(settings, None)
    inp = {
        "subject": {
            "spiffe_id": "spiffe://zerogate.internal/ns/ml/sa/trainer",
            "trust_domain": "zerogate.internal",
            "path": "/ns/ml/sa/trainer",
        },
        "request": {"model": "all-MiniLM-L6-v2", "operation": "embeddings", "stream": False},
        "runtime": {"quarantined": False, "reasons": []},
        "usage": {},
        "time": "2026-06-01T12:00:00Z",
    }
    allowed = service.decide("zerogate/inference/decision", inp, cache_key="ml")
    assert allowed.allowed and allowed.result["limits"]["rpm"] == 600
    inp["runtime"] = {"quarantined": True, "reasons": ["Terminal shell in container"]}
    denied = service.decide("zerogate.inference.decision", inp)
    assert not denied.allowed
    assert denied.reasons == ["identity is quarantined: Terminal shell in container"]
    assert service.engine.name == "opa" and service.ready()
    service.close()


def test_reload_from_signal_never_raises(store: PolicyStore, tree: Path) -> None:
    service = PolicyService(store, cache=DecisionCache(10), audit=None)
    good = service.revision
    (tree / "app" / "authz.rego").write_text("package app.authz\nallow if {\n")
    assert service.reload_from_signal() is None
    assert service.revision == good and store.reload_failures == 1
    (tree / "app" / "authz.rego").write_text(AUTHZ + "\nextra := 1\n")
    assert service.reload_from_signal() == service.revision != good
