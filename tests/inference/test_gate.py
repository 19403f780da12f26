"""The gated service over real TLS/mTLS sockets with the real ``openai`` SDK: every refusal of
issue 5 (401/403/429/503 with its reason), one audit record per call, the OpenTelemetry spans.

One module-wide setup: a CA on SQLite, the shipped inference policy (plus one low-limit test
grant) on embedded OPA, a real audit log, the embeddings model, and the app behind uvicorn
with ``ServerTLS`` + ``PeerCertProtocol`` exactly as the service runs it. Failure modes
(policy engine down, audit log down, stale bundle) swap one real part of the gate for a real
broken one and put it back.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from gate_support import (
    ThreadServer,
    alg_none_jwt,
    claims_for,
    client_context,
    hs256_with_public_key,
    signed_jwt,
)
from inference_support import CHAT_MODEL, EMBED_MODEL
from opentelemetry.trace import SpanKind

from identity.bundle import BundleSet
from identity.ca import CertificateAuthority, JwtSvidParams, X509Svid, X509SvidParams
from identity.denylist import DenyList
from identity.keys import KeyType, MemoryKeyManager
from identity.rotation import AuthorityManager
from identity.spiffeid import SpiffeId, TrustDomain
from inference.app import create_app
from inference.authn import Authenticator
from inference.authz import Authorizer
from inference.backends.local_torch_embeddings import LocalTorchEmbeddings
from inference.budget import Budgets
from inference.gating import SpiffeGate
from inference.models import Model, ModelRegistry
from inference.quarantine import InMemoryRuntimeStatus
from inference.trust import LocalTrust, SnapshotTrust, TrustSnapshot
from policy.service import PolicyService, open_policy
from zerogate import audit as audit_mod
from zerogate.audit import AuditLog
from zerogate.clock import ManualClock
from zerogate.config import Settings
from zerogate.store import Database
from zerogate.telemetry import Telemetry
from zerogate.tls import ServerTLS

TD = "zerogate.internal"
SERVICE = f"spiffe://{TD}/inference"
APP = f"spiffe://{TD}/ns/default/sa/app"
SEARCH = f"spiffe://{TD}/ns/apps/sa/search"  # embeddings only
TINY = f"spiffe://{TD}/ns/tiny/sa/batch"  # rpm 2 (test grant)
NO_GRANT = f"spiffe://{TD}/ns/other/sa/x"
PROXY = f"spiffe://{TD}/mesh/envoy"
REPO = Path(__file__).resolve().parents[2]


def _ca(db: Database, td: str, clock: ManualClock) -> CertificateAuthority:
    manager = AuthorityManager(
        trust_domain=TrustDomain(td),
        db=db,
        keys=MemoryKeyManager(),
        clock=clock,
        ca_ttl=timedelta(hours=24),
        key_type=KeyType.EC_P256,
    )
    manager.tick()
    return CertificateAuthority(manager, clock=clock)


@dataclass
class Env:
    clock: ManualClock
    ca: CertificateAuthority
    foreign_td_ca: CertificateAuthority
    foreign_ca: CertificateAuthority
    db: Database
    audit: AuditLog
    policy: PolicyService
    settings: Settings
    telemetry: Telemetry
    runtime: InMemoryRuntimeStatus
    deny: DenyList
    gate: SpiffeGate
    server: ThreadServer
    tmp: Path

    def token(self, spiffe_id: str, audience: str = SERVICE) -> str:
        return self.ca.issue_jwt_svid(
            JwtSvidParams(SpiffeId.parse(spiffe_id), audience=(audience,))
        ).token

    def svid(self, spiffe_id: str, ca: CertificateAuthority | None = None) -> X509Svid:
        return (ca or self.ca).issue_x509_svid(X509SvidParams(SpiffeId.parse(spiffe_id)))

    def http(self, svid: X509Svid | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url, verify=client_context(self.ca.bundle(), svid), timeout=60
        )

    def sdk(self, api_key: str, svid: X509Svid | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.server.url}/v1",
            api_key=api_key,
            # the SDK's own HTTP client (httpx2), trusting only our bundle
            http_client=httpx2.Client(verify=client_context(self.ca.bundle(), svid), timeout=60),
            max_retries=0,
        )

    def calls(self) -> list[dict[str, Any]]:
        self.audit.flush()
        return [r.payload for r in audit_mod.tail(self.db, 100_000, kind="inference.call")]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("gate")
    clock = ManualClock(datetime.now(UTC))
    db = Database.open(f"sqlite:///{tmp / 'gate.db'}")
    other_db = Database.open(f"sqlite:///{tmp / 'foreign.db'}")
    third_db = Database.open(f"sqlite:///{tmp / 'foreign2.db'}")
    audit = AuditLog.open(db, signing_key=tmp / "audit.pem", clock=clock)
    ca = _ca(db, TD, clock)
    # the shipped policy and data, plus one low-limit grant for the budget tests
    rego = tmp / "rego"
    shutil.copytree(REPO / "rego" / "inference", rego / "inference")
    data = json.loads((rego / "inference" / "data.json").read_text())
    data["grants"].append(
        {
            "name": "test: tiny budget",
            "path_prefix": "/ns/tiny/",
            "models": ["*"],
            "operations": ["embeddings", "chat"],
            "limits": {"rpm": 2, "tpm": 100000, "max_tokens": 64, "daily_tokens": 1000000},
        }
    )
    (rego / "inference" / "data.json").write_text(json.dumps(data))
    settings = Settings(
        data_dir=tmp, trust_domain=TD, policy={"rego_dir": str(rego), "watch": False}
    )
    policy = open_policy(settings, audit, clock=clock)
    telemetry = Telemetry.in_memory()
    runtime = InMemoryRuntimeStatus()
    deny = DenyList(db, clock=clock, audit=audit)
    gate = SpiffeGate(
        authenticator=Authenticator(
            LocalTrust(ca.bundle, clock),
            audiences=[SERVICE],
            clock=clock,
            deny=deny,
            trusted_proxy_ids=[PROXY],
        ),
        authorizer=Authorizer(policy),
        budgets=Budgets(clock),
        runtime=runtime,
        audit=audit,
        clock=clock,
        tracer=telemetry.tracer("zerogate.inference"),
        meter=telemetry.meter("zerogate.inference"),
        providers={EMBED_MODEL: "local-torch"},
    )
    embeddings = LocalTorchEmbeddings(name=EMBED_MODEL, device="cpu", batch_wait_ms=1)
    registry = ModelRegistry([Model(EMBED_MODEL, "embeddings", "local-torch", embeddings)])
    server_svid = ca.issue_server_svid(SpiffeId.parse(SERVICE), ("localhost",))
    tls = ServerTLS(
        server_svid.chain_pem(), server_svid.key_pem(), ca.bundle().to_pem().encode("ascii")
    )
    server = ThreadServer(create_app(registry, gate=gate), tls)
    server.start()
    yield Env(
        clock,
        ca,
        _ca(other_db, "evil.example", clock),
        _ca(third_db, TD, clock),
        db,
        audit,
        policy,
        settings,
        telemetry,
        runtime,
        deny,
        gate,
        server,
        tmp,
    )
    server.stop()
    policy.close()
    audit.close()
    for d in (db, other_db, third_db):
        d.close()


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return dict(body["error"])


def _embed(client: httpx.Client, token: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    headers.update(extra.pop("headers", {}))
    body = {"model": EMBED_MODEL, "input": ["hello"], **extra}
    return client.post("/v1/embeddings", json=body, headers=headers)


# --- allowed calls through the SDK -----------------------------------------------------------


def test_sdk_with_jwt_svid_embeds_and_is_audited_and_traced(env: Env) -> None:
    assert env.telemetry.span_exporter is not None
    env.telemetry.span_exporter.clear()
    before = len(env.calls())
    result = env.sdk(env.token(APP)).embeddings.create(model=EMBED_MODEL, input=["a", "b c"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    calls = env.calls()
    assert len(calls) == before + 1
    record = calls[-1]
    assert record["subject"] == {"spiffe_id": APP, "method": "jwt"}
    assert record["decision"] == "allow" and record["status"] == 200
    assert record["model"] == EMBED_MODEL and record["operation"] == "embeddings"
    assert record["tokens"]["input"] == result.usage.prompt_tokens > 0
    assert record["policy"]["revision"] == env.policy.revision
    assert "content" not in record  # no prompt text unless audit.capture_content

    spans = {s.name: s for s in env.telemetry.span_exporter.get_finished_spans()}
    server = spans[f"embeddings {EMBED_MODEL}"]
    assert server.kind == SpanKind.SERVER
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "embeddings"
    assert attrs["gen_ai.provider.name"] == "local-torch"
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == EMBED_MODEL
    assert attrs["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert attrs["zerogate.subject.spiffe_id"] == APP
    assert server.context is not None
    assert record["trace_id"] == format(server.context.trace_id, "032x")
    for child in ("authn", "authz", "model"):
        parent = spans[child].parent
        assert parent is not None and server.context is not None
        assert parent.span_id == server.context.span_id
    metrics = env.telemetry.prometheus_text().decode()
    assert "gen_ai_server_request_duration" in metrics
    assert "gen_ai_client_token_usage" in metrics
    assert "zerogate_inference_calls" in metrics
    assert APP not in metrics  # never a SPIFFE ID as a metric label


def test_sdk_over_mtls_with_x509_svid(env: Env) -> None:
    # the SDK insists on an api_key; the verified client certificate wins over it
    client = env.sdk("not-a-token", svid=env.svid(APP))
    result = client.embeddings.create(model=EMBED_MODEL, input="over mTLS")
    assert len(result.data[0].embedding) == 384
    assert env.calls()[-1]["subject"] == {"spiffe_id": APP, "method": "mtls"}


def test_models_list_shows_only_what_the_caller_may_use(env: Env) -> None:
    assert [m.id for m in env.sdk(env.token(SEARCH)).models.list()] == [EMBED_MODEL]
    assert [m.id for m in env.sdk(env.token(NO_GRANT)).models.list()] == []
    with env.http() as client:
        assert client.get("/v1/models").status_code == 401


def test_trusted_proxy_forwards_the_client_identity(env: Env) -> None:
    xfcc = f'By={PROXY};Hash=abc123;URI={APP};Subject="O=test,CN=x"'
    with env.http(env.svid(PROXY)) as client:
        resp = _embed(client, headers={"x-forwarded-client-cert": xfcc})
    assert resp.status_code == 200, resp.text
    assert env.calls()[-1]["subject"] == {"spiffe_id": APP, "method": "xfcc", "via": PROXY}


def test_token_cache_checks_the_signature_once(env: Env) -> None:
    token = env.token(APP)
    cache = env.gate.authenticator.token_cache
    with env.http() as client:
        assert _embed(client, token).status_code == 200
        size = len(cache)
        assert _embed(client, token).status_code == 200
    assert len(cache) == size  # the second call was a hit, not a new entry


# --- refusals: 401 ----------------------------------------------------------------------------


def _refused(env: Env, token: str | None, status: int, code: str, match: str) -> dict[str, Any]:
    before = len(env.calls())
    with env.http() as client:
        resp = _embed(client, token)
    assert resp.status_code == status, resp.text
    error = _error(resp)
    assert error["code"] == code, error
    assert match in error["message"], error
    calls = env.calls()
    assert len(calls) == before + 1
    assert calls[-1]["decision"] == "deny" and calls[-1]["status"] == status
    return error


def test_no_credential_is_401(env: Env) -> None:
    error = _refused(env, None, 401, "unauthenticated", "no credential")
    assert error["type"] == "authentication_error"


def test_sdk_sees_401_as_authentication_error(env: Env) -> None:
    with pytest.raises(openai.AuthenticationError, match="invalid JWT-SVID"):
        env.sdk("garbage").embeddings.create(model=EMBED_MODEL, input="x")


@pytest.mark.parametrize(
    ("forge", "match"),
    [
        (lambda env: "not.a.jwt", "cannot be decoded"),
        (lambda env: "garbage", "JWS compact"),
        (lambda env: alg_none_jwt(env.ca, claims_for(APP, SERVICE)), "algorithm 'none'"),
        (
            lambda env: hs256_with_public_key(env.ca, claims_for(APP, SERVICE)),
            "algorithm 'HS256'",
        ),
        (lambda env: signed_jwt(env.ca, claims_for(APP, SERVICE, exp_in=-60)), "expired"),
        (lambda env: env.token(APP, audience=f"spiffe://{TD}/other"), "audience"),
        (
            lambda env: (
                env.foreign_td_ca.issue_jwt_svid(
                    JwtSvidParams(
                        SpiffeId.parse("spiffe://evil.example/ns/default/sa/app"), (SERVICE,)
                    )
                ).token
            ),
            "no JWT bundle for trust domain evil.example",
        ),
        (
            lambda env: (
                env.foreign_ca.issue_jwt_svid(JwtSvidParams(SpiffeId.parse(APP), (SERVICE,))).token
            ),
            "is not in the bundle",
        ),
    ],
    ids=[
        "malformed",
        "garbage",
        "alg-none",
        "hs256-public-key",
        "expired",
        "wrong-audience",
        "foreign-trust-domain",
        "foreign-ca-same-td",
    ],
)
def test_bad_jwt_svid_is_401(env: Env, forge: Any, match: str) -> None:
    _refused(env, forge(env), 401, "unauthenticated", match)


def test_client_certificate_from_a_foreign_ca_fails_the_handshake(env: Env) -> None:
    with (
        env.http(env.svid(APP, ca=env.foreign_ca)) as client,
        pytest.raises(httpx.TransportError),
    ):
        _embed(client)


def test_xfcc_from_an_untrusted_peer_is_401(env: Env) -> None:
    with env.http(env.svid(SEARCH)) as client:
        resp = _embed(client, headers={"x-forwarded-client-cert": f"URI={APP}"})
    assert resp.status_code == 401
    assert "trusted proxy" in _error(resp)["message"]


def test_xfcc_without_mtls_is_401(env: Env) -> None:
    with env.http() as client:
        resp = _embed(client, env.token(SEARCH), headers={"x-forwarded-client-cert": f"URI={APP}"})
    assert resp.status_code == 401


# --- refusals: 403 ----------------------------------------------------------------------------


def test_model_the_policy_does_not_allow_is_403_with_the_reason(env: Env) -> None:
    with pytest.raises(openai.PermissionDeniedError) as info:
        env.sdk(env.token(SEARCH)).chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert f"{SEARCH} may not use model '{CHAT_MODEL}' for 'chat'" in str(info.value)
    record = env.calls()[-1]
    assert record["decision"] == "deny" and record["status"] == 403
    assert record["reasons"] == [f"{SEARCH} may not use model '{CHAT_MODEL}' for 'chat'"]


def test_no_grant_and_max_tokens_over_the_limit_are_403(env: Env) -> None:
    _refused(env, env.token(NO_GRANT), 403, "permission_denied", "has no model grant")
    with env.http() as client:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": CHAT_MODEL,
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 100000,
            },
            headers={"authorization": f"Bearer {env.token(APP)}"},
        )
    assert resp.status_code == 403
    assert "max_tokens 100000 exceeds the limit 512" in _error(resp)["message"]


def test_revoked_identity_is_403_even_with_a_valid_token(env: Env) -> None:
    revoked = f"spiffe://{TD}/ns/default/sa/revoked"
    token = env.token(revoked)
    with env.http() as client:
        assert _embed(client, token).status_code == 200  # cached as verified
    env.deny.add("spiffe_id", revoked, reason="Terminal shell in container")
    _refused(env, token, 403, "identity_denied", "revoked")
    record = env.calls()[-1]
    # the audit record names who was refused and why, though authentication never completed
    assert record["subject"]["spiffe_id"] == revoked
    assert record["status"] == 403
    assert any("Terminal shell in container" in r for r in record["reasons"])


def test_quarantined_identity_is_refused_at_once(env: Env) -> None:
    target = f"spiffe://{TD}/ns/default/sa/compromised"
    token = env.token(target)
    with env.http() as client:
        assert _embed(client, token).status_code == 200  # connection and token warm
        env.runtime.quarantine(target, ["Terminal shell in container"])
        set_at = time.perf_counter()
        resp = _embed(client, token)
        elapsed = time.perf_counter() - set_at
    assert resp.status_code == 403
    error = _error(resp)
    assert error["code"] == "quarantined"
    assert "Terminal shell in container" in error["message"]
    assert elapsed < 0.05, f"refused {elapsed * 1000:.1f} ms after the quarantine was set"
    assert env.calls()[-1]["reasons"] == ["identity is quarantined: Terminal shell in container"]
    env.runtime.release(target)
    with env.http() as client:
        assert _embed(client, token).status_code == 200


# --- refusals: 429 ----------------------------------------------------------------------------


def test_over_budget_is_429_with_retry_after(env: Env) -> None:
    token = env.token(TINY)
    with env.http() as client:
        assert _embed(client, token).status_code == 200
        assert _embed(client, token).status_code == 200
        resp = _embed(client, token)
        assert resp.status_code == 429
        error = _error(resp)
        assert error["type"] == "budget_exceeded" and error["code"] == "budget_exceeded"
        assert "limit is 2 per minute" in error["message"]
        assert 1 <= int(resp.headers["retry-after"]) <= 60
        env.clock.advance(timedelta(seconds=61))
        assert _embed(client, env.token(TINY)).status_code == 200
    with pytest.raises(openai.RateLimitError):
        for _ in range(3):
            env.sdk(env.token(TINY)).embeddings.create(model=EMBED_MODEL, input="x")


# --- refusals: 503 (fail closed) ------------------------------------------------------------


def test_policy_engine_down_is_503(env: Env) -> None:
    broken = open_policy(env.settings, None, clock=env.clock)
    broken.engine.close()
    working = env.gate.authorizer
    env.gate.authorizer = Authorizer(broken)
    try:
        _refused(env, env.token(APP), 503, "policy_unavailable", "policy evaluation failed")
    finally:
        env.gate.authorizer = working


def test_audit_log_down_refuses_the_call(env: Env) -> None:
    dead_db = Database.open(f"sqlite:///{env.tmp / 'dead.db'}")
    dead = AuditLog.open(dead_db, signing_key=env.tmp / "dead.pem")
    dead.close()
    working = env.gate.audit
    env.gate.audit = dead
    try:
        with env.http() as client:
            allowed = _embed(client, env.token(APP))
            denied = _embed(client, None)
    finally:
        env.gate.audit = working
        dead_db.close()
    assert allowed.status_code == 503 and _error(allowed)["code"] == "audit_unavailable"
    assert denied.status_code == 503 and _error(denied)["code"] == "audit_unavailable"


def test_stale_bundle_is_503(env: Env) -> None:
    stale = SnapshotTrust(
        TrustSnapshot(
            BundleSet([env.ca.bundle()]), env.clock.now() - timedelta(seconds=1000), 300.0
        )
    )
    working = env.gate.authenticator
    env.gate.authenticator = Authenticator(
        stale, audiences=[SERVICE], clock=env.clock, staleness_factor=3.0
    )
    try:
        _refused(env, env.token(APP), 503, "bundle_stale", "trust bundle last refreshed")
    finally:
        env.gate.authenticator = working


# --- the audit trail ---------------------------------------------------------------------------


def test_capture_content_puts_the_input_in_the_record(env: Env) -> None:
    env.gate.capture_content = True
    try:
        with env.http() as client:
            resp = _embed(client, env.token(APP), input=["the secret prompt"])
    finally:
        env.gate.capture_content = False
    assert resp.status_code == 200
    assert env.calls()[-1]["content"] == {"input": ["the secret prompt"]}


def test_one_record_per_call_and_the_chain_verifies(env: Env) -> None:
    before = len(env.calls())
    with env.http() as client:
        statuses = [_embed(client, t).status_code for t in (env.token(APP), None, "garbage")]
    assert statuses == [200, 401, 401]
    assert len(env.calls()) == before + 3
    assert audit_mod.verify(env.db, env.audit.public_key).ok
