"""Response: newly stored events -> correlate -> Rego ``data.zerogate.runtime.actions`` -> act.

For every new event (``EventIngestor.subscribe``) the ``Responder``:

1. correlates it to SPIFFE IDs (``runtime/correlate.py``) and records them on the event row;
2. asks the policy (``PolicyService.decide("zerogate/runtime/actions", input)``, input shape in
   ``rego/runtime/policy.rego``) for a list of actions;
3. runs each action: ``quarantine`` (``QuarantineService.add``: the gate and the Workload API
   refuse the ID at once), ``revoke`` (the entry is disabled so the Workload API stops serving
   it, and the SPIFFE ID goes on the identity deny list), ``alert`` (POST a JSON notification
   to ``runtime.alert_webhook``, retried with backoff, off the enforcement path), ``label`` /
   ``evict`` (Kubernetes, through ``runtime/kube.py`` when a cluster is configured; otherwise
   recorded as ``skipped``);
4. throttles: the same (rule, workload, action type, target) within ``throttle_s`` runs once
   (outcome ``throttled``);
5. audits every action and its outcome (kind ``runtime.action``: event id, rule, action,
   outcome done/failed/throttled/skipped/rejected, error, policy decision id and revision,
   trace id of the request that carried the event).

A policy error produces no action (and an audit record saying so): the event itself is already
stored and audited, so nothing is lost; an operator can replay it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import httpx

from identity.denylist import DenyList
from identity.entries import EntryRepository
from runtime.correlate import Correlator, MatchedIdentity
from runtime.errors import ActionError
from runtime.events import EventStore, StoreResult
from runtime.falco import Priority, jcs_safe, parse_alert
from runtime.ingest import NewEvent, workload_key
from runtime.quarantine import QuarantineService, log_audit_failure
from zerogate.audit import AuditSink
from zerogate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

AUDIT_KIND = "runtime.action"
POLICY_PATH = "zerogate/runtime/actions"
ACTION_TYPES = {"quarantine", "revoke", "alert", "label", "evict"}


class Decider(Protocol):
    """What the responder needs from policy.service.PolicyService."""

    def decide(self, path: str, input: Any = None, *, log: bool = True) -> Any: ...

    def log_decision(self, decision: Any, input: Any) -> None: ...


class PodActions(Protocol):
    """Kubernetes pod actions (runtime/kube.py)."""

    def label(self, namespace: str, pod: str, labels: Mapping[str, str]) -> None: ...

    def evict(self, namespace: str, pod: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    action: dict[str, Any]
    outcome: str  # done | failed | throttled | skipped | rejected | pending
    error: str | None = None


class WebhookAlerter:
    """POSTs alert notifications as JSON, retrying connection errors and 5xx/429 answers."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 5.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self._attempts = attempts
        self._backoff = backoff_s
        self._client = client or httpx.Client(timeout=timeout_s)

    def send(self, payload: Mapping[str, Any]) -> int:
        """Deliver; returns the attempt count. ActionError after the last failed attempt."""
        last = ""
        for attempt in range(1, self._attempts + 1):
            try:
                reply = self._client.post(self.url, json=dict(payload))
                if reply.status_code < 300:
                    return attempt
                last = f"HTTP {reply.status_code}"
                if reply.status_code < 500 and reply.status_code != 429:
                    break  # the receiver refused this notification: retrying will not help
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self._attempts:
                time.sleep(self._backoff * 2 ** (attempt - 1))
        raise ActionError(f"alert webhook {self.url} failed after {attempt} attempt(s): {last}")

    def close(self) -> None:
        self._client.close()


def _workload_key(event: NewEvent) -> str:
    return workload_key(event.alert)


class Responder:
    def __init__(
        self,
        *,
        store: EventStore,
        correlator: Correlator,
        policy: Decider,
        quarantine: QuarantineService,
        audit: AuditSink,
        entries: EntryRepository | None = None,
        denylist: DenyList | None = None,
        alerter: WebhookAlerter | None = None,
        pods: PodActions | None = None,
        clock: Clock = SYSTEM_CLOCK,
        throttle_s: float = 300.0,
        recent_window_s: float = 3600.0,
        recent_max: int = 20,
        policy_path: str = POLICY_PATH,
        backlog_max: int = 50_000,
        log_empty_decisions: bool = False,
    ) -> None:
        self._store = store
        self._correlator = correlator
        self._policy = policy
        self._quarantine = quarantine
        self._audit = audit
        self._entries = entries
        self._denylist = denylist
        self._alerter = alerter
        self._pods = pods
        self._clock = clock
        self._throttle = throttle_s
        self._recent = timedelta(seconds=recent_window_s)
        self._recent_max = recent_max
        self._path = policy_path
        self._last: dict[tuple[str, ...], float] = {}
        # most severe first, then arrival order; the stop mark sorts after every event
        self._queue: queue.PriorityQueue[tuple[int, int, NewEvent | None]] = queue.PriorityQueue()
        self._arrival = itertools.count()
        self._urgent_rules: frozenset[str] = frozenset()
        self._backlog_max = backlog_max
        self._log_empty = log_empty_decisions
        self.empty_decisions = 0  # decisions with no action (not decision-logged by default)
        self._counts = threading.Lock()
        self._waiting_low = 0  # queued events below _URGENT
        # queued urgent events per (rule, workload), and in all
        self._waiting_urgent: dict[tuple[str, str], int] = {}
        self._urgent_total = 0
        self.skipped = 0  # events whose response was skipped: the backlog was full
        self.coalesced = 0  # urgent events folded into a waiting one of their rule and workload
        self._thread: threading.Thread | None = None
        self._side = ThreadPoolExecutor(max_workers=2, thread_name_prefix="runtime-alert")
        self._listeners: list[Callable[[NewEvent, list[Outcome]], None]] = []
        self.handled = 0

    # wiring ------------------------------------------------------------------------------

    def on_events(self, events: list[NewEvent]) -> None:
        """EventIngestor listener: queue the events (never blocks ingestion).

        The queue is ordered by priority (Emergency first), then arrival: ingestion accepts
        events far faster than the policy can answer them (~400 events/s here), so under a
        flood of low-priority alerts a Critical one is handled next instead of after the
        backlog. Within one priority the order is arrival order. Rules in
        ``set_urgent_rules`` count as Critical.

        The backlog is bounded: at most ``backlog_max`` events below Critical wait; beyond
        that a new one's response is skipped (counted in ``skipped``, logged), so a long
        flood cannot grow the process's memory without bound. The event itself is already
        stored and audited. Critical and urgent events are answered for every rule and
        workload: once ``backlog_max`` of them wait, a new one whose rule and workload already
        have one waiting is folded into it (counted in ``coalesced``, logged); its actions
        would be throttled as that one's repeats. So a flood of Critical alerts from one pod
        is bounded too, and the first alert of any other rule or workload still gets in."""
        urgent = self._urgent_rules
        queued: list[tuple[int, NewEvent]] = []
        skipped = 0
        coalesced = 0
        with self._counts:  # once per batch: this runs on the ingestion writer's thread
            room = self._backlog_max - self._waiting_low
            waiting = self._waiting_urgent
            for event in events:
                level = int(event.alert.priority)
                if event.alert.rule in urgent:
                    level = max(level, _URGENT)
                if level < _URGENT:
                    if room <= 0:
                        skipped += 1
                        continue
                    room -= 1
                else:
                    key = (event.alert.rule, _workload_key(event))
                    if self._urgent_total >= self._backlog_max and waiting.get(key):
                        coalesced += 1
                        continue
                    waiting[key] = waiting.get(key, 0) + 1
                    self._urgent_total += 1
                queued.append((level, event))
            self._waiting_low = self._backlog_max - room
            self.skipped += skipped
            self.coalesced += coalesced
        for level, event in queued:
            self._queue.put((-level, next(self._arrival), event))
        if skipped:
            log.warning(
                "event=runtime.respond.backlog_full skipped=%d total_skipped=%d backlog_max=%d",
                skipped,
                self.skipped,
                self._backlog_max,
            )
        if coalesced:
            log.warning(
                "event=runtime.respond.urgent_coalesced coalesced=%d total_coalesced=%d "
                "backlog_max=%d",
                coalesced,
                self.coalesced,
                self._backlog_max,
            )

    def _done_urgent(self, key: tuple[str, str]) -> None:
        # the caller holds self._counts
        left = self._waiting_urgent.get(key, 0) - 1
        if left > 0:
            self._waiting_urgent[key] = left
        else:
            self._waiting_urgent.pop(key, None)
        self._urgent_total = max(0, self._urgent_total - 1)

    @property
    def urgent_rules(self) -> frozenset[str]:
        return self._urgent_rules

    def set_urgent_rules(self, rules: frozenset[str]) -> None:
        """Rules answered as if Critical whatever their priority: the shipped policy's
        ``data.runtime.revoke_rules`` (``open_runtime`` follows policy reloads), several of
        which Falco raises at Notice ("Terminal shell in container")."""
        self._urgent_rules = rules

    @property
    def backlog(self) -> int:
        """Events queued and not yet handled."""
        return self._queue.qsize()

    def on_handled(self, callback: Callable[[NewEvent, list[Outcome]], None]) -> None:
        self._listeners.append(callback)

    async def start(self) -> None:
        self.start_thread()

    def start_thread(self) -> None:
        if self._thread is None:
            self.warm_up()  # the first thing the thread does
            self._thread = threading.Thread(target=self._run, name="runtime-respond", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self.stop_thread()

    def stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put((_STOP_MARK, next(self._arrival), None))  # after what is queued
            self._thread.join(timeout=30)
            self._thread = None
        self._side.shutdown(wait=True)
        if self._alerter is not None:
            self._alerter.close()

    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def warm_up(self) -> None:
        """Queue a warm-up (see ``_warm``) ahead of every event below Critical; the thread's
        start queues one. Not needed after a policy change: the engine prepares the response
        policy's query before a new revision goes live (``RuntimeService.start``)."""
        self._queue.put((-_URGENT, next(self._arrival), None))

    def _warm(self) -> None:
        """Do now, on a made-up Debug alert, the read-only work whose first run is slow, so
        that the first real event does not pay it: the response policy's first evaluation
        (OPA prepares its query: ~55 ms of a 150 ms first event-to-enforcement here, against
        ~20 ms for the next ones), the correlator's read of the registration entries, the
        recent-events query. Nothing is logged to the decision log or audited; a failure is
        logged and ignored (the event path has its own error handling)."""
        started = time.perf_counter()
        try:
            alert = parse_alert(_WARM_UP_ALERT)
            event = NewEvent(alert, StoreResult("warm-up", "stored", 0, 0), "warm-up")
            entries = self._correlator.load()
            self._policy.decide(self._path, self.policy_input(event, []), log=False)
        except Exception as exc:
            log.warning("event=runtime.respond.warm_up_failed error=%s", exc)
            return
        log.info(
            "event=runtime.respond.warmed_up entries=%d ms=%.1f",
            entries,
            (time.perf_counter() - started) * 1000,
        )

    def _run(self) -> None:
        while True:
            key, _, event = self._queue.get()
            if event is None:
                if key != _STOP_MARK:
                    self._warm()
                    continue
                return
            with self._counts:
                if -key < _URGENT:
                    self._waiting_low -= 1
                else:
                    self._done_urgent((event.alert.rule, _workload_key(event)))
            try:
                outcomes = self.handle(event)
            except Exception:
                log.exception("event=runtime.respond.failed event_id=%s", event.result.event_id)
                continue
            for callback in self._listeners:
                try:
                    callback(event, outcomes)
                except Exception:
                    log.exception("event=runtime.respond.listener_failed")

    # the work ----------------------------------------------------------------------------

    def policy_input(self, event: NewEvent, identities: list[MatchedIdentity]) -> dict[str, Any]:
        a = event.alert
        recent: list[dict[str, Any]] = []
        if a.k8s_ns and a.k8s_pod:
            recent = self._store.recent_summaries(
                k8s_ns=a.k8s_ns,
                k8s_pod=a.k8s_pod,
                since=self._clock.now() - self._recent,
                limit=self._recent_max,
                exclude_row=event.result.row_id,
            )
        # jcs_safe: evt.time and other nanosecond integers exceed 2**53; the decision log (RFC 8785)
        # cannot hold them, so the policy sees them as decimal strings.
        return {
            "event": {
                "event_id": event.result.event_id,
                "rule": a.rule,
                "priority": a.priority.label,
                "severity": int(a.priority),
                "source": a.source,
                "hostname": a.hostname,
                "tags": a.tags,
                "time": a.time,
                "output_fields": jcs_safe(a.output_fields),
            },
            "workload": {
                "k8s_ns": a.k8s_ns,
                "k8s_pod": a.k8s_pod,
                "k8s_pod_uid": a.k8s_pod_uid,
                "container_id": a.container_id,
            },
            "identities": [i.to_json() for i in identities],
            "recent": recent,
        }

    def handle(self, event: NewEvent) -> list[Outcome]:
        identities = self._correlator.correlate(event.alert)
        base: dict[str, Any] = {
            "event_id": event.result.event_id,
            "rule": event.alert.rule,
            "priority": event.alert.priority.label,
            "workload": _workload_key(event),
            "identities": [i.spiffe_id for i in identities],
        }
        if event.trace_id:
            base["trace_id"] = event.trace_id
        try:
            input_ = self.policy_input(event, identities)
            decision = self._policy.decide(self._path, input_, log=False)
            result = getattr(decision, "result", None)
            actions = result if isinstance(result, list) else []
            # A decision that acts is decision-logged before its actions run (and each action's
            # record names it); one that does not is counted, and logged only with
            # runtime.log_empty_decisions. Under a flood nearly every event is such a
            # decision, and its record (the alert, the pod's recent events) cost more than
            # the evaluation. The event's own runtime.event record is written either way.
            if actions or self._log_empty:
                self._policy.log_decision(decision, input_)
            else:
                self.empty_decisions += 1
        except Exception as exc:
            log.error("event=runtime.respond.policy_failed error=%s", exc)
            if identities:
                self._store.set_identities(event.result.row_id, [i.spiffe_id for i in identities])
            self._audit_outcome(base, Outcome({"type": "none"}, "failed", f"policy: {exc}"))
            return []
        base["decision_id"] = getattr(decision, "decision_id", None)
        base["policy_revision"] = getattr(decision, "revision", None)
        outcomes = [self._run_action(event, dict(a) if isinstance(a, dict) else {"raw": a}, base)
                    for a in actions]  # fmt: skip
        if identities:  # bookkeeping after the enforcement, not before
            self._store.set_identities(event.result.row_id, [i.spiffe_id for i in identities])
        self.handled += 1
        return outcomes

    def _run_action(self, event: NewEvent, action: dict[str, Any], base: dict[str, Any]) -> Outcome:
        kind = action.get("type")
        if kind not in ACTION_TYPES:
            outcome = Outcome(action, "rejected", f"unknown action type {kind!r}")
            self._audit_outcome(base, outcome)
            return outcome
        target = str(action.get("spiffe_id") or action.get("pod") or "")
        key = (event.alert.rule, base["workload"], str(kind), target)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._throttle:
            outcome = Outcome(action, "throttled")
            self._audit_outcome(base, outcome)
            return outcome
        self._last[key] = now
        if len(self._last) > 10_000:  # forget windows that have passed
            self._last = {k: t for k, t in self._last.items() if now - t < self._throttle}
        if kind == "alert":
            if self._alerter is None:
                outcome = Outcome(action, "skipped", "runtime.alert_webhook is not configured")
                self._audit_outcome(base, outcome)
                return outcome
            self._side.submit(self._send_alert, event, action, dict(base))
            return Outcome(action, "pending")
        try:
            self._execute(event, action)
        except _Skip as skip:
            outcome = Outcome(action, "skipped", str(skip))
        except Exception as exc:
            log.error("event=runtime.action.failed type=%s error=%s", kind, exc)
            outcome = Outcome(action, "failed", str(exc))
        else:
            outcome = Outcome(action, "done")
        self._audit_outcome(base, outcome)
        return outcome

    def _execute(self, event: NewEvent, action: dict[str, Any]) -> None:
        kind = action["type"]
        reason = str(action.get("reason") or event.alert.rule)
        if kind == "quarantine":
            ttl = action.get("ttl_s")
            self._quarantine.add(
                str(action.get("spiffe_id", "")),
                reason=reason,
                ttl_s=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None,
                rule=event.alert.rule,
                event_id=event.result.event_id,
                created_by="policy",
                trace_id=event.trace_id,
                wait_audit=False,
            )
        elif kind == "revoke":
            if self._entries is None:
                raise _Skip("no entry repository wired")
            entry_id = str(action.get("entry_id", ""))
            entries = self._entries
            entries.update(entry_id, {"disabled": True}, actor="runtime")
            if self._denylist is not None:
                self._denylist.add(
                    "spiffe_id", str(action.get("spiffe_id", "")), reason=reason, actor="runtime"
                )
        elif kind in ("label", "evict"):
            if self._pods is None:
                raise _Skip("no Kubernetes cluster configured")
            ns, pod = str(action.get("namespace", "")), str(action.get("pod", ""))
            if kind == "label":
                self._pods.label(ns, pod, {"zerogate.io/quarantined": "true"})
            else:
                self._pods.evict(ns, pod)

    def _send_alert(self, event: NewEvent, action: dict[str, Any], base: dict[str, Any]) -> None:
        assert self._alerter is not None
        payload = {
            "source": "zerogate",
            "kind": "runtime.alert",
            "reason": action.get("reason"),
            "rule": event.alert.rule,
            "priority": event.alert.priority.label,
            "time": event.alert.time,
            "hostname": event.alert.hostname,
            "event_id": event.result.event_id,
            "workload": base["workload"],
            "identities": base["identities"],
            "output": event.alert.output,
        }
        try:
            attempts = self._alerter.send(payload)
            outcome = Outcome(action, "done", None)
            base = base | {"attempts": attempts}
        except Exception as exc:
            outcome = Outcome(action, "failed", str(exc))
        self._audit_outcome(base, outcome)

    def _audit_outcome(self, base: dict[str, Any], outcome: Outcome) -> None:
        payload = base | {"action": outcome.action, "outcome": outcome.outcome}
        if outcome.error:
            payload["error"] = outcome.error
        log.info(
            "event=runtime.action type=%s outcome=%s rule=%s",
            outcome.action.get("type"),
            outcome.outcome,
            base.get("rule"),
        )
        # not waited on: the next event's response must not queue behind this record's commit
        # (the chain order is the append order either way); a failure is logged
        self._audit.append(AUDIT_KIND, payload).add_done_callback(log_audit_failure)


_STOP_MARK = 1  # sorts after every event's -priority (0 .. -7)
_WARM_UP_ALERT: dict[str, Any] = {
    "time": "1970-01-01T00:00:00.000000000Z",
    "rule": "zerogate responder warm-up",
    "priority": "Debug",
    "source": "syscall",
    "hostname": "zerogate-warm-up",
    "output": "zerogate responder warm-up (never stored)",
    "output_fields": {"k8s.ns.name": "zerogate-warm-up", "k8s.pod.name": "zerogate-warm-up"},
}
_URGENT = int(Priority.CRITICAL)


class _Skip(Exception):
    pass
