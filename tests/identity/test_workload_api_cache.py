"""The Workload API's SVID cache: sharing, renewal before half-life (injected clock),
rotation, deny list and change broadcast."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest
from workload_support import MemEntry, MemorySource, SetGate

from identity.spiffeid import TrustDomain
from identity.workload_cache import WorkloadCache

TD = TrustDomain("example.org")
START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
A = frozenset({"unix:uid:1000", "unix:gid:1000"})
B = frozenset({"unix:uid:1000", "unix:gid:2000"})


class Clock:
    def __init__(self) -> None:
        self.t = START

    def now(self) -> datetime:
        return self.t


def setup() -> tuple[MemorySource, Clock, SetGate, WorkloadCache]:
    clock = Clock()
    source = MemorySource(TD, clock=clock)
    source.put_entry(MemEntry("e1", "spiffe://example.org/app", frozenset({"unix:uid:1000"})))
    gate = SetGate()
    return source, clock, gate, WorkloadCache(source, gate=gate, clock=clock)


def serial(cache: WorkloadCache, selectors: frozenset[str] = A) -> int:
    (identity,) = cache.x509_state(selectors).identities
    return identity.svid.serial


def test_one_svid_per_entry_shared_by_callers() -> None:
    source, _, _, cache = setup()
    assert serial(cache, A) == serial(cache, B)
    assert source.issued_x509 == 1


def test_no_identity_gives_empty_state() -> None:
    _, _, _, cache = setup()
    assert cache.x509_state(frozenset({"unix:uid:0"})).identities == ()


def test_renewed_before_half_life() -> None:
    source, clock, _, cache = setup()
    first = cache.x509_state(A).identities[0].svid
    lifetime = first.not_after - first.not_before
    clock.t = first.not_before + lifetime * 0.44
    assert not cache.refresh()
    assert serial(cache) == first.serial
    clock.t = first.not_before + lifetime * 0.46  # past the renewal point, before half-life
    assert cache.refresh()
    renewed = cache.x509_state(A).identities[0].svid
    assert renewed.serial != first.serial
    assert renewed.not_after > first.not_after
    assert source.issued_x509 == 2


def test_rotation_reissues_and_publishes_both_cas() -> None:
    source, _, _, cache = setup()
    before = serial(cache)
    source.rotate()  # no notification reaches an unstarted cache: the poll finds it
    assert cache.refresh()
    state = cache.x509_state(A)
    assert state.identities[0].svid.serial != before
    assert len(state.bundles[0].x509_authorities) == 2
    issuer = state.identities[0].svid.chain[0].issuer
    assert issuer == state.bundles[0].x509_authorities[-1].subject


def test_entry_revision_change_reissues() -> None:
    source, _, _, cache = setup()
    before = serial(cache)
    source.put_entry(
        MemEntry("e1", "spiffe://example.org/app", frozenset({"unix:uid:1000"}), hint="x")
    )
    assert cache.refresh()
    (identity,) = cache.x509_state(A).identities
    assert identity.entry.hint == "x"
    assert identity.svid.serial != before


def test_denied_id_disappears_on_next_poll() -> None:
    _, _, gate, cache = setup()
    assert cache.x509_state(A).identities
    gate.denied.add("spiffe://example.org/app")
    assert cache.refresh()
    assert cache.x509_state(A).identities == ()
    gate.denied.clear()
    assert cache.refresh()
    assert cache.x509_state(A).identities


async def test_notify_from_another_thread_wakes_waiters() -> None:
    source, _, _, cache = setup()
    await cache.start()
    try:
        generation = cache.generation
        waiter = asyncio.create_task(cache.wait_changed(generation))
        await asyncio.sleep(0)
        assert not waiter.done()
        thread = threading.Thread(target=source.rotate)  # subscription -> notify()
        thread.start()
        thread.join()
        assert await asyncio.wait_for(waiter, 5) > generation
    finally:
        await cache.stop()


def test_renew_fraction_is_checked() -> None:
    source = MemorySource(TD)
    with pytest.raises(ValueError):
        WorkloadCache(source, renew_fraction=0.5 + 0.5)
