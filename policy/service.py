"""``PolicyService``: the one facade other subsystems call to get a decision.

    service = open_policy(settings, audit, telemetry=telemetry, clock=clock)
    decision = service.decide("zerogate/inference/decision", input, cache_key=(sid, model))
    if not decision.allowed: deny(decision.reasons)

``decide`` evaluates on one immutable revision (the engine swaps atomically), consults the
decision cache when the caller passes a key, and writes the decision to the audit log in
OPA's decision-log shape (kind ``policy.decision``) unless ``log=False``. Errors raise
``PolicyError`` subclasses: callers on a request path deny (fail closed). A failure to queue
the decision-log record is an error too (``PolicyEvalError``), so no decision goes unlogged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Hashable
from typing import Any

from opentelemetry.metrics import Meter, NoOpMeter

from policy.cache import DecisionCache
from policy.decision_log import BUNDLE_NAME, DECISION_KIND, decision_record, parse_mask
from policy.engine import Decision, PolicyEngine, create_engine, new_decision_id, normalize_path
from policy.errors import PolicyError, PolicyEvalError
from policy.store import PolicyStore
from zerogate.audit import AuditSink
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.errors import AuditError
from zerogate.telemetry import Telemetry

logger = logging.getLogger(__name__)


class PolicyService:
    """Decisions + the store behind them. Long-running part: the file watcher."""

    def __init__(
        self,
        store: PolicyStore,
        *,
        cache: DecisionCache,
        audit: AuditSink | None,
        clock: Clock = SYSTEM_CLOCK,
        decision_log_mask: list[str] | None = None,
        meter: Meter | None = None,
        watch: bool = False,
        bundle_name: str = BUNDLE_NAME,
    ) -> None:
        self.store = store
        self.cache = cache
        self._audit = audit
        self._clock = clock
        self._mask = parse_mask(decision_log_mask or [])
        self._watch = watch
        self.bundle_name = bundle_name
        meter = meter or NoOpMeter("zerogate.policy")
        self._decisions = meter.create_counter(
            "zerogate_policy_decisions", description="policy decisions by path and outcome"
        )
        self._cache_hits = meter.create_counter(
            "zerogate_policy_cache_hits", description="decision cache hits"
        )
        self._cache_misses = meter.create_counter(
            "zerogate_policy_cache_misses", description="decision cache misses"
        )
        self._reload_failures = meter.create_counter(
            "zerogate_policy_reload_failures", description="rejected policy revisions"
        )
        self._eval_time = meter.create_histogram(
            "zerogate_policy_eval_seconds", unit="s", description="engine evaluation time"
        )
        store.on_change(lambda snapshot: self.cache.clear())
        store.on_failure(lambda exc: self._reload_failures.add(1))

    # --- the facade -----------------------------------------------------------------------

    @property
    def engine(self) -> PolicyEngine:
        return self.store.engine

    @property
    def revision(self) -> str | None:
        return self.store.revision

    def prepare(self, *paths: str) -> None:
        """Have the engine ready ``paths`` (the enforcement points' hot paths) now and before
        every later revision goes live, so that no first decision after a start or a reload
        pays the query's preparation (``PolicyEngine.prepare``)."""
        self.engine.prepare(paths)

    def decide(
        self,
        path: str,
        input: Any = None,
        *,
        cache_key: Hashable | None = None,
        log: bool = True,
    ) -> Decision:
        """Evaluate ``data.<path>`` with ``input``. Raises PolicyError: deny on it."""
        norm = _joined(path)
        decision: Decision | None = None
        if cache_key is not None and self.cache.enabled:
            revision = self.engine.revision
            start = time.perf_counter_ns()
            hit = self.cache.get(revision, norm, cache_key) if revision else None
            if hit is not None and revision is not None:
                self._cache_hits.add(1, {"path": norm})
                decision = Decision(
                    result=hit[1],
                    revision=revision,
                    decision_id=new_decision_id(),
                    eval_ns=time.perf_counter_ns() - start,
                    defined=hit[0],
                    cached=True,
                    path=norm,
                )
            else:
                self._cache_misses.add(1, {"path": norm})
        if decision is None:
            decision = self.engine.evaluate(norm, input)
            self._eval_time.record(decision.eval_ns / 1e9, {"path": norm})
            if cache_key is not None:
                self.cache.put(
                    decision.revision, norm, cache_key, decision.defined, decision.result
                )
        self._decisions.add(
            1,
            {
                "path": norm,
                "allowed": str(decision.allowed).lower(),
                "cached": str(decision.cached).lower(),
            },
        )
        if log:
            self.log_decision(decision, input)
        return decision

    async def adecide(
        self,
        path: str,
        input: Any = None,
        *,
        cache_key: Hashable | None = None,
        log: bool = True,
    ) -> Decision:
        """``decide`` for async callers: a remote engine runs in a worker thread."""
        if self.engine.name == "opa-server":
            return await asyncio.to_thread(self.decide, path, input, cache_key=cache_key, log=log)
        return self.decide(path, input, cache_key=cache_key, log=log)

    def reload(self) -> str:
        """Re-read the policy directory (API). Raises PolicyCompileError."""
        return self.store.reload(reason="reload")

    def reload_from_signal(self) -> str | None:
        """For a SIGHUP handler: reload, never raise. A bad revision is already logged,
        counted and audited by the store (and the old one keeps serving); returns the active
        revision, or None when the reload failed."""
        try:
            return self.store.reload(reason="sighup")
        except PolicyError:
            return None
        except Exception:
            logger.exception("event=policy.reload_error reason=sighup")
            return None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._watch:
            self.store.start_watching()

    async def stop(self) -> None:
        self.store.stop_watching()

    def ready(self) -> bool:
        return self.store.revision is not None

    def close(self) -> None:
        self.store.stop_watching()
        self.engine.close()

    # --- internals ----------------------------------------------------------------------

    def log_decision(self, decision: Decision, input: Any) -> None:
        """Write ``decision`` to the decision log (for callers that decide with ``log=False``
        and record only some decisions). Raises PolicyEvalError when the log refuses it."""
        if self._audit is None:
            return
        record = decision_record(
            decision,
            input,
            timestamp=self._clock.now(),
            mask=self._mask,
            bundle=self.bundle_name,
            engine=self.engine.name,
        )
        try:
            self._audit.append(DECISION_KIND, record)
        except AuditError as exc:
            raise PolicyEvalError(f"decision log refused the record: {exc}") from exc


@functools.lru_cache(maxsize=4096)
def _joined(path: str) -> str:
    return "/".join(normalize_path(path))


def open_policy(
    settings: Settings,
    audit: AuditSink | None,
    *,
    telemetry: Telemetry | None = None,
    clock: Clock = SYSTEM_CLOCK,
    engine: PolicyEngine | None = None,
    poll_interval_s: float = 1.0,
) -> PolicyService:
    """Build the configured engine, load ``settings.rego_dir`` and return the service.

    Raises PolicyCompileError (with locations) when the shipped/configured policies are bad:
    zerogate refuses to start rather than serve without policy.
    """
    policy = settings.policy
    chosen = engine or create_engine(policy)
    store = PolicyStore(
        chosen, settings.rego_dir, audit=audit, clock=clock, poll_interval_s=poll_interval_s
    )
    service = PolicyService(
        store,
        cache=DecisionCache(policy.decision_cache_size),
        audit=audit,
        clock=clock,
        decision_log_mask=policy.decision_log_mask,
        meter=telemetry.meter("zerogate.policy") if telemetry else None,
        watch=policy.watch,
    )
    store.reload(reason="start")
    return service
