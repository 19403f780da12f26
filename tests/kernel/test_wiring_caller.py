"""mtls_caller: the SPIFFE ID of a client X.509-SVID, validated against the trust bundle; a
remembered answer never outlives the certificate, and failures are never remembered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import HTTPException, Request

from identity.ca import X509SvidParams
from identity.service import IdentityService, open_identity
from identity.spiffeid import SpiffeId
from zerogate.audit import AuditLog
from zerogate.clock import ManualClock
from zerogate.config import Settings
from zerogate.store import Database
from zerogate.wiring import mtls_caller

FALCO = "spiffe://zerogate.internal/falco"


def _identity(database: Database, audit_log: AuditLog, tmp: Path) -> IdentityService:
    settings = Settings(data_dir=tmp, identity={"key_store": "memory"})
    return open_identity(settings, database, audit_log)


def _request(chain_pem: str | None) -> Request:
    tls = {"client_cert_chain": [chain_pem] if chain_pem else []}
    return Request({"type": "http", "extensions": {"tls": tls}, "headers": []})


def _leaf_pem(identity: IdentityService, ttl: timedelta) -> str:
    svid = identity.ca.issue_x509_svid(X509SvidParams(spiffe_id=SpiffeId.parse(FALCO), ttl=ttl))
    return svid.chain_pem().decode().split("-----END CERTIFICATE-----")[0] + (
        "-----END CERTIFICATE-----\n"
    )


def test_caller_answers_until_the_svid_expires(
    database: Database, audit_log: AuditLog, tmp_path: Path
) -> None:
    identity = _identity(database, audit_log, tmp_path)
    clock = ManualClock(datetime.now(UTC))
    caller = mtls_caller(identity, clock)
    pem = _leaf_pem(identity, timedelta(minutes=5))
    assert str(caller(_request(pem))) == FALCO
    clock.advance(timedelta(minutes=4))
    assert str(caller(_request(pem))) == FALCO  # served again, still valid
    clock.advance(timedelta(minutes=2))
    with pytest.raises(HTTPException) as info:
        caller(_request(pem))  # expired: the remembered answer does not outlive the leaf
    assert info.value.status_code == 401
    assert caller(_request(None)) is None


def test_a_foreign_svid_is_refused_every_time(
    database: Database, audit_log: AuditLog, tmp_path: Path
) -> None:
    ours = _identity(database, audit_log, tmp_path / "a")
    other_db = Database.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        other_audit = AuditLog.open(other_db, signing_key=tmp_path / "other.pem")
        foreign = _identity(other_db, other_audit, tmp_path / "b")
        pem = _leaf_pem(foreign, timedelta(minutes=5))
        caller = mtls_caller(ours, ManualClock(datetime.now(UTC)))
        for _ in range(2):
            with pytest.raises(HTTPException) as info:
                caller(_request(pem))
            assert info.value.status_code == 401
        other_audit.close()
    finally:
        other_db.close()
