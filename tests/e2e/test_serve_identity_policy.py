"""`zerogate serve` end to end: py-spiffe against its Workload API, mTLS admin APIs, the
OPA-compatible policy API, and the audit trail of it all."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
from conftest import ADMIN_ID, WORKLOAD_ID
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store
from serve_support import Served

CLIENT = Path(__file__).parents[1] / "identity" / "workload_client.py"


def _workload(served: Served, *args: str) -> list[dict[str, object]]:
    env = {**served.env, "SPIFFE_ENDPOINT_SOCKET": f"unix://{served.socket}"}
    out = subprocess.run(
        [sys.executable, str(CLIENT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_py_spiffe_client_against_serve(served: Served) -> None:
    results = _workload(served, "all", "spiffe://zerogate.internal/inference")
    summary = {k: v for r in results for k, v in r.items()}
    assert summary["x509_spiffe_id"] == WORKLOAD_ID
    assert summary["jwt_spiffe_id"] == WORKLOAD_ID
    assert summary["validated_spiffe_id"] == WORKLOAD_ID
    assert summary["jwt_audience"] == ["spiffe://zerogate.internal/inference"]


def test_forced_rotation_reaches_the_watcher(served: Served) -> None:
    env = {**served.env, "SPIFFE_ENDPOINT_SOCKET": f"unix://{served.socket}"}
    watcher = subprocess.Popen(
        [sys.executable, str(CLIENT), "watch"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None and watcher.stdin is not None
    try:
        first = json.loads(watcher.stdout.readline())
        while first["event"] == "started":
            first = json.loads(watcher.stdout.readline())
        assert first["event"] == "update", first
        assert first["spiffe_ids"] == [WORKLOAD_ID]
        served.cli("ca", "rotate")
        # the serving process picks the rotation up on its next CA tick and pushes it
        for line in watcher.stdout:
            update = json.loads(line)
            if update["event"] == "started":
                continue
            assert update["event"] == "update", update
            if update["issuer"] != first["issuer"]:
                assert update["verified_root"] == update["issuer"]
                break
    finally:
        watcher.stdin.close()
        watcher.terminate()
        watcher.wait(timeout=30)


def _admin_client(served: Served, tmp_path: Path, spiffe_id: str) -> httpx.Client:
    out = tmp_path / spiffe_id.rsplit("/", 1)[-1]
    served.cli("svid", "mint", "x509", "--spiffe-id", spiffe_id, "--out", str(out))
    ctx = served.trust()
    ctx.load_cert_chain(out / "svid.pem", out / "svid.key")
    return httpx.Client(base_url=served.urls["control-plane"], verify=ctx, timeout=30)


def test_control_plane_tls_is_our_svid(served: Served) -> None:
    with httpx.Client(base_url=served.urls["control-plane"], verify=served.trust()) as client:
        bundle = client.get("/v1/bundle").json()
        assert {k["use"] for k in bundle["keys"]} == {"x509-svid", "jwt-svid"}
        assert client.get("/readyz").json()["status"] == "ready"
    pem = served.cli("bundle", "show", "--format", "pem")
    anchors = x509.load_pem_x509_certificates(pem.encode())
    import socket
    import ssl

    host, port = served.urls["control-plane"].removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cadata=pem)
    with (
        socket.create_connection((host, int(port))) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    leaf = x509.load_der_x509_certificate(der)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zerogate.internal/zerogate/server"
    ]
    PolicyBuilder().store(Store(anchors)).time(datetime.now(UTC)).build_server_verifier(
        x509.DNSName("localhost")
    ).verify(leaf, [])


def test_admin_apis_need_an_admin_svid(served: Served, tmp_path: Path) -> None:
    with _admin_client(served, tmp_path, ADMIN_ID) as admin:
        entries = admin.get("/v1/entries").json()["entries"]
        assert {e["spiffe_id"] for e in entries} >= {ADMIN_ID, WORKLOAD_ID}
        module = 'package authz\n\nallow if input.user == "alice"\n'
        put = admin.put("/v1/policies/authz", content=module)
        assert put.status_code == 200, put.text
        decision = admin.post("/v1/data/authz/allow", json={"input": {"user": "alice"}})
        assert decision.json()["result"] is True
        assert "decision_id" in decision.json()
        broken = admin.put("/v1/policies/authz", content="package authz\nallow if {")
        assert broken.status_code == 400
        assert broken.json()["code"] == "invalid_parameter"
        still = admin.post("/v1/data/authz/allow", json={"input": {"user": "alice"}})
        assert still.json()["result"] is True
    with _admin_client(served, tmp_path, WORKLOAD_ID) as workload:
        assert workload.get("/v1/entries").status_code == 403
        assert workload.put("/v1/policies/x", content="package x\n").status_code == 403
    with httpx.Client(base_url=served.urls["control-plane"], verify=served.trust()) as anon:
        assert anon.get("/v1/entries").status_code == 401
        assert anon.put("/v1/policies/x", content="package x\n").status_code in (401, 403)


def test_audit_trail_verifies(served: Served) -> None:
    out = served.cli("audit", "tail", "-n", "500", "--output", "json")
    kinds = {json.loads(line)["kind"] for line in out.splitlines()}
    assert "control_plane.started" in kinds
    assert "identity.entry.created" in kinds
    assert any(k.startswith("identity.svid") for k in kinds)
    assert "intact" in served.cli("audit", "verify")


def test_admission_webhook_on_the_control_plane(served: Served) -> None:
    import base64

    import jsonpatch
    import yaml

    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "p",
                    "namespace": "ml",
                    "annotations": {"zerogate.io/inject": "true"},
                },
                "spec": {"containers": [{"name": "c", "image": "nginx:latest"}]},
            },
            "dryRun": False,
        },
    }
    with httpx.Client(base_url=served.urls["control-plane"], verify=served.trust()) as client:
        denied = client.post("/admission/validate", json=review).json()["response"]
        assert denied["uid"] == review["request"]["uid"]
        assert denied["allowed"] is False
        assert denied["status"]["code"] == 403
        mutated = client.post("/admission/mutate", json=review).json()["response"]
        assert mutated["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(mutated["patch"]))
        pod = jsonpatch.apply_patch(review["request"]["object"], patch)
        env = pod["spec"]["containers"][0]["env"]
        assert any(e["name"] == "SPIFFE_ENDPOINT_SOCKET" for e in env)
        bad = client.post("/admission/validate", content=b"{not json")
        assert bad.status_code == 400
    assert "[zerogate.admission]" in denied["status"]["message"]
    # on the embedded OPA the native policy is compiled into admission's engine (one call)
    reloads = [line for line in served.log_lines if "event=admission.reload" in line]
    assert reloads and "native=None" not in reloads[-1], reloads
    manifests = list(yaml.safe_load_all(served.cli("admission", "manifests")))
    bundle = served.cli("bundle", "show", "--format", "pem")
    ca = base64.b64decode(manifests[0]["webhooks"][0]["clientConfig"]["caBundle"]).decode()
    assert ca.strip() == bundle.strip()
