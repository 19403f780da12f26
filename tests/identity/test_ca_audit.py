"""Every SVID issued is a durable audit record; denied identities get nothing."""

from __future__ import annotations

import hashlib

import pytest
from core_support import WORKLOAD, make_ca

from identity.ca import JwtSvidParams, X509SvidParams
from identity.denylist import DenyList
from identity.errors import DeniedError
from zerogate.audit import AuditLog, tail
from zerogate.clock import ManualClock
from zerogate.store import Database


def test_svids_are_audited_and_deny_list_is_enforced(
    database: Database, audit_log: AuditLog
) -> None:
    clock = ManualClock()
    deny = DenyList(database, clock=clock, refresh_s=0)
    ca = make_ca(database, clock, audit=audit_log, deny_list=deny)
    x = ca.issue_x509_svid(X509SvidParams(WORKLOAD, entry_id="e1", selectors=("unix:uid:1000",)))
    j = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("aud",), entry_id="e1"))
    records = [r for r in tail(database, 10) if r.kind == "identity.svid.issued"]
    assert [r.payload["type"] for r in records] == ["x509", "jwt"]
    assert records[0].payload["serial"] == x.serial_hex
    assert records[0].payload["selectors"] == ["unix:uid:1000"]
    assert records[0].payload["entry_id"] == "e1"
    assert records[1].payload["jti_hash"] == hashlib.sha256(j.jti.encode()).hexdigest()
    assert "token" not in records[1].payload and j.token not in str(records[1].payload)
    deny.add("spiffe_id", str(WORKLOAD), reason="compromised")
    with pytest.raises(DeniedError, match="deny list"):
        ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    with pytest.raises(DeniedError):
        ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("aud",)))
    assert len([r for r in tail(database, 10) if r.kind == "identity.svid.issued"]) == 2
