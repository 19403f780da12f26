"""open_runtime end to end (up to the quarantine the gates read): a Critical Falco alert for a
pod with an identity, POSTed by the Falco SVID, quarantines that identity under one trace."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fastapi import FastAPI
from runtime_app import FALCO_ID, header_caller
from runtime_corpus import docs_raw

from identity.denylist import DenyList
from identity.entries import EntryRepository, EntrySpec, Selector
from identity.spiffeid import SpiffeId
from identity.workload_cache import AnyGate
from policy.service import open_policy
from runtime.service import open_runtime
from zerogate.audit import AuditLog, tail
from zerogate.clock import SYSTEM_CLOCK
from zerogate.config import Settings
from zerogate.store import Database

REPO = Path(__file__).resolve().parents[2]
KUBECON = "spiffe://zerogate.internal/ns/default/pod/kubecon"


async def test_alert_to_quarantine_through_open_runtime(
    database: Database, runtime_audit: AuditLog
) -> None:
    settings = Settings(policy={"rego_dir": REPO / "rego", "watch": False})
    policy = open_policy(settings, runtime_audit)
    entries = EntryRepository(database, clock=SYSTEM_CLOCK, audit=runtime_audit)
    denylist = DenyList(database, clock=SYSTEM_CLOCK, audit=runtime_audit)
    # no flush: identity's writes queue behind the audit writer's (Database.begin), they no
    # longer fail with "database is locked" while it commits the policy-load record
    entries.create(
        EntrySpec(
            spiffe_id=SpiffeId.parse(KUBECON),
            selectors=(Selector.parse("k8s:ns:default"), Selector.parse("k8s:pod-name:kubecon")),
        )
    )
    rt = open_runtime(
        settings, database, runtime_audit, policy=policy, entries=entries, denylist=denylist
    )
    assert rt.responder is not None
    assert "Terminal shell in container" in rt.responder.urgent_rules  # data.runtime.revoke_rules
    gate = AnyGate(denylist, rt.quarantine)
    app = FastAPI()
    app.include_router(rt.router(caller=header_caller))
    await rt.start()
    try:
        assert rt.ready()
        assert not gate.is_denied(spiffe_id=KUBECON)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://zg"
        ) as client:
            refused = await client.post(
                "/v1/runtime/falco",
                json=docs_raw(),
                headers={"x-test-spiffe-id": "spiffe://zerogate.internal/app"},
            )
            assert refused.status_code == 403  # the policy's submit rule
            reply = await client.post(
                "/v1/runtime/falco", json=docs_raw(), headers={"x-test-spiffe-id": FALCO_ID}
            )
            assert reply.status_code == 200
        for _ in range(500):
            if rt.quarantine.is_quarantined(KUBECON):
                break
            await asyncio.sleep(0.01)
        record = rt.quarantine.is_quarantined(KUBECON)
        assert record is not None and record.rule == "Terminal shell in container"
        assert gate.is_denied(spiffe_id=KUBECON)  # what the Workload API consults
    finally:
        await rt.stop()
    runtime_audit.flush()
    records = tail(database, n=100)
    kinds = [r.kind for r in records]
    assert "runtime.event" in kinds and "runtime.action" in kinds
    assert "runtime.quarantine" in kinds and "policy.decision" in kinds
    # the submit policy: the refusal is in the decision log, the allow is not (one record per
    # POST would double the audit writes of Falco's one-alert requests); the event's own
    # record names who submitted it
    submits = [
        r.payload
        for r in records
        if r.kind == "policy.decision" and r.payload.get("path") == "zerogate/runtime/submit"
    ]
    assert [p["input"]["subject"]["spiffe_id"] for p in submits] == [
        "spiffe://zerogate.internal/app"
    ]
    events = [r.payload for r in records if r.kind == "runtime.event"]
    assert [e["submitter"] for e in events] == [FALCO_ID]
