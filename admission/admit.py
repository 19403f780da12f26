"""The admission decision: native Rego + Gatekeeper constraints + injection, under a deadline.

``Admitter.validate`` / ``Admitter.mutate`` take a raw AdmissionReview body and return the
AdmissionReview to send back (or raise ``ReviewError`` for a malformed one: HTTP 400).

- Native policy: ``data.zerogate.admission.decision`` (``{"deny": [...], "warn": [...]}``)
  evaluated with the whole AdmissionReview as input (``input.request``); every ``deny``
  message denies, every ``warn`` message is a warning.
- Gatekeeper: every matching constraint's violations; ``enforcementAction: deny`` denies,
  ``warn`` becomes a warning, ``dryrun`` is only recorded (audit + metrics).
- Denial: ``allowed: false``, ``status.code`` 403 and one line per violated rule naming the
  constraint (``[name] message``), as Gatekeeper's webhook answers.
- Deadline: evaluation runs in a worker thread; past ``timeout_s`` (or on an engine or audit
  error) the failure mode applies: ``deny`` with a message, or ``allow`` with a warning; both
  are audited. The caller never waits longer than the deadline. The evaluation pool has
  ``eval_workers`` threads (default ``eval_parallelism()``: one per CPU, 2 to 4): the engines
  run native code outside the GIL, so more threads than cores only queue on the engines'
  locks and the GIL (more CPU per review, not more reviews/s); a review still queued at its
  deadline is never evaluated.
- ``dryRun`` requests are evaluated like any other and change nothing outside the answer
  (nothing in zerogate has side effects on admission besides the audit record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from opentelemetry.metrics import Meter, NoOpMeter

from admission.gatekeeper import GatekeeperSet, eval_parallelism
from admission.mutate import DEFAULT_SOCKET, injection_patch
from admission.review import API_VERSION, AdmissionRequest, AdmissionResponse, parse_review
from policy.engine import Decision
from policy.errors import PolicyEvalError
from zerogate.audit import AuditSink

log = logging.getLogger(__name__)

AUDIT_KIND = "admission.review"
NATIVE_PATH = "zerogate/admission/decision"
NATIVE_NAME = "zerogate.admission"

NativeDecide = Callable[[str, Any], Decision]

__all__ = ["AUDIT_KIND", "Admitter", "Outcome"]


@dataclass(slots=True)
class Outcome:
    """What the policies said about one request."""

    denials: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dryrun: list[str] = field(default_factory=list)
    violations: list[dict[str, str]] = field(default_factory=list)
    revision: dict[str, str | None] = field(default_factory=dict)
    patch: list[dict[str, Any]] = field(default_factory=list)


class Admitter:
    """Answers AdmissionReviews. Thread-safe; the engines swap revisions atomically."""

    def __init__(
        self,
        *,
        native: NativeDecide | None,
        gatekeeper: GatekeeperSet | None,
        audit: AuditSink | None,
        validate_timeout_s: float = 3.0,
        mutate_timeout_s: float = 1.0,
        failure_mode: Literal["deny", "allow"] = "deny",
        socket_path: str = DEFAULT_SOCKET,
        meter: Meter | None = None,
        eval_workers: int | None = None,
    ) -> None:
        self.native = native
        self.gatekeeper = gatekeeper
        self.audit = audit
        self.validate_timeout_s = validate_timeout_s
        self.mutate_timeout_s = mutate_timeout_s
        self.failure_mode = failure_mode
        self.socket_path = socket_path
        workers = eval_workers or eval_parallelism()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="admission-eval")
        self._native_pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="admission-native"
        )
        meter = meter or NoOpMeter("zerogate.admission")
        # names as Gatekeeper's pkg/webhook/stats_reporter.go
        self._requests = meter.create_counter(
            "gatekeeper_validation_request_count", description="validation requests"
        )
        self._duration = meter.create_histogram(
            "gatekeeper_validation_request_duration_seconds",
            unit="s",
            description="validation request latency",
        )
        self._mutations = meter.create_counter(
            "gatekeeper_mutation_request_count", description="mutation requests"
        )
        self._mutation_duration = meter.create_histogram(
            "gatekeeper_mutation_request_duration_seconds",
            unit="s",
            description="mutation request latency",
        )
        self._violations = meter.create_counter(
            "zerogate_admission_violations",
            description="violations by constraint and enforcement action",
        )

    # --- policy evaluation (pure, runs in a worker thread) ---------------------------------

    def evaluate(self, req: AdmissionRequest) -> Outcome:
        """One engine call when the native policy is compiled into the Gatekeeper engine
        (``GatekeeperSet.review_all``); otherwise both engines answer at once: the native
        call runs on a pool thread while the Gatekeeper set evaluates on this one (the
        native engines release the GIL)."""
        out = Outcome()
        doc = {"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": req.raw}
        gatekeeper = self.gatekeeper
        decision: Decision | None = None
        if gatekeeper is not None and gatekeeper.native_revision is not None:
            violations, decision = gatekeeper.review_all(doc)
            if decision is None and self.native is not None:  # the engine was swapped
                decision = self.native(NATIVE_PATH, doc)
        else:
            pending: Future[Decision] | None = None
            if self.native is not None:
                pending = self._native_pool.submit(self.native, NATIVE_PATH, doc)
            try:
                violations = gatekeeper.review(req.raw)[0] if gatekeeper else []
            finally:
                decision = pending.result() if pending is not None else None
        if decision is not None:
            if not decision.defined:  # no native policy loaded: fail closed, never allow blind
                raise PolicyEvalError(f"data.{NATIVE_PATH.replace('/', '.')} is undefined")
            out.revision["native"] = decision.revision
            result = decision.result if isinstance(decision.result, Mapping) else {}
            for msg in _strings(result.get("deny")):
                out.denials.append(f"[{NATIVE_NAME}] {msg}")
                out.violations.append({"constraint": NATIVE_NAME, "action": "deny", "msg": msg})
            for msg in _strings(result.get("warn")):
                out.warnings.append(f"[{NATIVE_NAME}] {msg}")
                out.violations.append({"constraint": NATIVE_NAME, "action": "warn", "msg": msg})
        if self.gatekeeper is not None:
            out.revision["gatekeeper"] = self.gatekeeper.revision
        sinks = {"deny": out.denials, "warn": out.warnings, "dryrun": out.dryrun}
        for v in violations:
            action = v.constraint.enforcement_action
            sinks[action].append(v.describe())
            out.violations.append({"constraint": v.constraint.key, "action": action, "msg": v.msg})
        return out

    # --- the two endpoints ---------------------------------------------------------------------

    async def validate(self, body: bytes) -> dict[str, Any]:
        req = parse_review(body)
        start = time.perf_counter()
        response, outcome, error = await self._decide(req, self.evaluate, self.validate_timeout_s)
        status = "error" if error else ("allow" if response.allowed else "deny")
        self._requests.add(1, {"admission_status": status})
        self._duration.record(time.perf_counter() - start, {"admission_status": status})
        for v in outcome.violations:
            self._violations.add(
                1, {"constraint": v["constraint"], "enforcement_action": v["action"]}
            )
        return await self._finish(req, "validate", response, outcome, error)

    async def mutate(self, body: bytes) -> dict[str, Any]:
        req = parse_review(body)
        start = time.perf_counter()

        def patch(r: AdmissionRequest) -> Outcome:
            out = Outcome()
            if r.kind_name == "Pod" and r.group == "" and r.operation == "CREATE" and r.object:
                out.patch = injection_patch(r.object, socket_path=self.socket_path)
            return out

        response, outcome, error = await self._decide(req, patch, self.mutate_timeout_s)
        status = "error" if error else ("allow" if response.allowed else "deny")
        self._mutations.add(1, {"admission_status": status})
        self._mutation_duration.record(time.perf_counter() - start, {"admission_status": status})
        return await self._finish(req, "mutate", response, outcome, error)

    async def _decide(
        self, req: AdmissionRequest, run: Callable[[AdmissionRequest], Outcome], timeout: float
    ) -> tuple[AdmissionResponse, Outcome, str | None]:
        try:
            outcome = await asyncio.wait_for(
                asyncio.wrap_future(self._pool.submit(run, req)), timeout
            )
        except TimeoutError:
            return self._failure(req, f"policy evaluation exceeded its {timeout:g}s deadline")
        except Exception as exc:  # fail closed: any engine error takes the failure mode
            log.warning("event=admission.eval_error uid=%s error=%r", req.uid, str(exc))
            return self._failure(req, f"policy evaluation failed: {exc}")
        if outcome.denials:
            response = AdmissionResponse(
                req.uid,
                False,
                message="\n".join(outcome.denials),
                code=403,
                warnings=outcome.warnings,
            )
        else:
            response = AdmissionResponse(
                req.uid, True, warnings=outcome.warnings, patch=outcome.patch
            )
        return response, outcome, None

    def _failure(
        self, req: AdmissionRequest, reason: str
    ) -> tuple[AdmissionResponse, Outcome, str]:
        if self.failure_mode == "allow":
            response = AdmissionResponse(
                req.uid, True, warnings=[f"zerogate admission failed open: {reason}"]
            )
        else:
            response = AdmissionResponse(req.uid, False, message=f"zerogate: {reason}", code=403)
        return response, Outcome(), reason

    async def _finish(
        self,
        req: AdmissionRequest,
        endpoint: str,
        response: AdmissionResponse,
        outcome: Outcome,
        error: str | None,
    ) -> dict[str, Any]:
        if self.audit is not None:
            payload = {
                "endpoint": endpoint,
                "uid": req.uid,
                "kind": dict(req.kind),
                "namespace": req.namespace,
                "name": req.name,
                "operation": req.operation,
                "user": req.user,
                "dry_run": req.dry_run,
                "allowed": response.allowed,
                "violations": outcome.violations,
                "patched": bool(response.patch),
                "revision": outcome.revision,
                "error": error,
            }
            try:
                await asyncio.wrap_future(self.audit.append(AUDIT_KIND, payload))
            except Exception as exc:  # no unaudited admission: deny
                log.error("event=admission.audit_failed uid=%s error=%r", req.uid, str(exc))
                response = AdmissionResponse(
                    req.uid, False, message="zerogate: audit log unavailable", code=403
                )
        log.info(
            "event=admission.review endpoint=%s uid=%s kind=%s namespace=%s name=%s allowed=%s",
            endpoint,
            req.uid,
            req.kind_name,
            req.namespace,
            req.name,
            response.allowed,
        )
        return response.to_review()


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
