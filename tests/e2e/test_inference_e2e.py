"""The gated inference service end to end: ``zerogate serve`` issues the identities (Workload
API), the service serves its own SVID from it, and the real ``openai`` SDK calls embeddings and
chat (plain and streaming) with a JWT-SVID fetched by py-spiffe's ``WorkloadApiClient``, then
over mTLS with an X.509-SVID, then through ``inference.client``. The audit trail holds one
``inference.call`` per call and ``zerogate audit verify`` passes.

The service runs inside ``zerogate serve`` when the control plane wires it (all-in-one);
otherwise this module starts ``zerogate inference serve`` beside it, on the same data
directory and Workload API socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from serve_support import LISTENER, Served
from spiffe import SpiffeId, WorkloadApiClient

from identity.spiffeid import SpiffeId as IdSpiffeId
from inference.client import JwtSvidAuth, spiffe_openai_client
from inference.trust import ServiceIdentityError, WorkloadApiTrust
from zerogate import audit as audit_mod
from zerogate.clock import SYSTEM_CLOCK
from zerogate.store import Database

TD = "zerogate.internal"
SERVICE = f"spiffe://{TD}/inference"
APP = f"spiffe://{TD}/ns/default/sa/app"
EMBED = "all-MiniLM-L6-v2"
CHAT = "SmolLM2-135M-Instruct"
REPO = Path(__file__).resolve().parents[2]


def _converted_chat_model(cache: Path) -> Path:
    """The GGUF chat model converted once per machine (tens of seconds), then reused."""
    from inference.backends.local_torch_chat import LocalTorchChat

    target = cache / CHAT
    if (target / "zerogate-source.json").exists():
        return target  # the marker is written last: the copy is complete

    async def convert() -> None:
        backend = LocalTorchChat(name=CHAT, cache_dir=target, device="cpu")
        await backend.start()
        await backend.stop()

    asyncio.run(convert())
    return target


@dataclass
class Deployment:
    served: Served
    url: str  # https://localhost:PORT
    standalone: subprocess.Popen[str] | None

    @property
    def socket(self) -> Path:
        return self.served.socket

    def workload(self) -> WorkloadApiClient:
        return WorkloadApiClient(f"unix://{self.socket}", default_timeout=30)

    def trust(self) -> ssl.SSLContext:
        """Only our trust domain's X.509 bundle, as fetched from the Workload API."""
        client = self.workload()
        try:
            bundles = client.fetch_x509_bundles()
        finally:
            client.close()
        pem = "".join(
            c.public_bytes(encoding=Encoding.PEM).decode("ascii")
            for b in bundles.bundles
            for c in b.x509_authorities
        )
        return ssl.create_default_context(cadata=pem)

    def calls(self) -> list[dict[str, Any]]:
        """The ``inference.call`` records, read from the shared database (records are
        durable a moment after the response, so wait for the writer to catch up)."""
        db = Database.open(f"sqlite:///{self.served.data_dir / 'zerogate.db'}")
        try:
            time.sleep(0.3)
            return [r.payload for r in audit_mod.tail(db, 100_000, kind="inference.call")]
        finally:
            db.close()


def _wait_ready(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen[str] | None) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("zerogate inference serve exited")
        try:
            if httpx.get(f"{url}/readyz", verify=ctx, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("the inference service did not get ready")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    shared = tmp_path_factory.getbasetemp().parent / "zerogate-models"
    chat_dir = _converted_chat_model(shared)
    root = tmp_path_factory.mktemp("inference-e2e")
    config = root / "zerogate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "inference": {
                    "batch_wait_ms": 1.0,
                    "models": [
                        {"name": EMBED, "task": "embeddings", "device": "cpu"},
                        {"name": CHAT, "task": "chat", "device": "cpu", "path": str(chat_dir)},
                    ],
                }
            }
        )
    )
    served = Served(
        root / "data",
        {"ZEROGATE_CONFIG": str(config), "ZEROGATE_INFERENCE__ENABLED": "true"},
    )
    served.data_dir.mkdir(parents=True)
    uid = str(os.getuid())
    served.cli(
        "entry", "create", "--spiffe-id", SERVICE, "--selector", f"unix:uid:{uid}",
        "--dns", "localhost",
    )  # fmt: skip
    served.cli("entry", "create", "--spiffe-id", APP, "--selector", f"unix:uid:{uid}")
    served.start()
    standalone: subprocess.Popen[str] | None = None
    url = served.urls.get("inference")
    if url is None:
        standalone = subprocess.Popen(
            [sys.executable, "-m", "inference.cli", "serve", "--config", str(config)],
            cwd=served.data_dir.parent,
            env=served.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert standalone.stderr is not None
        lines: list[str] = []
        for line in standalone.stderr:
            lines.append(line)
            match = LISTENER.search(line)
            if match and match.group(1) == "inference":
                url = match.group(2).replace("127.0.0.1", "localhost")
                break
        assert url is not None, "".join(lines[-30:])
        threading.Thread(
            target=lambda: [None for _ in standalone.stderr or []], daemon=True
        ).start()
    deployment = Deployment(served, url, standalone)
    try:
        _wait_ready(url, deployment.trust(), standalone)
        yield deployment
    finally:
        if standalone is not None:
            standalone.terminate()
            assert standalone.wait(timeout=60) == 0
        assert served.stop() == 0, "".join(served.log_lines[-30:])


def _sdk(d: Deployment, api_key: str, ctx: ssl.SSLContext | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{d.url}/v1",
        api_key=api_key,
        http_client=httpx2.Client(verify=ctx or d.trust(), timeout=120),
        max_retries=0,
    )


def test_openai_sdk_with_a_jwt_svid_from_py_spiffe(deployment: Deployment) -> None:
    workload = deployment.workload()
    try:
        token = workload.fetch_jwt_svid({SERVICE}, subject=SpiffeId(APP)).token
    finally:
        workload.close()
    client = _sdk(deployment, token)
    before = len(deployment.calls())

    embedded = client.embeddings.create(model=EMBED, input=["zero trust", "model gate"])
    assert [len(d.embedding) for d in embedded.data] == [384, 384]

    messages: Any = [{"role": "user", "content": "Say hello."}]
    plain = client.chat.completions.create(
        model=CHAT, messages=messages, max_tokens=6, temperature=0
    )
    assert plain.usage is not None and 1 <= plain.usage.completion_tokens <= 6

    chunks = list(
        client.chat.completions.create(
            model=CHAT,
            messages=messages,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # greedy: the same answer both ways

    calls = deployment.calls()[before:]
    assert [(c["operation"], c["status"], c["stream"]) for c in calls] == [
        ("embeddings", 200, False),
        ("chat", 200, False),
        ("chat", 200, True),
    ]
    assert all(c["subject"] == {"spiffe_id": APP, "method": "jwt"} for c in calls)
    assert calls[2]["tokens"]["output"] == usage[0].completion_tokens


def test_openai_sdk_over_mtls_with_an_x509_svid(deployment: Deployment) -> None:
    workload = deployment.workload()
    try:
        svid = next(s for s in workload.fetch_x509_svids() if str(s.spiffe_id) == APP)
    finally:
        workload.close()
    ctx = deployment.trust()
    cert = deployment.served.data_dir.parent / "app.pem"
    key = deployment.served.data_dir.parent / "app.key"
    svid.save(cert, key, Encoding.PEM)
    ctx.load_cert_chain(cert, key)
    client = _sdk(deployment, "no-token-mtls-decides", ctx)
    result = client.embeddings.create(model=EMBED, input="over mTLS")
    assert len(result.data[0].embedding) == 384
    assert deployment.calls()[-1]["subject"] == {"spiffe_id": APP, "method": "mtls"}


@pytest.mark.parametrize("mode", ["jwt", "mtls"])
def test_client_helper(deployment: Deployment, mode: str) -> None:
    client = spiffe_openai_client(
        f"{deployment.url}/v1",
        socket=deployment.socket,
        mode=mode,  # type: ignore[arg-type]
        spiffe_id=APP,
        max_retries=0,
    )
    assert [m.id for m in client.models.list()] == [EMBED, CHAT]
    result = client.embeddings.create(model=EMBED, input="helper")
    assert len(result.data[0].embedding) == 384
    assert deployment.calls()[-1]["subject"]["method"] == mode


def test_refusals_are_audited_and_the_chain_verifies(deployment: Deployment) -> None:
    before = len(deployment.calls())
    with httpx.Client(base_url=deployment.url, verify=deployment.trust(), timeout=30) as http:
        anonymous = http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
        garbage = http.post(
            "/v1/embeddings",
            json={"model": EMBED, "input": "x"},
            headers={"authorization": "Bearer not-a-jwt"},
        )
    assert anonymous.status_code == garbage.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    calls = deployment.calls()[before:]
    assert [(c["decision"], c["status"]) for c in calls] == [("deny", 401), ("deny", 401)]
    metrics = httpx.get(f"{deployment.url}/metrics", verify=deployment.trust()).text
    assert "gen_ai_server_request_duration" in metrics
    deployment.served.cli("audit", "verify")


def _served_cert(d: Deployment) -> x509.Certificate:
    host, port = d.url.removeprefix("https://").split(":")
    return x509.load_pem_x509_certificate(ssl.get_server_certificate((host, int(port))).encode())


def test_service_svid_rotates_without_restart(deployment: Deployment) -> None:
    before = _served_cert(deployment)
    assert before.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [SERVICE]
    deployment.served.cli("ca", "rotate")
    deadline = time.monotonic() + 90
    after = before
    while after.serial_number == before.serial_number and time.monotonic() < deadline:
        time.sleep(0.5)
        after = _served_cert(deployment)
    assert after.serial_number != before.serial_number, "the service kept its old SVID"
    assert after.issuer != before.issuer  # signed by the new CA
    # the same process keeps serving, now with the new SVID, to clients of the new bundle
    client = spiffe_openai_client(
        f"{deployment.url}/v1", socket=deployment.socket, spiffe_id=APP, max_retries=0
    )
    assert len(client.embeddings.create(model=EMBED, input="after").data) == 1


def test_service_without_an_entry_refuses_to_start(deployment: Deployment) -> None:
    trust = WorkloadApiTrust(
        deployment.socket,
        spiffe_id=IdSpiffeId.parse(f"spiffe://{TD}/not-registered"),
        clock=SYSTEM_CLOCK,
        refresh_hint_s=300,
    )
    with pytest.raises(ServiceIdentityError, match=r"no X\.509-SVID for spiffe://"):
        asyncio.run(trust.start())
    asyncio.run(trust.stop())


def test_jwt_auth_refetches_after_half_the_lifetime(deployment: Deployment) -> None:
    now = [time.time()]
    workload = deployment.workload()
    try:
        auth = JwtSvidAuth(workload, SERVICE, APP, clock=lambda: now[0])
        first = auth.token()
        assert auth.token() == first  # cached
        now[0] += 301 / 2  # the default JWT-SVID lifetime is 300 s
        second = auth.token()
    finally:
        workload.close()
    assert second != first


# The whole flow (kept last: it quarantines an identity) ------------------------------------

POD = f"spiffe://{TD}/ns/ml/pod/trainer-0"
FALCO_ALERT = {
    "hostname": "node-1",
    "output": "A shell was spawned in a container (user=root k8s.pod=trainer-0 shell=bash)",
    "priority": "Critical",
    "rule": "Terminal shell in container",
    "source": "syscall",
    "tags": ["container", "mitre_execution", "shell"],
    "time": "2026-11-27T10:00:00.123456789Z",
    "output_fields": {
        "container.id": "4f8c5e2d1a3b",
        "k8s.ns.name": "ml",
        "k8s.pod.name": "trainer-0",
        "proc.name": "bash",
        "user.name": "root",
    },
}


def test_falco_alert_stops_the_workloads_model_calls(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A workload calls the model (allowed); Falco posts a Critical alert for its pod; the
    next call is refused with the rule as the reason; the audit trail holds event, action and
    refusal, and verifies."""
    served = deployment.served
    served.cli(
        "entry", "create", "--spiffe-id", POD,
        "--selector", "k8s:ns:ml", "--selector", "k8s:pod-name:trainer-0",
    )  # fmt: skip
    token = served.cli("svid", "mint", "jwt", "--spiffe-id", POD, "--audience", SERVICE).strip()
    client = _sdk(deployment, token)
    assert len(client.embeddings.create(model=EMBED, input=["before"]).data) == 1

    falco_dir = tmp_path / "falco"
    served.cli(
        "svid", "mint", "x509", "--spiffe-id", f"spiffe://{TD}/falco", "--out", str(falco_dir)
    )
    ctx = served.trust()
    ctx.load_cert_chain(falco_dir / "svid.pem", falco_dir / "svid.key")
    with httpx.Client(base_url=served.urls["control-plane"], verify=ctx, timeout=30) as falco:
        posted = time.monotonic()
        assert falco.post("/v1/runtime/falco", json=FALCO_ALERT).status_code == 200

    refused: openai.PermissionDeniedError | None = None
    while time.monotonic() - posted < 10:
        try:
            client.embeddings.create(model=EMBED, input=["after"])
        except openai.PermissionDeniedError as exc:
            refused = exc
            break
        time.sleep(0.02)
    assert refused is not None, "the quarantined workload was still served"
    assert FALCO_ALERT["rule"] in str(refused)

    db = Database.open(f"sqlite:///{served.data_dir / 'zerogate.db'}")
    try:
        time.sleep(0.3)
        records = audit_mod.tail(db, 100_000)
    finally:
        db.close()
    kinds = [r.kind for r in records]
    assert "runtime.event" in kinds and "runtime.action" in kinds
    denials = [
        r.payload
        for r in records
        if r.kind == "inference.call"
        and (r.payload.get("subject") or {}).get("spiffe_id") == POD
        and r.payload.get("status") == 403
    ]
    assert denials, "the refusal is not in the audit trail"
    assert any(FALCO_ALERT["rule"] in json.dumps(d) for d in denials)
    assert "intact" in served.cli("audit", "verify")
