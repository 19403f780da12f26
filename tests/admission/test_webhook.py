"""The webhook over real HTTPS with real AdmissionReview payloads (see payloads/README.md):
allowed, denied with every message, warned, mutated (JSONPatch applied with ``jsonpatch``),
dry-run; malformed reviews; deadlines and engine errors with both failure modes; the audit
record of every decision; metrics under Gatekeeper's names."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from admission_support import PAYLOADS, REPO, constraint, serve_webhook
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from admission.admit import AUDIT_KIND, Admitter
from admission.gatekeeper import ConstraintTemplate, GatekeeperSet, NativePolicy, serving_engine
from admission.mutate import ENV_NAME
from admission.webhook import MAX_BODY_BYTES
from policy.opa_embedded import OpaEmbeddedEngine
from policy.sources import load_directory
from zerogate.audit import AuditLog, tail
from zerogate.store import Database


def payload(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return doc


def _deny_constraints() -> list[Any]:
    """The deny-mode constraints both Gatekeeper sets of this module load."""
    return [
        constraint(
            "K8sRequiredLabels",
            "must-have-owner",
            match={"kinds": [{"apiGroups": ["*"], "kinds": ["Pod", "Deployment"]}]},
            parameters={"labels": [{"key": "owner"}]},
        ),
        constraint(
            "K8sPSPHostNamespace",
            "no-host-namespace",
            match={"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]},
        ),
    ]


@pytest.fixture(params=["separate", "merged"])
def gatekeeper(
    request: pytest.FixtureRequest,
    library_templates: list[ConstraintTemplate],
    native_engine: OpaEmbeddedEngine,
) -> Any:
    """Every test runs with the native policy on its own engine and compiled into the
    Gatekeeper engine (one call per review, as ``zerogate serve`` runs on the embedded OPA):
    the answers must be the same."""
    gk = GatekeeperSet(OpaEmbeddedEngine())
    if request.param == "merged":
        sources = load_directory(REPO / "rego")
        revision = native_engine.revision
        assert revision is not None
        gk.set_native(NativePolicy(revision, sources.modules, sources.data), compile=False)
    errors = gk.replace(
        library_templates,
        [
            *_deny_constraints(),
            constraint(
                "K8sRequiredLabels",
                "should-have-team",
                action="warn",
                match={"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]},
                parameters={"labels": [{"key": "team"}]},
            ),
            constraint(
                "K8sDisallowedTags",
                "no-latest-dryrun",
                action="dryrun",
                match={"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]},
                parameters={"tags": ["latest"]},
            ),
        ],
    )
    assert errors == {}
    merged = request.param == "merged"
    assert gk.native_revision == (native_engine.revision if merged else None)
    yield gk
    gk.close()


def admitter(
    native_engine: OpaEmbeddedEngine,
    gatekeeper: GatekeeperSet | None,
    audit: Any,
    **kw: Any,
) -> Admitter:
    return Admitter(native=native_engine.evaluate, gatekeeper=gatekeeper, audit=audit, **kw)


async def test_allowed_denied_warned_over_https(
    native_engine: OpaEmbeddedEngine,
    gatekeeper: GatekeeperSet,
    audit_log: AuditLog,
    database: Database,
) -> None:
    async with serve_webhook(admitter(native_engine, gatekeeper, audit_log)) as http:
        # Kubernetes docs example (Scale UPDATE): nothing applies, uid echoed
        review = payload("k8s-docs-scale-update.json")
        r = await http.post("/admission/validate", json=review)
        assert r.status_code == 200
        body = r.json()
        assert body["apiVersion"] == "admission.k8s.io/v1"
        assert body["kind"] == "AdmissionReview"
        assert body["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}

        # Gatekeeper docs example (Deployment CREATE) lacks the owner label
        r = await http.post(
            "/admission/validate", json=payload("gatekeeper-docs-deployment-create.json")
        )
        resp = r.json()["response"]
        assert resp["uid"] == "abc123"
        assert resp["allowed"] is False
        assert resp["status"]["code"] == 403
        assert resp["status"]["message"] == ('[must-have-owner] you must provide labels: {"owner"}')

        # a compliant model server: allowed, but the warn-mode constraint warns
        resp = (await http.post("/admission/validate", json=payload("pod-allowed.json"))).json()[
            "response"
        ]
        assert resp["allowed"] is True
        assert resp["warnings"] == ['[should-have-team] you must provide labels: {"team"}']

        # every violated rule, native and Gatekeeper, each with its constraint's name
        resp = (await http.post("/admission/validate", json=payload("pod-denied.json"))).json()[
            "response"
        ]
        assert resp["allowed"] is False
        lines = resp["status"]["message"].split("\n")
        native = "[zerogate.admission] "
        assert set(lines) == {
            native
            + "container 'debug' image 'busybox:1.36' must be pinned by digest (@sha256:...)",
            native + "container 'debug' image registry 'docker.io' is not allowed",
            native + "container 'debug' must not be privileged",
            native + "container 'debug' must run as non-root (runAsNonRoot: true, no runAsUser 0)",
            native + "pod must not use the host namespace (hostPID)",
            '[must-have-owner] you must provide labels: {"owner"}',
            "[no-host-namespace] Sharing the host namespace is not allowed: shell",
        }
        assert set(resp["warnings"]) == {
            "[zerogate.admission] container 'debug' sets no resource limits",
            '[should-have-team] you must provide labels: {"team"}',
        }

        # a warn-only pod: no limits -> allowed with the native warning
        resp = (await http.post("/admission/validate", json=payload("pod-warned.json"))).json()[
            "response"
        ]
        assert resp["allowed"] is True
        assert "[zerogate.admission] container 'server' sets no resource limits" in resp["warnings"]

    audit_log.flush()
    records = [r for r in tail(database, 20, kind=AUDIT_KIND)]
    by_uid = {r.payload["uid"]: r.payload for r in records}
    denied = by_uid["b1a0c2e4-0002-4d2b-9e61-000000000002"]
    assert denied["allowed"] is False
    assert denied["kind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert (denied["namespace"], denied["name"], denied["operation"]) == (
        "default",
        "shell",
        "CREATE",
    )
    assert denied["user"] == "john_doe"
    assert {
        "constraint": "K8sPSPHostNamespace/no-host-namespace",
        "action": "deny",
        "msg": "Sharing the host namespace is not allowed: shell",
    } in denied["violations"]
    assert denied["revision"]["native"] == native_engine.revision
    assert denied["revision"]["gatekeeper"] == gatekeeper.revision
    assert by_uid["705ab4f5-6393-11e8-b7cc-42010a800002"]["allowed"] is True


async def test_dryrun_constraint_is_recorded_not_enforced(
    native_engine: OpaEmbeddedEngine,
    gatekeeper: GatekeeperSet,
    audit_log: AuditLog,
    database: Database,
) -> None:
    review = payload("pod-allowed.json")
    review["request"]["object"]["spec"]["containers"][0]["image"] = "ghcr.io/acme/x:latest"
    review["request"]["object"]["metadata"]["labels"]["team"] = "ml"
    review["request"]["object"]["spec"]["containers"][0]["image"] += (
        "@sha256:0f3a5ce6bd4b0b7e4a4d1d0c5b1e4a0e2b3c4d5e6f708192a3b4c5d6e7f80910"
    )
    review["request"]["object"]["spec"]["containers"][0]["image"] = "ghcr.io/acme/x:latest"
    async with serve_webhook(admitter(native_engine, gatekeeper, audit_log)) as http:
        resp = (await http.post("/admission/validate", json=review)).json()["response"]
    # the native digest rule denies; the dryrun constraint only shows in the audit record
    assert all("[no-latest-dryrun]" not in line for line in resp["status"]["message"].split("\n"))
    assert "[no-latest-dryrun]" not in json.dumps(resp.get("warnings", []))
    audit_log.flush()
    record = tail(database, 1, kind=AUDIT_KIND)[0].payload
    assert {
        "constraint": "K8sDisallowedTags/no-latest-dryrun",
        "action": "dryrun",
        "msg": "container <server> uses a disallowed tag <ghcr.io/acme/x:latest>; "
        'disallowed tags are ["latest"]',
    } in record["violations"]


async def test_dry_run_review_is_evaluated_and_audited(
    native_engine: OpaEmbeddedEngine, audit_log: AuditLog, database: Database
) -> None:
    async with serve_webhook(admitter(native_engine, None, audit_log)) as http:
        resp = (
            await http.post("/admission/validate", json=payload("pod-denied-dry-run.json"))
        ).json()["response"]
    assert resp["allowed"] is False
    assert "[zerogate.admission] container 'debug' must not be privileged" in resp["status"][
        "message"
    ].split("\n")
    audit_log.flush()
    record = tail(database, 1, kind=AUDIT_KIND)[0].payload
    assert record["dry_run"] is True and record["allowed"] is False


async def test_mutation_injects_workload_api_idempotently(
    native_engine: OpaEmbeddedEngine, audit_log: AuditLog, database: Database
) -> None:
    review = payload("pod-inject.json")
    pod = review["request"]["object"]
    async with serve_webhook(
        admitter(native_engine, None, audit_log, socket_path="/run/spire/sockets/agent.sock")
    ) as http:
        resp = (await http.post("/admission/mutate", json=review)).json()["response"]
        assert resp["allowed"] is True
        assert resp["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(resp["patch"]))
        mutated = jsonpatch.apply_patch(pod, patch)
        assert mutated["spec"]["volumes"] == [
            {
                "name": "zerogate-workload-api",
                "hostPath": {"path": "/run/spire/sockets", "type": "Directory"},
            }
        ]
        for c in mutated["spec"]["containers"]:
            assert {"name": ENV_NAME, "value": "unix:///spiffe-workload-api/agent.sock"} in c["env"]
            assert {
                "name": "zerogate-workload-api",
                "mountPath": "/spiffe-workload-api",
                "readOnly": True,
            } in c["volumeMounts"]
        # the injected pod passes the shipped policy, and a second pass changes nothing
        again = copy.deepcopy(review)
        again["request"]["object"] = mutated
        again["request"]["uid"] = "second-pass"
        resp2 = (await http.post("/admission/mutate", json=again)).json()["response"]
        assert resp2 == {"uid": "second-pass", "allowed": True}
        # not opted in: no patch
        plain = copy.deepcopy(review)
        del plain["request"]["object"]["metadata"]["annotations"]
        resp3 = (await http.post("/admission/mutate", json=plain)).json()["response"]
        assert "patch" not in resp3 and resp3["allowed"] is True


BAD_REVIEWS: list[tuple[str, bytes, str]] = [
    ("not-json", b"{not json", "body is not JSON"),
    ("nested-too-deep", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("number-out-of-range", b'{"apiVersion": 1e400}', "out of range"),
    ("array", b"[]", "must be a JSON object"),
    (
        "v1beta1",
        json.dumps(
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}
        ).encode(),
        "apiVersion must be 'admission.k8s.io/v1'",
    ),
    (
        "wrong-kind",
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}).encode(),
        "kind must be 'AdmissionReview'",
    ),
    (
        "no-request",
        json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
        "request is missing",
    ),
    (
        "no-uid",
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"kind": {"kind": "Pod"}, "operation": "CREATE", "object": {}},
            }
        ).encode(),
        "request.uid is missing",
    ),
    (
        "create-without-object",
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE"},
            }
        ).encode(),
        "request.object is required for CREATE",
    ),
    (
        "bad-operation",
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {
                    "uid": "u",
                    "kind": {"kind": "Pod"},
                    "operation": "PATCH",
                    "object": {},
                },
            }
        ).encode(),
        "request.operation must be one of",
    ),
]


@pytest.mark.parametrize(("name", "body", "reason"), BAD_REVIEWS, ids=[b[0] for b in BAD_REVIEWS])
async def test_malformed_review_is_400_with_reason(
    name: str, body: bytes, reason: str, native_engine: OpaEmbeddedEngine
) -> None:
    async with serve_webhook(admitter(native_engine, None, None)) as http:
        for path in ("/admission/validate", "/admission/mutate"):
            r = await http.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400
            assert reason in r.json()["message"]
            assert r.json()["code"] == "invalid_admission_review"


SLOW = """package zerogate.admission

decision := {"deny": deny}

deny contains msg if {
	n := count([x | some x in numbers.range(1, 500000); x % 7 == 0])
	n < 0
	msg := "never"
}
"""

CONFLICT = """package zerogate.admission

decision := {"deny": deny}

verdict := input.request.uid if true

verdict := "other" if true

deny contains msg if {
	verdict == "x"
	msg := "never"
}
"""


@pytest.mark.parametrize("module", [SLOW, CONFLICT], ids=["deadline", "engine-error"])
@pytest.mark.parametrize("mode", ["deny", "allow"])
async def test_failure_modes(
    module: str, mode: str, audit_log: AuditLog, database: Database
) -> None:
    engine = OpaEmbeddedEngine()
    engine.load({"slow.rego": module}, {})
    try:
        a = Admitter(
            native=engine.evaluate,
            gatekeeper=None,
            audit=audit_log,
            validate_timeout_s=0.3,
            failure_mode=mode,  # type: ignore[arg-type]
        )
        async with serve_webhook(a) as http:
            start = time.monotonic()
            resp = (
                await http.post("/admission/validate", json=payload("pod-allowed.json"))
            ).json()["response"]
            elapsed = time.monotonic() - start
    finally:
        if module is CONFLICT:
            engine.close()
    assert resp["uid"] == "b1a0c2e4-0001-4d2b-9e61-000000000001"
    expected = "deadline" if module is SLOW else "policy evaluation failed"
    if mode == "deny":
        assert resp["allowed"] is False
        assert resp["status"]["code"] == 403
        assert expected in resp["status"]["message"]
    else:
        assert resp["allowed"] is True
        assert expected in resp["warnings"][0]
    if module is SLOW:
        assert elapsed < 1.5  # answered at the deadline, not when the evaluation ends
    audit_log.flush()
    record = tail(database, 1, kind=AUDIT_KIND)[0].payload
    assert record["allowed"] is (mode == "allow")
    assert expected in record["error"]


async def test_missing_native_policy_fails_closed(audit_log: AuditLog) -> None:
    engine = OpaEmbeddedEngine()
    engine.load({"other.rego": "package other\n\nx := 1\n"}, {})
    try:
        async with serve_webhook(
            Admitter(native=engine.evaluate, gatekeeper=None, audit=audit_log)
        ) as http:
            resp = (await http.post("/admission/validate", json=payload("pod-allowed.json"))).json()
    finally:
        engine.close()
    assert resp["response"]["allowed"] is False
    assert "data.zerogate.admission.decision is undefined" in resp["response"]["status"]["message"]


async def test_unauditable_decision_is_denied(
    native_engine: OpaEmbeddedEngine, database: Database, tmp_path: Path
) -> None:
    closed = AuditLog.open(database, signing_key=tmp_path / "k.pem")
    closed.close()  # a stopped audit log refuses records
    async with serve_webhook(admitter(native_engine, None, closed)) as http:
        resp = (await http.post("/admission/validate", json=payload("pod-allowed.json"))).json()[
            "response"
        ]
    assert resp["allowed"] is False
    assert resp["status"]["message"] == "zerogate: audit log unavailable"


async def test_metrics_use_gatekeeper_names(
    native_engine: OpaEmbeddedEngine, gatekeeper: GatekeeperSet
) -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("zerogate.admission")
    a = Admitter(native=native_engine.evaluate, gatekeeper=gatekeeper, audit=None, meter=meter)
    async with serve_webhook(a) as http:
        await http.post("/admission/validate", json=payload("pod-denied.json"))
        await http.post("/admission/validate", json=payload("k8s-docs-scale-update.json"))
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] = list(m.data.data_points)
    counts = {
        p.attributes["admission_status"]: p.value
        for p in points["gatekeeper_validation_request_count"]
    }
    assert counts == {"deny": 1, "allow": 1}
    assert {
        p.attributes["admission_status"]
        for p in points["gatekeeper_validation_request_duration_seconds"]
    } == {"deny", "allow"}
    by_constraint = {
        (p.attributes["constraint"], p.attributes["enforcement_action"]): p.value
        for p in points["zerogate_admission_violations"]
    }
    assert by_constraint[("K8sPSPHostNamespace/no-host-namespace", "deny")] == 1
    assert by_constraint[("zerogate.admission", "deny")] == 5


async def test_http_contract_of_the_routes(native_engine: OpaEmbeddedEngine) -> None:
    """What kube-apiserver (and a person with curl) sees besides the review itself: JSON
    content type, 413 for an oversized body, 405 for another method, non-ASCII kept."""
    async with serve_webhook(admitter(native_engine, None, None)) as http:
        review = payload("k8s-docs-scale-update.json")
        review["request"]["name"] = "größe"
        r = await http.post("/admission/validate", json=review)
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(r.content)
        assert r.json()["response"]["allowed"] is True

        r = await http.post("/admission/mutate", content=b"{}")
        assert r.status_code == 400
        assert r.headers["content-type"] == "application/json"

        too_big = b" " * (MAX_BODY_BYTES + 1)
        for path in ("/admission/validate", "/admission/mutate"):
            r = await http.post(path, content=too_big)
            assert r.status_code == 413
            assert r.json() == {
                "code": "invalid_admission_review",
                "message": f"body exceeds {MAX_BODY_BYTES} bytes",
            }
            r = await http.get(path)
            assert r.status_code == 405


async def test_concurrent_reviews_answer_like_sequential_ones(
    native_engine: OpaEmbeddedEngine, library_templates: list[ConstraintTemplate]
) -> None:
    """Reviews evaluated at once on the worker pool and the engine instances (one OPA
    instance per worker) get exactly the answers they get one at a time."""
    gk = GatekeeperSet(serving_engine())  # one OPA instance per evaluation worker
    try:
        assert gk.replace(library_templates, _deny_constraints()) == {}
        a = admitter(native_engine, gk, None)
        names = [
            "pod-allowed.json",
            "pod-denied.json",
            "pod-warned.json",
            "gatekeeper-docs-deployment-create.json",
        ]
        bodies = [(PAYLOADS / n).read_bytes() for n in names]
        alone = [await a.validate(b) for b in bodies]
        together = await asyncio.gather(*(a.validate(b) for b in bodies * 8))
        assert list(together) == alone * 8
    finally:
        gk.close()
