"""Authentication pieces without a socket: Envoy's XFCC grammar, the verified-token cache
(bounded, expiry- and bundle-aware) and bundle staleness, against a real CA."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from identity.bundle import BundleSet
from identity.ca import CertificateAuthority, JwtSvidParams
from identity.keys import KeyType, MemoryKeyManager
from identity.rotation import AuthorityManager
from identity.spiffeid import SpiffeId, TrustDomain
from inference.authn import Authenticator, TokenCache, parse_xfcc
from inference.refusals import AuthenticationError, BundleStaleError
from inference.trust import SnapshotTrust, TrustSnapshot
from zerogate.clock import ManualClock
from zerogate.store import Database

TD = "example.org"
AUD = f"spiffe://{TD}/inference"
APP = SpiffeId.parse(f"spiffe://{TD}/ns/default/sa/app")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("URI=spiffe://a/b", [{"uri": "spiffe://a/b"}]),
        (
            "By=spiffe://td/proxy;Hash=ab12;URI=spiffe://td/app",
            [{"by": "spiffe://td/proxy", "hash": "ab12", "uri": "spiffe://td/app"}],
        ),
        # Envoy quotes values holding , ; = (the Subject DN)
        (
            'Hash=1;Subject="CN=x,O=y;z";URI=spiffe://td/a',
            [{"hash": "1", "subject": "CN=x,O=y;z", "uri": "spiffe://td/a"}],
        ),
        # two proxies: one element each, the nearest proxy's last
        (
            "By=spiffe://td/p1;URI=spiffe://td/a,By=spiffe://td/p2;URI=spiffe://td/p1",
            [
                {"by": "spiffe://td/p1", "uri": "spiffe://td/a"},
                {"by": "spiffe://td/p2", "uri": "spiffe://td/p1"},
            ],
        ),
        ('Subject="a \\" b"', [{"subject": 'a " b'}]),
    ],
    ids=["uri", "by-hash-uri", "quoted", "two-elements", "escaped-quote"],
)
def test_parse_xfcc(header: str, expected: list[dict[str, str]]) -> None:
    assert parse_xfcc(header) == expected


@pytest.mark.parametrize("header", ['Subject="open', "URI"], ids=["unterminated", "no-equals"])
def test_parse_xfcc_rejects(header: str) -> None:
    with pytest.raises(ValueError):
        parse_xfcc(header)


def test_token_cache_is_a_bounded_lru() -> None:
    cache = TokenCache(2)
    marker = object()
    cache.put(b"a", marker)  # type: ignore[arg-type]
    cache.put(b"b", marker)  # type: ignore[arg-type]
    assert cache.get(b"a") is marker  # a is now the most recent
    cache.put(b"c", marker)  # type: ignore[arg-type]
    assert cache.get(b"b") is None and cache.get(b"a") is marker and len(cache) == 2
    off = TokenCache(0)
    off.put(b"a", marker)  # type: ignore[arg-type]
    assert len(off) == 0


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[tuple[CertificateAuthority, ManualClock]]:
    clock = ManualClock(datetime.now(UTC))
    db = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    manager = AuthorityManager(
        trust_domain=TrustDomain(TD),
        db=db,
        keys=MemoryKeyManager(),
        clock=clock,
        ca_ttl=timedelta(hours=24),
        key_type=KeyType.EC_P256,
    )
    manager.tick()
    yield CertificateAuthority(manager, clock=clock), clock
    db.close()


def _authn(trust: SnapshotTrust, clock: ManualClock, cache: int = 100) -> Authenticator:
    return Authenticator(trust, audiences=[AUD], clock=clock, token_cache_size=cache)


def _snapshot(ca: CertificateAuthority, at: datetime) -> TrustSnapshot:
    return TrustSnapshot(BundleSet([ca.bundle()]), at, 60.0)


def test_cached_token_still_expires(ca: tuple[CertificateAuthority, ManualClock]) -> None:
    authority, clock = ca
    trust = SnapshotTrust(_snapshot(authority, clock.now()))
    authn = _authn(trust, clock)
    token = authority.issue_jwt_svid(JwtSvidParams(APP, (AUD,), ttl=timedelta(seconds=30))).token
    headers = {"authorization": f"Bearer {token}"}
    assert authn.authenticate({}, headers).spiffe_id == APP
    assert len(authn.token_cache) == 1
    clock.advance(timedelta(seconds=31))
    trust.set(_snapshot(authority, clock.now()))
    with pytest.raises(AuthenticationError, match="expired"):
        authn.authenticate({}, headers)
    assert len(authn.token_cache) == 0


def test_cached_token_dies_with_its_key(ca: tuple[CertificateAuthority, ManualClock]) -> None:
    authority, clock = ca
    trust = SnapshotTrust(_snapshot(authority, clock.now()))
    authn = _authn(trust, clock)
    token = authority.issue_jwt_svid(JwtSvidParams(APP, (AUD,))).token
    headers = {"authorization": f"Bearer {token}"}
    authn.authenticate({}, headers)
    # the bundle no longer holds the JWT key (a tainted authority was removed)
    trust.set(TrustSnapshot(BundleSet(), clock.now(), 60.0))
    with pytest.raises(AuthenticationError, match="no JWT bundle"):
        authn.authenticate({}, headers)


def test_stale_bundle_refuses_every_call(ca: tuple[CertificateAuthority, ManualClock]) -> None:
    authority, clock = ca
    trust = SnapshotTrust(_snapshot(authority, clock.now()))
    authn = Authenticator(trust, audiences=[AUD], clock=clock, staleness_factor=2.0)
    headers = {
        "authorization": "Bearer " + authority.issue_jwt_svid(JwtSvidParams(APP, (AUD,))).token
    }
    clock.advance(timedelta(seconds=120))  # exactly hint x factor: still fresh
    assert authn.authenticate({}, headers).spiffe_id == APP
    clock.advance(timedelta(seconds=1))
    with pytest.raises(BundleStaleError):
        authn.authenticate({}, headers)


@pytest.mark.parametrize(
    ("value", "match"),
    [("Basic dXNlcjpwYXNz", "must be 'Bearer"), ("Bearer", "must be 'Bearer")],
    ids=["basic", "empty-bearer"],
)
def test_other_authorization_schemes_are_401(
    ca: tuple[CertificateAuthority, ManualClock], value: str, match: str
) -> None:
    authority, clock = ca
    authn = _authn(SnapshotTrust(_snapshot(authority, clock.now())), clock)
    with pytest.raises(AuthenticationError, match=match):
        authn.authenticate({}, {"authorization": value})


def test_any_configured_audience_is_accepted(ca: tuple[CertificateAuthority, ManualClock]) -> None:
    authority, clock = ca
    authn = Authenticator(
        SnapshotTrust(_snapshot(authority, clock.now())),
        audiences=[AUD, "models.example.org"],
        clock=clock,
    )
    token = authority.issue_jwt_svid(JwtSvidParams(APP, ("models.example.org",))).token
    assert authn.authenticate({}, {"authorization": f"Bearer {token}"}).spiffe_id == APP
    other = authority.issue_jwt_svid(JwtSvidParams(APP, ("elsewhere",))).token
    with pytest.raises(AuthenticationError, match="audience"):
        authn.authenticate({}, {"authorization": f"Bearer {other}"})
