"""May this caller make this model call: the ``data.zerogate.inference.decision`` policy.

Input (DESIGN.md 7; ``docs/policies.md`` documents each field)::

    {subject: {spiffe_id, trust_domain, path}, request: {model, operation, stream,
     max_tokens, input_tokens}, runtime: {quarantined, reasons}, usage: {...}, time,
     attributes: {source: {principal}}}

``attributes.source.principal`` repeats the SPIFFE ID where OPA-Envoy's ext_authz input keeps
it, so a policy written for Envoy + OPA reads the caller the same way here.

Result: ``{allow, reasons, limits: {rpm, tpm, max_tokens, daily_tokens}}``. A deny is a 403
with the policy's reasons; an engine error or an undefined / malformed decision is a 503: the
gate fails closed and never serves a call it could not decide.

Decisions go through the policy service's decision cache keyed by everything the shipped
policy reads: the subject, model, operation, stream, max_tokens, the runtime state and the
request time truncated to the minute (grant expiry is minute-accurate). A policy that reads
``usage`` or ``request.input_tokens`` must run with ``cache=False``. The policy service's own
``policy.decision`` record is not written (``log=False``): the gate's ``inference.call``
record carries the decision id, revision and reasons, one audit record per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from inference.authn import Principal
from inference.gate import ModelCall
from inference.refusals import PermissionDeniedError, PolicyUnavailable
from policy.engine import Decision
from policy.errors import PolicyError

POLICY_PATH = "zerogate/inference/decision"


class Decider(Protocol):
    """``policy.service.PolicyService`` as the gate uses it."""

    async def adecide(
        self, path: str, input: Any = None, *, cache_key: Any = None, log: bool = True
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reasons: list[str]
    limits: dict[str, Any]
    revision: str
    decision_id: str
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def policy_input(
    principal: Principal,
    call: ModelCall,
    *,
    input_tokens: int,
    quarantined: bool,
    runtime_reasons: list[str],
    usage: dict[str, int],
    now: datetime,
) -> dict[str, Any]:
    spiffe_id = str(principal.spiffe_id)
    return {
        "subject": {
            "spiffe_id": spiffe_id,
            "trust_domain": principal.trust_domain,
            "path": principal.path,
        },
        "request": {
            "model": call.model,
            "operation": call.operation,
            "stream": call.stream,
            "max_tokens": call.max_tokens,
            "input_tokens": input_tokens,
        },
        "runtime": {"quarantined": quarantined, "reasons": runtime_reasons},
        "usage": usage,
        "time": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "attributes": {"source": {"principal": spiffe_id}},
    }


def _cache_key(input_: dict[str, Any], now: datetime) -> tuple[Any, ...]:
    req = input_["request"]
    return (
        input_["subject"]["spiffe_id"],
        req["model"],
        req["operation"],
        req["stream"],
        req["max_tokens"],
        input_["runtime"]["quarantined"],
        tuple(input_["runtime"]["reasons"]),
        now.strftime("%Y-%m-%dT%H:%M"),
    )


class Authorizer:
    def __init__(self, policy: Decider, *, path: str = POLICY_PATH, cache: bool = True) -> None:
        self._policy = policy
        self._path = path
        self._cache = cache

    async def decide(self, input_: dict[str, Any], now: datetime) -> Verdict:
        """The policy's verdict; raises PolicyUnavailable (503) when there is none."""
        key = _cache_key(input_, now) if self._cache else None
        try:
            decision = await self._policy.adecide(self._path, input_, cache_key=key, log=False)
        except PolicyError as exc:
            raise PolicyUnavailable(
                f"policy evaluation failed, refusing the call: {exc}",
                reasons=[f"policy error: {exc.code}"],
            ) from exc
        result = decision.result
        if not decision.defined or not isinstance(result, dict) or "allow" not in result:
            raise PolicyUnavailable(
                f"policy {self._path} gave no decision (undefined or not an object with "
                "`allow`), refusing the call",
                reasons=["policy decision undefined"],
            )
        limits = result.get("limits")
        return Verdict(
            allowed=decision.allowed,
            reasons=decision.reasons,
            limits=dict(limits) if isinstance(limits, dict) else {},
            revision=decision.revision,
            decision_id=decision.decision_id,
            cached=decision.cached,
        )

    @staticmethod
    def refuse(verdict: Verdict) -> PermissionDeniedError:
        reasons = verdict.reasons or ["denied by policy"]
        return PermissionDeniedError("; ".join(reasons), reasons=reasons)
