"""``SpiffeGate``: the ``Gate`` every gated model call passes (DESIGN.md 7).

``admit``: authenticate (``inference/authn.py``) -> runtime status (quarantine) -> authorize
(``inference/authz.py``, the Rego decision) -> budget pre-check (``inference/budget.py``) ->
audit writer healthy? A refusal at any step raises its ``Refusal`` (401/403/429/503) AFTER the
call's audit record is durable: if the audit log cannot take it, the refusal becomes a 503
(fail closed either way).

``settle`` (exactly once per admitted call, ``inference/api.py`` guarantees it): replaces the
budget reservation by the real token usage, writes the ``inference.call`` audit record, ends
the spans and records the metrics. For an admitted call the audit writer's health is checked
before the model runs, and a record the log refuses at settle turns a not yet returned
response into a 503, so a known audit outage refuses calls rather than serving them unlogged.

One audit record per call, allowed or refused (kind ``inference.call``): subject, model,
operation, decision, reasons, policy revision and decision id, tokens in/out, latency, status,
trace id; never prompt or output text unless ``capture_content``.

Tracing (OpenTelemetry GenAI semantic conventions): one SERVER span per call named
``"{operation} {model}"`` with ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``gen_ai.request.max_tokens``,
``gen_ai.response.finish_reasons``, ``error.type``; child spans ``authn``, ``authz`` and
``model``. An incoming W3C ``traceparent`` is honoured. Metrics: ``gen_ai.server.request.
duration``, ``gen_ai.server.time_to_first_token``, ``gen_ai.client.token.usage`` and
``zerogate.inference.calls`` (by decision and refusal code). The SPIFFE ID goes on spans and
audit records only, never on metric labels (unbounded cardinality).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.requests import Request

from inference.authn import Authenticator, Principal, describe
from inference.authz import Authorizer, Verdict, policy_input
from inference.budget import Budgets, Reservation
from inference.gate import Admission, CallOutcome, ModelCall
from inference.quarantine import RuntimeStatus
from inference.refusals import (
    AuditUnavailable,
    GateUnavailableError,
    IdentityDeniedError,
    QuarantinedError,
    Refusal,
)
from zerogate import json_input
from zerogate.clock import Clock
from zerogate.errors import AuditError

log = logging.getLogger(__name__)

AUDIT_KIND = "inference.call"
AUDIT_WAIT_S = 10.0
_PRINCIPAL = "zerogate_principal"
_PROPAGATOR = TraceContextTextMapPropagator()


class AuditTarget(Protocol):
    """``zerogate.audit.AuditLog`` as the gate uses it: append, and is the writer healthy."""

    def append(self, kind: str, payload: Mapping[str, Any]) -> Future[int]: ...

    @property
    def healthy(self) -> bool: ...


class _Metrics:
    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            "gen_ai.server.request.duration", unit="s", description="GenAI server request time"
        )
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s", description="time to first token"
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="tokens per call"
        )
        self.calls = meter.create_counter(
            "zerogate.inference.calls", description="model calls by decision and refusal code"
        )


class _Call:
    """What the gate knows of one call while it runs."""

    __slots__ = (
        "call",
        "content",
        "denied_id",
        "model_span",
        "principal",
        "reservation",
        "span",
        "started",
        "verdict",
    )

    def __init__(self, call: ModelCall, span: Span, started: float) -> None:
        self.call = call
        self.span = span
        self.started = started
        self.principal: Principal | None = None
        self.verdict: Verdict | None = None
        self.reservation: Reservation | None = None
        self.model_span: Span | None = None
        self.content: Any = None
        self.denied_id: str | None = None


class _Settled:
    async def settle(self, outcome: CallOutcome) -> None:
        return None


class _Admitted:
    def __init__(self, gate: SpiffeGate, state: _Call) -> None:
        self._gate = gate
        self._state = state
        self._done = False

    async def settle(self, outcome: CallOutcome) -> None:
        if self._done:
            return
        self._done = True
        await self._gate._settle(self._state, outcome)


class SpiffeGate:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        authorizer: Authorizer,
        budgets: Budgets,
        runtime: RuntimeStatus,
        audit: AuditTarget,
        clock: Clock,
        tracer: Tracer | None = None,
        meter: Meter | None = None,
        providers: Mapping[str, str] | None = None,
        capture_content: bool = False,
    ) -> None:
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.budgets = budgets
        self.runtime = runtime
        self.audit = audit
        self.clock = clock
        self.tracer = tracer or trace.NoOpTracer()
        self.metrics = _Metrics(meter or NoOpMeter("zerogate.inference"))
        self.providers = dict(providers or {})
        self.capture_content = capture_content

    # --- the Gate protocol ----------------------------------------------------------------

    async def admit(self, request: Request, call: ModelCall) -> Admission:
        if call.operation == "models":
            # listing needs an identity; what it may see is visible_models' job
            setattr(request.state, _PRINCIPAL, self._authenticate_only(request))
            return _Settled()
        started = time.perf_counter()
        span = self.tracer.start_span(
            f"{call.operation} {call.model}",
            context=_PROPAGATOR.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes=self._request_attributes(call),
        )
        state = _Call(call, span, started)
        if self.capture_content:
            state.content = await _request_content(request)
        try:
            await self._admit(request, state)
        except Refusal as exc:
            if isinstance(exc, IdentityDeniedError):
                state.denied_id = exc.spiffe_id
            await self._refused(state, exc)
            raise
        except Exception as exc:  # a bug must not serve the call, nor leak a 500 trace
            log.exception("event=inference.gate_error model=%s", call.model)
            refusal = GateUnavailableError("the gate failed; refusing the call")
            await self._refused(state, refusal)
            raise refusal from exc
        state.model_span = self.tracer.start_span(
            "model", context=trace.set_span_in_context(span), kind=SpanKind.INTERNAL
        )
        return _Admitted(self, state)

    async def visible_models(self, request: Request, names: list[str]) -> list[str]:
        principal: Principal | None = getattr(request.state, _PRINCIPAL, None)
        if principal is None:
            principal = self._authenticate_only(request)
        now = self.clock.now()
        quarantined, _ = self.runtime.status(str(principal.spiffe_id))
        if quarantined:
            return []
        usage = self.budgets.usage(str(principal.spiffe_id))
        visible = []
        for name in names:
            for operation in ("embeddings", "chat"):
                probe = ModelCall(operation, name)
                input_ = policy_input(
                    principal,
                    probe,
                    input_tokens=0,
                    quarantined=False,
                    runtime_reasons=[],
                    usage=usage,
                    now=now,
                )
                if (await self.authorizer.decide(input_, now)).allowed:
                    visible.append(name)
                    break
        return visible

    # --- admit ----------------------------------------------------------------------------

    def _authenticate_only(self, request: Request) -> Principal:
        principal = self.authenticator.authenticate(request.scope, request.headers)
        quarantined, reasons = self.runtime.status(str(principal.spiffe_id))
        if quarantined:
            raise QuarantinedError(_quarantine_message(principal, reasons))
        return principal

    async def _admit(self, request: Request, state: _Call) -> None:
        call, span = state.call, state.span
        ctx = trace.set_span_in_context(span)
        child = self.tracer.start_span("authn", context=ctx)
        try:
            principal = self.authenticator.authenticate(request.scope, request.headers)
            child.set_attribute("zerogate.authn.method", principal.method)
        finally:
            child.end()
        state.principal = principal
        spiffe_id = str(principal.spiffe_id)
        span.set_attribute("zerogate.subject.spiffe_id", spiffe_id)

        quarantined, runtime_reasons = self.runtime.status(spiffe_id)
        now = self.clock.now()
        estimated_input = call.estimated_input_tokens
        input_ = policy_input(
            principal,
            call,
            input_tokens=estimated_input,
            quarantined=quarantined,
            runtime_reasons=runtime_reasons,
            usage=self.budgets.usage(spiffe_id),
            now=now,
        )
        child = self.tracer.start_span("authz", context=ctx)
        try:
            verdict = await self.authorizer.decide(input_, now)
            child.set_attributes(
                {
                    "zerogate.policy.revision": verdict.revision,
                    "zerogate.policy.allowed": verdict.allowed,
                }
            )
        finally:
            child.end()
        state.verdict = verdict
        if quarantined:
            # refused whatever a (custom) policy says: runtime containment wins
            raise QuarantinedError(
                _quarantine_message(principal, runtime_reasons),
                reasons=verdict.reasons or [_quarantine_message(principal, runtime_reasons)],
            )
        if not verdict.allowed:
            raise self.authorizer.refuse(verdict)
        state.reservation = self.budgets.reserve(
            spiffe_id, verdict.limits, estimated_input + (call.max_tokens or 0)
        )
        if not self.audit.healthy:
            raise AuditUnavailable("the audit log is not accepting records; refusing the call")

    async def _refused(self, state: _Call, exc: Refusal) -> None:
        """Audit (durably) and trace a refused call; a failed audit write becomes a 503."""
        latency = time.perf_counter() - state.started
        if state.reservation is not None:
            state.reservation.settle(0)
        payload = self._record(state, exc.http_status, latency, error=exc.code, reasons=exc.reasons)
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self.audit.append(AUDIT_KIND, payload)), AUDIT_WAIT_S
            )
        except (AuditError, TimeoutError) as audit_exc:
            log.error("event=inference.audit_failed error=%s", audit_exc)
            self._finish(state, exc.http_status, latency, error="audit_unavailable")
            raise AuditUnavailable(
                "the audit log refused the record of this call; refusing it"
            ) from audit_exc
        self._finish(state, exc.http_status, latency, error=exc.code)

    # --- settle ---------------------------------------------------------------------------

    async def _settle(self, state: _Call, outcome: CallOutcome) -> None:
        latency = time.perf_counter() - state.started
        if state.model_span is not None:
            if outcome.usage is not None:
                state.model_span.set_attribute(
                    "gen_ai.usage.output_tokens", outcome.usage.completion_tokens
                )
            state.model_span.end()
        if state.reservation is not None:
            if outcome.usage is not None:
                state.reservation.settle(outcome.usage.total_tokens)
            elif outcome.status != 499:  # a client that hung up keeps its reservation
                state.reservation.settle(0)
        payload = self._record(
            state, outcome.status, latency, error=outcome.error_code, outcome=outcome
        )
        try:
            future = self.audit.append(AUDIT_KIND, payload)
        except AuditError as exc:
            log.error("event=inference.audit_failed error=%s", exc)
            self._finish(state, 503, latency, error="audit_unavailable", outcome=outcome)
            if not state.call.stream:  # a streamed body is gone already
                raise AuditUnavailable(
                    "the audit log refused the record of this call; not returning it"
                ) from exc
            return
        future.add_done_callback(_log_audit_failure)
        self._finish(state, outcome.status, latency, error=outcome.error_code, outcome=outcome)

    # --- records, spans, metrics ----------------------------------------------------------

    def _request_attributes(self, call: ModelCall) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": call.operation,
            "gen_ai.provider.name": self.providers.get(call.model, "zerogate"),
            "gen_ai.request.model": call.model,
        }
        if call.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = call.max_tokens
        return attributes

    def _record(
        self,
        state: _Call,
        status: int,
        latency: float,
        *,
        error: str | None,
        reasons: list[str] | None = None,
        outcome: CallOutcome | None = None,
    ) -> dict[str, Any]:
        call, verdict = state.call, state.verdict
        usage = outcome.usage if outcome is not None else None
        ctx = state.span.get_span_context()
        record: dict[str, Any] = {
            "subject": (
                describe(state.principal)
                if state.principal
                else {"spiffe_id": state.denied_id, "method": "revoked"}
                if state.denied_id
                else None
            ),
            "model": call.model,
            "operation": call.operation,
            "stream": call.stream,
            "max_tokens": call.max_tokens,
            "decision": "allow" if reasons is None else "deny",
            "reasons": reasons if reasons is not None else [],
            "policy": (
                {"revision": verdict.revision, "decision_id": verdict.decision_id}
                if verdict is not None
                else None
            ),
            "tokens": {
                "input": usage.prompt_tokens if usage else 0,
                "output": usage.completion_tokens if usage else 0,
            },
            "latency_us": round(latency * 1e6),  # an integer keeps the canonical JSON fast
            "status": status,
            "error": error,
            "finish_reason": outcome.finish_reason if outcome is not None else None,
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
        }
        if self.capture_content:
            record["content"] = {"input": state.content}
        return record

    def _finish(
        self,
        state: _Call,
        status: int,
        latency: float,
        *,
        error: str | None,
        outcome: CallOutcome | None = None,
    ) -> None:
        call, span = state.call, state.span
        attrs: dict[str, Any] = {
            "gen_ai.response.model": call.model,
            "http.response.status_code": status,
        }
        usage = outcome.usage if outcome is not None else None
        if usage is not None:
            attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if outcome is not None and outcome.finish_reason is not None:
            attrs["gen_ai.response.finish_reasons"] = [outcome.finish_reason]
        if state.verdict is not None:
            attrs["zerogate.policy.revision"] = state.verdict.revision
        if error is not None:
            attrs["error.type"] = error
        span.set_attributes(attrs)
        if status >= 500:
            span.set_status(StatusCode.ERROR, error or str(status))
        if state.model_span is not None and state.model_span.is_recording():
            state.model_span.end()
        span.end()

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": call.operation,
            "gen_ai.provider.name": self.providers.get(call.model, "zerogate"),
            "gen_ai.request.model": call.model,
        }
        if error is not None:
            attributes["error.type"] = error
        self.metrics.duration.record(latency, attributes)
        if outcome is not None and outcome.time_to_first_token_s is not None:
            self.metrics.ttft.record(outcome.time_to_first_token_s, attributes)
        if usage is not None:
            self.metrics.tokens.record(
                usage.prompt_tokens, {**attributes, "gen_ai.token.type": "input"}
            )
            if call.operation == "chat":
                self.metrics.tokens.record(
                    usage.completion_tokens, {**attributes, "gen_ai.token.type": "output"}
                )
        allowed = state.reservation is not None
        self.metrics.calls.add(
            1,
            {
                "decision": "allow" if allowed else "deny",
                "code": "ok" if allowed and error is None else (error or "denied"),
                "gen_ai.operation.name": call.operation,
            },
        )


def _quarantine_message(principal: Principal, reasons: list[str]) -> str:
    suffix = f": {'; '.join(reasons)}" if reasons else ""
    return f"{principal.spiffe_id} is quarantined{suffix}"


async def _request_content(request: Request) -> Any:
    """What the caller sent to the model (``input`` / ``messages``), for ``capture_content``:
    FastAPI has read and cached the body already, so this costs no second read."""
    try:
        body = json_input.loads(await request.body())
    except json_input.JsonInputError:
        return None
    if not isinstance(body, dict):
        return None
    return body.get("messages", body.get("input"))


def _log_audit_failure(future: Future[int]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("event=inference.audit_failed error=%s", exc)
