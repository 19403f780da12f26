"""`zerogate serve` end to end for the runtime path: Falco (mTLS with its SVID) posts a
Critical alert, the workload is quarantined, and its Workload API stops serving it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
from conftest import WORKLOAD_ID
from serve_support import Served

CLIENT = Path(__file__).parents[1] / "identity" / "workload_client.py"
TD = "spiffe://zerogate.internal"
POD_ID = f"{TD}/ml/pod/trainer-0"

ALERT = {
    "hostname": "node-1",
    "output": "Shell spawned in a container (user=root container=trainer-0 shell=bash)",
    "priority": "Critical",
    "rule": "Terminal shell in container",
    "source": "syscall",
    "tags": ["container", "mitre_execution", "shell"],
    "time": "2026-11-27T10:00:00.123456789Z",
    "output_fields": {
        "container.id": "4f8c5e2d1a3b",
        "evt.time": 1795773600123456789,
        "k8s.ns.name": "ml",
        "k8s.pod.name": "trainer-0",
        "proc.cmdline": "bash",
        "proc.name": "bash",
        "user.name": "root",
    },
}


def _client(served: Served, tmp_path: Path, spiffe_id: str | None) -> httpx.Client:
    ctx = served.trust()
    if spiffe_id is not None:
        out = tmp_path / spiffe_id.rsplit("/", 1)[-1]
        served.cli("svid", "mint", "x509", "--spiffe-id", spiffe_id, "--out", str(out))
        ctx.load_cert_chain(out / "svid.pem", out / "svid.key")
    return httpx.Client(base_url=served.urls["control-plane"], verify=ctx, timeout=30)


def test_falco_alert_quarantines_the_workload(served: Served, tmp_path: Path) -> None:
    served.cli(
        "entry",
        "create",
        "--spiffe-id",
        POD_ID,
        "--selector",
        "k8s:ns:ml",
        "--selector",
        "k8s:pod-name:trainer-0",
    )
    with _client(served, tmp_path, None) as anonymous:
        assert anonymous.post("/v1/runtime/falco", json=ALERT).status_code == 401
    with _client(served, tmp_path, f"{TD}/not-falco") as intruder:
        assert intruder.post("/v1/runtime/falco", json=ALERT).status_code == 403
    with _client(served, tmp_path, f"{TD}/falco") as falco:
        posted = falco.post("/v1/runtime/falco", json=ALERT)
        assert posted.status_code == 200, posted.text
        bad = falco.post("/v1/runtime/falco", json={"rule": "x", "priority": "Loud"})
        assert bad.status_code in (400, 422)
        deadline = time.monotonic() + 10
        listed: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            listed = falco.get("/v1/runtime/quarantine").json()["quarantines"]
            if any(q["spiffe_id"] == POD_ID for q in listed):
                break
            time.sleep(0.1)
        assert any(q["spiffe_id"] == POD_ID and q["rule"] == ALERT["rule"] for q in listed), listed
    cli_list = served.cli("quarantine", "list", "--output", "json")
    assert POD_ID in cli_list
    trail = served.cli("audit", "tail", "-n", "200", "--output", "json")
    kinds = {json.loads(line)["kind"] for line in trail.splitlines()}
    assert {"runtime.event", "runtime.action"} <= kinds


def test_quarantine_stops_the_workload_api(served: Served) -> None:
    env = {**served.env, "SPIFFE_ENDPOINT_SOCKET": f"unix://{served.socket}"}
    before = subprocess.run(
        [sys.executable, str(CLIENT), "all", f"{TD}/inference"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert before.returncode == 0, before.stderr
    served.cli("quarantine", "add", WORKLOAD_ID, "--reason", "test: compromised")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = subprocess.run(
            [sys.executable, str(CLIENT), "all", f"{TD}/inference"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if after.returncode != 0:
            break
        time.sleep(0.2)
    assert after.returncode != 0
    assert "PERMISSION_DENIED" in after.stderr or "permission" in after.stderr.lower()
    assert "intact" in served.cli("audit", "verify")
