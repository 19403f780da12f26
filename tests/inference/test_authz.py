"""The policy input the gate builds (issue 5's exact shape) and how decisions map to
refusals, on the shipped ``rego/inference`` policy with embedded OPA."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from identity.spiffeid import SpiffeId
from inference.authn import Principal
from inference.authz import Authorizer, policy_input
from inference.gate import ModelCall
from inference.refusals import PolicyUnavailable
from policy.service import PolicyService, open_policy
from zerogate.config import Settings

NOW = datetime(2026, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
APP = Principal(SpiffeId.parse("spiffe://zerogate.internal/ns/default/sa/app"), "jwt")


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyService]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("authz"), policy={"watch": False})
    service = open_policy(settings, None)
    yield service
    service.close()


def _input(call: ModelCall, quarantined: bool = False) -> dict[str, object]:
    return policy_input(
        APP,
        call,
        input_tokens=10,
        quarantined=quarantined,
        runtime_reasons=["Terminal shell in container"] if quarantined else [],
        usage={"requests_last_minute": 1, "tokens_last_minute": 5, "tokens_today": 9},
        now=NOW,
    )


def test_policy_input_shape() -> None:
    assert _input(ModelCall("chat", "m", stream=True, max_tokens=32)) == {
        "subject": {
            "spiffe_id": "spiffe://zerogate.internal/ns/default/sa/app",
            "trust_domain": "zerogate.internal",
            "path": "/ns/default/sa/app",
        },
        "request": {
            "model": "m",
            "operation": "chat",
            "stream": True,
            "max_tokens": 32,
            "input_tokens": 10,
        },
        "runtime": {"quarantined": False, "reasons": []},
        "usage": {"requests_last_minute": 1, "tokens_last_minute": 5, "tokens_today": 9},
        "time": "2026-06-01T12:00:00.250000Z",
        "attributes": {"source": {"principal": "spiffe://zerogate.internal/ns/default/sa/app"}},
    }


async def test_allow_carries_limits_and_revision(policy: PolicyService) -> None:
    verdict = await Authorizer(policy).decide(_input(ModelCall("embeddings", "x")), NOW)
    assert verdict.allowed and verdict.reasons == []
    assert verdict.limits == {"rpm": 60, "tpm": 20000, "max_tokens": 512, "daily_tokens": 200000}
    assert verdict.revision == policy.revision


async def test_quarantine_reason_comes_from_the_policy(policy: PolicyService) -> None:
    verdict = await Authorizer(policy).decide(_input(ModelCall("embeddings", "x"), True), NOW)
    assert not verdict.allowed
    assert verdict.reasons == ["identity is quarantined: Terminal shell in container"]
    refusal = Authorizer.refuse(verdict)
    assert refusal.http_status == 403 and refusal.reasons == verdict.reasons


async def test_undefined_decision_is_503(policy: PolicyService) -> None:
    authorizer = Authorizer(policy, path="zerogate/inference/no_such_rule")
    with pytest.raises(PolicyUnavailable, match="gave no decision"):
        await authorizer.decide(_input(ModelCall("embeddings", "x")), NOW)
