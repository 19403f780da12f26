"""The deny list tells why an ID is on it, so refusals can name the cause (e.g. a Falco rule)."""

from __future__ import annotations

from datetime import timedelta

from identity.denylist import DenyList
from zerogate.clock import ManualClock
from zerogate.store import Database


def test_denial_reason(database: Database) -> None:
    clock = ManualClock()
    deny = DenyList(database, clock=clock)
    sid = "spiffe://example.org/ml/pod"
    assert deny.denial_reason(spiffe_id=sid) is None
    deny.add("spiffe_id", sid, reason="Terminal shell in container")
    assert deny.denial_reason(spiffe_id=sid) == "Terminal shell in container"
    deny.add("spiffe_id", "spiffe://example.org/other", expires_at=clock.now() + timedelta(1))
    assert deny.denial_reason(spiffe_id="spiffe://example.org/other") == ""
    clock.advance(timedelta(days=2))
    assert deny.denial_reason(spiffe_id="spiffe://example.org/other") is None
