"""CA rotation (prepared -> active -> old) with an injected clock, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from core_support import TD, WORKLOAD

from identity.bundle import Bundle, validate_jwt_svid, validate_x509_svid
from identity.ca import CertificateAuthority, JwtSvid, JwtSvidParams, X509Svid, X509SvidParams
from identity.errors import CaError
from identity.keys import DiskKeyManager, MemoryKeyManager
from identity.rotation import (
    Authority,
    AuthorityManager,
    Kind,
    Rotator,
    Status,
    should_activate,
    should_prepare,
)
from zerogate.clock import ManualClock
from zerogate.store import Database

DAY = timedelta(hours=24)
START = ManualClock().now()


def _authority(status: Status = Status.ACTIVE) -> Authority:
    from cryptography.hazmat.primitives.asymmetric import ec

    return Authority(
        key_id="k",
        kind=Kind.X509,
        status=status,
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        not_before=START,
        not_after=START + DAY,
    )


@pytest.mark.parametrize(
    ("hours", "prepare", "activate"),
    [
        (0, False, False),
        (11.9, False, False),
        (12, True, False),
        (19.9, True, False),
        (20, True, True),
    ],
)
def test_thresholds_are_pure_functions_of_time(hours: float, prepare: bool, activate: bool) -> None:
    active = _authority()
    now = START + timedelta(hours=hours)
    assert should_prepare(active, None, now) is prepare
    # activation needs something prepared; at 20 h (5/6 of 24 h) it goes
    assert should_activate(active, _authority(Status.PREPARED), now) is activate
    assert should_activate(active, None, now) is False
    assert should_prepare(active, _authority(Status.PREPARED), now) is False


def _manager(db: Database, clock: ManualClock, keys: object | None = None) -> AuthorityManager:
    return AuthorityManager(
        trust_domain=TD,
        db=db,
        keys=keys or MemoryKeyManager(),  # type: ignore[arg-type]
        clock=clock,
        ca_ttl=DAY,
    )


def test_no_window_where_a_valid_svid_fails(database: Database) -> None:
    """Three CA lifetimes in 20-minute steps: every unexpired SVID ever issued validates
    against the bundle published at that moment; prepared CAs are published >= 1/3 of a
    lifetime before they sign; old ones stay until everything they signed has expired."""
    clock = ManualClock()
    manager = _manager(database, clock)
    ca = CertificateAuthority(manager, clock=clock)
    seen: dict[str, dict[str, object]] = {}
    notified: list[Bundle] = []
    manager.subscribe(notified.append)
    x509s: list[X509Svid] = []
    jwts: list[JwtSvid] = []
    step = timedelta(minutes=20)
    for _ in range(int(3 * DAY / step)):
        manager.tick()
        now = clock.now()
        bundle = ca.bundle()
        published = {a.kid for a in bundle.jwt_authorities} | {
            format(c.serial_number, "x") for c in bundle.x509_authorities
        }
        for a in manager.authorities():
            ident = a.kid if a.kind is Kind.JWT else format(a.certificate.serial_number, "x")  # type: ignore[union-attr]
            info = seen.setdefault(ident, {"kind": a.kind, "statuses": []})
            statuses: list[Status] = info["statuses"]  # type: ignore[assignment]
            if not statuses or statuses[-1] is not a.status:
                statuses.append(a.status)
                info[a.status.value] = now
            assert ident in published  # every prepared/active/old authority is published
        x509s.append(ca.issue_x509_svid(X509SvidParams(WORKLOAD)))
        jwts.append(ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("aud",))))
        x509s = [s for s in x509s if s.expires_at > now]
        jwts = [j for j in jwts if j.expires_at > now]
        for svid in x509s:
            assert validate_x509_svid(svid.cert_chain, bundle, now) == WORKLOAD
        for token in jwts:
            assert validate_jwt_svid(token.token, "aud", bundle, now).spiffe_id == WORKLOAD
        clock.advance(step)
    # each kind rotated at least twice, through the full life cycle
    for kind in (Kind.X509, Kind.JWT):
        lives = [v for v in seen.values() if v["kind"] is kind]
        assert len(lives) >= 3
        full = [v for v in lives if v["statuses"] == [Status.PREPARED, Status.ACTIVE, Status.OLD]]
        assert len(full) >= 2
        for v in full:
            ahead = v["active"] - v["prepared"]  # type: ignore[operator]
            assert ahead >= DAY / 3 - step
    # old authorities are pruned once expired: never more than prepared+active+old
    assert len(manager.authorities(Kind.X509)) <= 3
    assert notified and notified[-1].sequence == manager.sequence
    assert [b.sequence for b in notified] == sorted({b.sequence for b in notified})


def test_journal_survives_a_restart(database: Database, tmp_path: Path) -> None:
    clock = ManualClock()
    keys_dir = tmp_path / "keys"
    first = _manager(database, clock, DiskKeyManager(keys_dir))
    first.tick()
    clock.advance(timedelta(hours=13))
    first.tick()  # prepares
    before = {(a.key_id, a.status) for a in first.authorities()}
    seq = first.sequence
    assert {s for _, s in before} == {Status.ACTIVE, Status.PREPARED}
    again = _manager(database, clock, DiskKeyManager(keys_dir))
    assert {(a.key_id, a.status) for a in again.authorities()} == before
    assert again.sequence == seq
    assert again.bundle().to_dict()["keys"] == first.bundle().to_dict()["keys"]
    assert again.tick() is False  # nothing to do: the same slots resume
    ca = CertificateAuthority(again, clock=clock)
    svid = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    assert validate_x509_svid(svid.cert_chain, first.bundle(), clock.now()) == WORKLOAD


def test_lost_memory_keys_retire_to_old(database: Database) -> None:
    clock = ManualClock()
    first = _manager(database, clock)
    first.tick()
    old_ids = {a.key_id for a in first.authorities()}
    again = _manager(database, clock)  # a fresh MemoryKeyManager: the keys are gone
    assert again.tick() is True
    assert {a.status for a in again.authorities() if a.key_id in old_ids} == {Status.OLD}
    active = {a.key_id for a in again.authorities() if a.status is Status.ACTIVE}
    assert active and not active & old_ids
    # the old ones are still published until they expire
    assert len(again.bundle().x509_authorities) == 2


def test_force_rotate_and_taint(database: Database) -> None:
    clock = ManualClock()
    manager = _manager(database, clock)
    ca = CertificateAuthority(manager, clock=clock)
    manager.tick()
    before = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    jwt_before = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("aud",)))
    assert not ca.is_tainted(before)
    manager.force_rotate(taint=True)
    after = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    assert after.leaf.issuer != before.leaf.issuer
    assert ca.is_tainted(before) and not ca.is_tainted(after)
    assert manager.is_tainted(jwt_before.kid)
    # both still validate: the tainted CA stays published until its SVIDs are replaced
    bundle = ca.bundle()
    validate_x509_svid(before.cert_chain, bundle, clock.now())
    validate_x509_svid(after.cert_chain, bundle, clock.now())
    statuses = sorted(a.status for a in manager.authorities(Kind.X509))
    assert statuses == [Status.ACTIVE, Status.OLD]


def test_activate_without_prepared_is_an_error(database: Database) -> None:
    manager = _manager(database, ManualClock())
    with pytest.raises(CaError, match="no prepared x509 authority"):
        manager.activate(Kind.X509)
    with pytest.raises(CaError, match="no active x509 authority"):
        manager.active(Kind.X509)


def test_another_process_rotation_is_picked_up(database: Database, tmp_path: Path) -> None:
    """The CLI (`zerogate ca rotate`) and the server share the store and the key directory."""
    clock = ManualClock()
    server = _manager(database, clock, DiskKeyManager(tmp_path / "keys"))
    server.tick()
    seen: list[Bundle] = []
    server.subscribe(seen.append)
    cli = _manager(database, clock, DiskKeyManager(tmp_path / "keys"))
    cli.force_rotate()
    assert server.tick() is True
    assert seen and seen[-1].sequence == cli.sequence
    assert server.active(Kind.X509)[0].key_id == cli.active(Kind.X509)[0].key_id


async def test_rotator_loop_ticks(database: Database) -> None:
    clock = ManualClock()
    manager = _manager(database, clock)
    rotator = Rotator(manager, interval=timedelta(milliseconds=10))
    assert not rotator.ready()
    await rotator.start()
    try:
        assert rotator.ready()
        assert manager.active(Kind.X509)[0].status is Status.ACTIVE
    finally:
        await rotator.stop()
    assert not rotator.ready()
