"""Correlation and response with the real identity entries, the real OPA policy from rego/,
a real loopback webhook, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_corpus import corpus_alerts, docs_raw
from runtime_receiver import receiver

from identity.denylist import DenyList
from identity.entries import Entry, EntryRepository, EntrySpec, Selector
from identity.spiffeid import SpiffeId
from policy.service import PolicyService, open_policy
from runtime.actions import Outcome, Responder, WebhookAlerter
from runtime.correlate import Correlator, match_entry, workload_selectors
from runtime.errors import ActionError
from runtime.events import EventStore
from runtime.falco import parse_alert
from runtime.ingest import EventIngestor, NewEvent
from runtime.quarantine import QuarantineService
from runtime.service import urgent_rules
from zerogate.audit import AuditLog, tail
from zerogate.clock import SYSTEM_CLOCK
from zerogate.config import Settings
from zerogate.store import Database

REPO = Path(__file__).resolve().parents[2]
KUBECON = "spiffe://zerogate.internal/ns/default/pod/kubecon"


def _entry(entries: EntryRepository, spiffe_id: str, *selectors: str) -> Entry:
    return entries.create(
        EntrySpec(
            spiffe_id=SpiffeId.parse(spiffe_id),
            selectors=tuple(Selector.parse(s) for s in selectors),
        )
    )


@pytest.fixture(scope="module")
def policy() -> PolicyService:
    settings = Settings(policy={"rego_dir": REPO / "rego", "watch": False})
    return open_policy(settings, None)


@pytest.fixture
def entries(database: Database, runtime_audit: AuditLog) -> EntryRepository:
    return EntryRepository(database, clock=SYSTEM_CLOCK, audit=runtime_audit)


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (("k8s:ns:default", "k8s:pod-name:kubecon"), "exact"),
        (("k8s:ns:default", "k8s:pod-name:kubecon", "k8s:sa:default"), "pod"),
        (("k8s:ns:default", "k8s:sa:default"), "namespace"),
        (("k8s:ns:other", "k8s:pod-name:kubecon"), None),  # contradicts
        (("k8s:sa:default",), None),  # nothing known agrees
        (("unix:uid:0",), None),  # in a container: no unix selectors derived
    ],
)
def test_match_strength(selectors: tuple[str, ...], expected: str | None) -> None:
    alert = parse_alert(docs_raw())  # default/kubecon, container ee97d9c4186f
    entry = Entry(
        id="e",
        spiffe_id=SpiffeId.parse(KUBECON),
        selectors=tuple(Selector.parse(s) for s in selectors),
    )
    assert match_entry(entry, workload_selectors(alert)) == expected


def test_host_process_maps_to_unix_uid() -> None:
    raw = docs_raw()
    raw["output_fields"] = {"user.uid": 1000, "container.id": "host", "proc.name": "nvidia-smi"}
    assert workload_selectors(parse_alert(raw)) == {"unix:uid": "1000"}


def _responder(
    database: Database,
    audit: AuditLog,
    entries: EntryRepository,
    policy: PolicyService,
    quarantine: QuarantineService,
    alert_url: str | None,
    **options: Any,
) -> Responder:
    return Responder(
        store=EventStore(database),
        correlator=Correlator(entries),
        policy=policy,
        quarantine=quarantine,
        audit=audit,
        entries=entries,
        denylist=DenyList(database, clock=SYSTEM_CLOCK, audit=audit),
        alerter=WebhookAlerter(alert_url, backoff_s=0.01) if alert_url else None,
        **options,
    )


@pytest.fixture
def wired(
    database: Database,
    runtime_audit: AuditLog,
    entries: EntryRepository,
    policy: PolicyService,
    ingestor: EventIngestor,
) -> Iterator[dict[str, Any]]:
    quarantine = QuarantineService(database, audit=runtime_audit)
    with receiver(fail_first=2) as hook:
        responder = _responder(database, runtime_audit, entries, policy, quarantine, hook.url)
        done: list[tuple[NewEvent, list[Outcome]]] = []
        responder.on_handled(lambda e, o: done.append((e, o)))
        ingestor.subscribe(responder.on_events)
        responder.start_thread()
        try:
            yield {"q": quarantine, "hook": hook, "responder": responder, "done": done}
        finally:
            responder.stop_thread()


def _wait(predicate: Any, timeout: float = 15) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_critical_shell_in_pod_quarantines_revokes_alerts_and_audits(
    wired: dict[str, Any],
    entries: EntryRepository,
    ingestor: EventIngestor,
    database: Database,
    runtime_audit: AuditLog,
) -> None:
    entry = _entry(entries, KUBECON, "k8s:ns:default", "k8s:pod-name:kubecon")
    other = _entry(
        entries,
        "spiffe://zerogate.internal/ns/default/pod/web",
        "k8s:ns:default",
        "k8s:pod-name:web",
    )
    alert = parse_alert(docs_raw())  # "Terminal shell in container", Critical, default/kubecon
    ingestor.submit([alert], "http", trace_id="0af7651916cd43dd8448eb211c80319c").result(30)
    _wait(lambda: len(wired["done"]) == 1)
    record = wired["q"].is_quarantined(KUBECON)
    assert record is not None and record.reason == "Terminal shell in container"
    assert record.expires_at - record.created_at == __import__("datetime").timedelta(hours=1)
    assert wired["q"].is_quarantined(str(other.spiffe_id)) is None
    assert entries.get(entry.id).disabled is True
    assert entries.get(other.id).disabled is False
    hook = wired["hook"]
    assert hook.got.wait(10)
    assert hook.attempts == 3  # two 503s, then delivered
    assert hook.received[0]["rule"] == "Terminal shell in container"
    assert hook.received[0]["identities"] == [KUBECON]

    def actions() -> list[dict[str, Any]]:
        runtime_audit.flush()
        return [r.payload for r in tail(database, n=200, kind="runtime.action")]

    _wait(lambda: len(actions()) == 3)
    by_type = {p["action"]["type"]: p for p in actions()}
    assert {t: p["outcome"] for t, p in by_type.items()} == {
        "quarantine": "done",
        "revoke": "done",
        "alert": "done",
    }
    assert all(p["trace_id"] == "0af7651916cd43dd8448eb211c80319c" for p in by_type.values())
    assert all(p["event_id"] == alert.event_id for p in by_type.values())
    stored = EventStore(database).get(alert.event_id)
    assert stored is not None and stored.spiffe_ids == [KUBECON]
    # the chain holds the event before any action taken on it
    chain = [(r.kind, r.payload.get("event_id")) for r in tail(database, n=500)]
    first_action = chain.index(("runtime.action", alert.event_id))
    assert chain.index(("runtime.event", alert.event_id)) < first_action


def test_same_rule_same_workload_is_throttled(
    wired: dict[str, Any], entries: EntryRepository, ingestor: EventIngestor
) -> None:
    _entry(entries, KUBECON, "k8s:ns:default", "k8s:pod-name:kubecon")
    first = docs_raw()
    second = docs_raw()
    second["output_fields"]["proc.cmdline"] = "sh -c id"  # a different event, same rule/pod
    ingestor.ingest([parse_alert(first)], "http")
    ingestor.ingest([parse_alert(second)], "http")
    _wait(lambda: len(wired["done"]) == 2)
    assert {o.outcome for o in wired["done"][1][1]} == {"throttled"}


def test_whole_corpus_is_correlated_none_dropped(
    wired: dict[str, Any], entries: EntryRepository, ingestor: EventIngestor
) -> None:
    expected = {
        KUBECON: ("k8s:ns:default", "k8s:pod-name:kubecon"),
        "spiffe://zerogate.internal/ns/kubernetes-ns/x": ("k8s:pod-uid:aadadjh763wiuh",),
        "spiffe://zerogate.internal/ns/default/pod/debug": ("k8s:ns:default", "k8s:pod-name:debug"),
    }
    for spiffe_id, selectors in expected.items():
        _entry(entries, spiffe_id, *selectors)
    alerts = corpus_alerts()
    ingestor.ingest(alerts, "replay")
    _wait(lambda: len(wired["done"]) == len(alerts))
    correlator = wired["responder"]._correlator
    assert (correlator.matched, correlator.unmatched) == (3, len(alerts) - 3)
    rows = ingestor.store.recent(limit=100)
    assert len(rows) == len(alerts)  # unmatched events are kept
    matched = {i for row in rows for i in (row.spiffe_ids or [])}
    assert matched == set(expected)


def test_webhook_gives_up_after_retries() -> None:
    with receiver(fail_first=100) as hook:
        alerter = WebhookAlerter(hook.url, attempts=3, backoff_s=0.01)
        with pytest.raises(ActionError, match="after 3 attempt"):
            alerter.send({"x": 1})
        assert hook.attempts == 3


async def test_policy_authorizer_allows_only_falco(policy: PolicyService) -> None:
    from runtime.api import policy_authorizer

    authorize = policy_authorizer(policy, "zerogate.internal")
    assert await authorize("spiffe://zerogate.internal/falco") is True
    assert await authorize("spiffe://zerogate.internal/ns/ml/sa/model") is False
    assert await authorize("spiffe://other.org/falco") is False


def test_correlator_follows_entry_changes_without_rereading(entries: EntryRepository) -> None:
    correlator = Correlator(entries)
    alert = parse_alert(docs_raw())
    assert correlator.correlate(alert) == []  # cache built (empty)
    entry = _entry(entries, KUBECON, "k8s:ns:default", "k8s:pod-name:kubecon")
    assert [m.spiffe_id for m in correlator.correlate(alert)] == [KUBECON]
    entries.update(entry.id, {"disabled": True})
    assert correlator.correlate(alert) == []
    assert (correlator.matched, correlator.unmatched) == (1, 2)


def _noisy(n: int, priority: str, rule: str = "Some noisy rule") -> dict[str, Any]:
    raw = docs_raw()
    raw["priority"] = priority
    raw["rule"] = rule
    raw["output_fields"]["evt.num"] = n
    return raw


Queued = tuple[Responder, Callable[[list[dict[str, Any]]], None], list[str]]


@pytest.fixture
def queued(
    database: Database,
    runtime_audit: AuditLog,
    entries: EntryRepository,
    policy: PolicyService,
    ingestor: EventIngestor,
) -> Callable[..., Queued]:
    """A responder not started yet, a function that stores alerts and queues them for it, and
    the rules of the events it handled, in order."""

    def build(backlog_max: int = 50_000) -> Queued:
        responder = Responder(
            store=EventStore(database),
            correlator=Correlator(entries),
            policy=policy,
            quarantine=QuarantineService(database, audit=runtime_audit),
            audit=runtime_audit,
            backlog_max=backlog_max,
        )
        order: list[str] = []
        responder.on_handled(lambda e, _o: order.append(e.alert.rule))

        def queue(raws: list[dict[str, Any]]) -> None:
            alerts = [parse_alert(r) for r in raws]
            results = ingestor.ingest(alerts, "http")
            responder.on_events(
                [NewEvent(a, r, "http") for a, r in zip(alerts, results, strict=True)]
            )

        return responder, queue, order

    return build


def test_most_severe_event_is_handled_first_then_arrival_order(
    queued: Callable[..., Queued], policy: PolicyService
) -> None:
    # a backlog of Notice events, then a Critical one and a Notice one whose rule the policy
    # revokes on: those two are answered next (as Critical, in arrival order), then the rest
    responder, queue, order = queued()
    responder.set_urgent_rules(urgent_rules(policy.store.snapshot.data))
    assert "Terminal shell in container" in responder.urgent_rules
    raws = [_noisy(i, "Notice", f"notice-{i}") for i in range(5)]
    raws.insert(2, _noisy(98, "Notice", "Terminal shell in container"))
    raws.insert(4, _noisy(99, "Critical", "the critical one"))
    queue(raws)
    assert responder.backlog == 7
    responder.start_thread()
    try:
        _wait(lambda: len(order) == 7)
    finally:
        responder.stop_thread()
    assert order == [
        "Terminal shell in container",
        "the critical one",
        *(f"notice-{i}" for i in range(5)),
    ]
    assert responder.backlog == 0


def test_recent_events_of_the_workload_for_the_policy(ingestor: EventIngestor) -> None:
    from datetime import timedelta

    store = ingestor.store
    alerts = [parse_alert(_noisy(i, "Warning" if i % 2 else "Notice")) for i in range(6)]
    other = docs_raw()
    other["output_fields"]["k8s.pod.name"] = "elsewhere"
    results = ingestor.ingest([*alerts, parse_alert(other)], "http")
    since = SYSTEM_CLOCK.now() - timedelta(hours=1)
    recent = store.recent_summaries(
        k8s_ns="default", k8s_pod="kubecon", since=since, limit=4, exclude_row=results[5].row_id
    )
    # newest first, this event excluded, only this workload, at most `limit` earlier events
    assert [r["event_id"] for r in recent] == [results[i].event_id for i in (4, 3, 2, 1)]
    assert recent[0] == {
        "event_id": results[4].event_id,
        "rule": "Some noisy rule",
        "priority": "Notice",
        "severity": 2,
        "time": alerts[4].timestamp.isoformat().replace("+00:00", "Z"),
    }
    assert recent[1]["priority"] == "Warning" and recent[1]["severity"] == 3
    later = SYSTEM_CLOCK.now() + timedelta(seconds=5)
    assert store.recent_summaries(k8s_ns="default", k8s_pod="kubecon", since=later) == []


def test_backlog_below_critical_is_bounded_critical_never_skipped(
    queued: Callable[..., Queued],
) -> None:
    responder, queue, order = queued(backlog_max=3)
    responder.set_urgent_rules(frozenset({"Terminal shell in container"}))
    queue(
        [
            *(_noisy(i, "Notice", f"notice-{i}") for i in range(5)),
            _noisy(50, "Critical", "critical"),
            _noisy(51, "Notice", "Terminal shell in container"),
        ]
    )
    assert responder.skipped == 2  # notice-3 and notice-4: three below Critical already wait
    assert responder.backlog == 5
    responder.start_thread()
    try:
        _wait(lambda: len(order) == 5)
        assert order == [
            "critical",
            "Terminal shell in container",
            "notice-0",
            "notice-1",
            "notice-2",
        ]
        queue([_noisy(60, "Notice", "after the drain")])  # room again
        _wait(lambda: len(order) == 6)
    finally:
        responder.stop_thread()
    assert responder.skipped == 2


def test_a_flood_of_critical_alerts_is_bounded_per_rule_and_workload(
    queued: Callable[..., Queued],
) -> None:
    """Critical events are never skipped for a rule and workload with nothing waiting; once
    ``backlog_max`` of them wait, one whose rule and workload already have one waiting is
    folded into it, so a Critical flood from one pod cannot grow the backlog without bound."""
    responder, queue, order = queued(backlog_max=2)
    flood = [_noisy(i, "Critical", "miner") for i in range(6)]  # all default/kubecon
    elsewhere = _noisy(100, "Critical", "miner")
    elsewhere["output_fields"]["k8s.pod.name"] = "other-pod"
    other_rule = _noisy(101, "Critical", "another rule")
    queue([*flood, elsewhere, other_rule])
    # two of the flood fill the backlog; four more of the same rule and pod are folded into
    # them; the other pod's and the other rule's first alerts still get in
    assert (responder.backlog, responder.coalesced, responder.skipped) == (4, 4, 0)
    responder.start_thread()
    try:
        _wait(lambda: len(order) == 4)
        assert sorted(order) == ["another rule", "miner", "miner", "miner"]
        queue([_noisy(200, "Critical", "miner")])  # drained: room again
        _wait(lambda: len(order) == 5)
    finally:
        responder.stop_thread()
    assert responder.coalesced == 4


class _Recording:
    """The real policy service, recording each ``decide`` (path, input, log)."""

    def __init__(self, policy: PolicyService, fail: bool = False) -> None:
        self.policy = policy
        self.fail = fail
        self.calls: list[tuple[str, Any, bool]] = []

    def decide(self, path: str, input: Any = None, *, log: bool = True) -> Any:
        self.calls.append((path, input, log))
        if self.fail:
            raise RuntimeError("policy down")
        return self.policy.decide(path, input, log=log)

    def log_decision(self, decision: Any, input: Any) -> None:
        self.policy.log_decision(decision, input)


@pytest.mark.parametrize("fail", [False, True])
def test_responder_warms_up_before_the_first_event(
    database: Database,
    runtime_audit: AuditLog,
    entries: EntryRepository,
    policy: PolicyService,
    fail: bool,
) -> None:
    """At start (``start_thread`` queues a ``warm_up``, which can also be asked for) the
    responder runs the response policy on a made-up Debug alert and reads the entries, so
    the first real event does not pay for them. Nothing is stored, audited or acted on; a
    failing warm-up is logged and the responder keeps running."""
    entries.create(
        EntrySpec(spiffe_id=SpiffeId.parse(KUBECON), selectors=(Selector.parse("k8s:ns:x"),))
    )
    recording = _Recording(policy, fail=fail)
    correlator = Correlator(entries)
    responder = Responder(
        store=EventStore(database),
        correlator=correlator,
        policy=recording,
        quarantine=QuarantineService(database, audit=runtime_audit),
        audit=runtime_audit,
    )
    runtime_audit.flush()
    before = len(tail(database, n=1000))
    responder.start_thread()
    try:
        _wait(lambda: len(recording.calls) == 1)
        path, input_, logged = recording.calls[0]
        assert (path, logged) == ("zerogate/runtime/actions", False)
        assert input_["event"]["priority"] == "Debug" and input_["identities"] == []
        assert correlator.load() == 1 and (correlator.matched, correlator.unmatched) == (0, 0)
        responder.warm_up()
        _wait(lambda: len(recording.calls) == 2)
        assert responder.handled == 0
    finally:
        responder.stop_thread()
    runtime_audit.flush()
    assert len(tail(database, n=1000)) == before
    assert EventStore(database).count() == 0


def test_correlator_sees_entries_another_process_wrote(
    database: Database, entries: EntryRepository, runtime_audit: AuditLog
) -> None:
    """``zerogate entry create`` beside the server, or another replica, writes entries this
    process is not told about: a workload's alert right after its entry was created still
    matches it, and a removal is seen once ``check_s`` has passed (read in the background)."""
    other = EntryRepository(database, clock=SYSTEM_CLOCK, audit=runtime_audit)  # the CLI
    correlator = Correlator(entries, check_s=0.05, miss_check_s=0)
    assert correlator.load() == 0
    alert = parse_alert(docs_raw())  # default/kubecon
    assert correlator.correlate(alert) == []
    created = other.create(
        EntrySpec(
            spiffe_id=SpiffeId.parse(KUBECON),
            selectors=(Selector.parse("k8s:ns:default"), Selector.parse("k8s:pod-name:kubecon")),
        )
    )
    assert [m.spiffe_id for m in correlator.correlate(alert)] == [KUBECON]  # at once
    other.delete(created.id)
    # a periodic check finds the removal and reads the entries again in the background: the
    # alerts meanwhile use the copy they have
    time.sleep(0.06)
    _wait(lambda: correlator.correlate(alert) == [], timeout=5)


def test_an_alert_that_finds_the_copy_stale_waits_for_the_new_read(
    database: Database, entries: EntryRepository, runtime_audit: AuditLog
) -> None:
    """The periodic check finds the version moved and starts a read in the background; the
    same alert then matches nothing and must not answer from the old copy (the end-to-end
    flow: an entry created by the CLI, then its workload's first alert)."""
    other = EntryRepository(database, clock=SYSTEM_CLOCK, audit=runtime_audit)
    correlator = Correlator(entries, check_s=0, miss_check_s=60)
    assert correlator.load() == 0
    other.create(
        EntrySpec(
            spiffe_id=SpiffeId.parse(KUBECON),
            selectors=(Selector.parse("k8s:ns:default"), Selector.parse("k8s:pod-name:kubecon")),
        )
    )
    alert = parse_alert(docs_raw())  # default/kubecon
    assert [m.spiffe_id for m in correlator.correlate(alert)] == [KUBECON]


@pytest.mark.parametrize("log_empty", [False, True], ids=["default", "log_empty_decisions"])
def test_decisions_that_act_are_logged_empty_ones_counted(
    database: Database,
    runtime_audit: AuditLog,
    entries: EntryRepository,
    ingestor: EventIngestor,
    log_empty: bool,
) -> None:
    """A response decision that yields actions is in the decision log, and its actions'
    records name it; one that yields none (here: a Notice alert from a pod without an
    identity) is only counted, unless runtime.log_empty_decisions asks for its record too.
    Each event's runtime.event record is there either way."""
    settings = Settings(policy={"rego_dir": REPO / "rego", "watch": False})
    policy = open_policy(settings, runtime_audit)
    try:
        quarantine = QuarantineService(database, audit=runtime_audit)
        responder = _responder(
            database,
            runtime_audit,
            entries,
            policy,
            quarantine,
            None,
            log_empty_decisions=log_empty,
        )
        _entry(entries, KUBECON, "k8s:ns:default", "k8s:pod-name:kubecon")
        acting = parse_alert(docs_raw())  # Critical shell in default/kubecon: it has an entry
        quiet_raw = _noisy(1, "Notice")
        quiet_raw["output_fields"]["k8s.pod.name"] = "no-entry"
        quiet = parse_alert(quiet_raw)
        stored = ingestor.ingest([acting, quiet], "http")
        outcomes = responder.handle(NewEvent(acting, stored[0], "http"))
        # quarantine and revoke done; alert skipped (no webhook configured here)
        assert {o.action["type"]: o.outcome for o in outcomes}["quarantine"] == "done"
        assert responder.handle(NewEvent(quiet, stored[1], "http")) == []
        runtime_audit.flush()
        decisions = {
            r.payload["input"]["event"]["event_id"]: r.payload
            for r in tail(database, n=500, kind="policy.decision")
            if r.payload.get("path") == "zerogate/runtime/actions"
        }
        expected = {acting.event_id, quiet.event_id} if log_empty else {acting.event_id}
        assert set(decisions) == expected
        assert responder.empty_decisions == (0 if log_empty else 1)
        acted = decisions[acting.event_id]["decision_id"]
        action_records = [r.payload for r in tail(database, n=500, kind="runtime.action")]
        assert action_records and {p["decision_id"] for p in action_records} == {acted}
        events = {r.payload["event_id"] for r in tail(database, n=500, kind="runtime.event")}
        assert {acting.event_id, quiet.event_id} <= events
    finally:
        policy.close()


def test_recent_summaries_follow_rows_that_reuse_a_pruned_id(ingestor: EventIngestor) -> None:
    """Summaries are kept per stored row between calls; a row id that comes back after the
    newest rows were pruned (SQLite restarts at max(id)+1) carries its new event, not the
    summary of the one that had it before."""
    from datetime import timedelta

    store = ingestor.store
    since = SYSTEM_CLOCK.now() - timedelta(hours=1)
    first = ingestor.ingest(
        [parse_alert(_noisy(i, "Notice", "Old rule")) for i in range(3)], "http"
    )
    before = store.recent_summaries(k8s_ns="default", k8s_pod="kubecon", since=since)
    assert {r["rule"] for r in before} == {"Old rule"}
    while store.prune(SYSTEM_CLOCK.now() + timedelta(seconds=1)):
        pass
    assert store.count() == 0
    again = ingestor.ingest(
        [parse_alert(_noisy(i, "Warning", "New rule")) for i in range(3)], "http"
    )
    after = store.recent_summaries(k8s_ns="default", k8s_pod="kubecon", since=since)
    assert [r["event_id"] for r in after] == [r.event_id for r in reversed(again)]
    assert {r["rule"] for r in after} == {"New rule"} and {r["severity"] for r in after} == {3}
    if ingestor.store.db.dialect == "sqlite":
        assert {r.row_id for r in again} == {r.row_id for r in first}  # the ids did come back


def test_the_policy_sees_at_most_recent_events_of_the_pod(
    database: Database,
    runtime_audit: AuditLog,
    entries: EntryRepository,
    policy: PolicyService,
    ingestor: EventIngestor,
) -> None:
    """``runtime.recent_events`` bounds input.recent (OPA's input handling costs per KB of
    input on every decision): the newest of the pod's earlier events, this one left out."""
    quarantine = QuarantineService(database, audit=runtime_audit)
    responder = _responder(database, runtime_audit, entries, policy, quarantine, None, recent_max=3)
    alerts = [parse_alert(_noisy(i, "Notice")) for i in range(6)]
    stored = ingestor.ingest(alerts, "http")
    recent = responder.policy_input(NewEvent(alerts[5], stored[5], "http"), [])["recent"]
    assert [r["event_id"] for r in recent] == [stored[i].event_id for i in (4, 3, 2)]
    none = _responder(database, runtime_audit, entries, policy, quarantine, None, recent_max=0)
    assert none.policy_input(NewEvent(alerts[5], stored[5], "http"), [])["recent"] == []
