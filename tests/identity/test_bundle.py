"""The SPIFFE bundle format (Trust Domain and Bundle 4): JWKS JSON and PEM."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core_support import TD, make_ca
from cryptography.hazmat.primitives import serialization

from identity.bundle import Bundle, BundleSet
from identity.ca import CertificateAuthority
from identity.errors import BundleError
from identity.spiffeid import TrustDomain
from zerogate.clock import ManualClock
from zerogate.store import Database


@pytest.fixture
def ca(tmp_path: Path) -> Iterator[CertificateAuthority]:
    db = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    yield make_ca(db, ManualClock())
    db.close()


def test_json_has_the_spiffe_shape(ca: CertificateAuthority) -> None:
    doc = json.loads(ca.bundle().to_json())
    assert doc["spiffe_sequence"] == ca.bundle().sequence >= 1
    assert doc["spiffe_refresh_hint"] == 300
    x509s = [k for k in doc["keys"] if k["use"] == "x509-svid"]
    jwts = [k for k in doc["keys"] if k["use"] == "jwt-svid"]
    assert len(x509s) == 1 and len(jwts) == 1
    der = base64.b64decode(x509s[0]["x5c"][0])  # standard base64 (RFC 7517 4.7)
    cert = ca.bundle().x509_authorities[0]
    assert der == cert.public_bytes(serialization.Encoding.DER)
    assert x509s[0]["kty"] == "EC" and x509s[0]["crv"] == "P-256"
    assert jwts[0]["kid"] == ca.bundle().jwt_authorities[0].kid
    assert "d" not in jwts[0] and "d" not in x509s[0]  # never private material


def test_json_round_trip(ca: CertificateAuthority) -> None:
    original = ca.bundle()
    parsed = Bundle.from_json(TD, original.to_json())
    assert parsed.x509_authorities == original.x509_authorities
    assert [a.kid for a in parsed.jwt_authorities] == [a.kid for a in original.jwt_authorities]
    assert parsed.jwt_authorities[0].public_key == original.jwt_authorities[0].public_key
    assert (parsed.sequence, parsed.refresh_hint_s) == (original.sequence, original.refresh_hint_s)


def test_pem_round_trip(ca: CertificateAuthority) -> None:
    pem = ca.bundle().to_pem()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert Bundle.from_pem(TD, pem).x509_authorities == ca.bundle().x509_authorities


def test_unknown_use_is_ignored(ca: CertificateAuthority) -> None:
    doc = ca.bundle().to_dict()
    doc["keys"].append({"kty": "oct", "use": "something-else", "k": "AAAA"})
    assert len(Bundle.from_json(TD, doc).x509_authorities) == 1


def _doc(ca: CertificateAuthority) -> dict[str, Any]:
    return ca.bundle().to_dict()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("keys"), "'keys' list"),
        (lambda d: d["keys"][0].pop("x5c"), "exactly one x5c"),
        (lambda d: d["keys"][0].update(x5c=["AA", "BB"]), "exactly one x5c"),
        (lambda d: d["keys"][0].update(x5c=["bm90IGEgY2VydA=="]), "bad x5c"),
        (lambda d: d["keys"][1].pop("kid"), "need a kid"),
        (lambda d: d["keys"][1].update(kty="oct"), "unsupported kty"),
        (lambda d: d.update(spiffe_sequence=-1), "spiffe_sequence"),
        (lambda d: d.update(spiffe_refresh_hint="5m"), "spiffe_refresh_hint"),
    ],
)
def test_bad_bundles_name_the_rule(ca: CertificateAuthority, mutate: Any, message: str) -> None:
    doc = _doc(ca)
    mutate(doc)
    with pytest.raises(BundleError, match=message):
        Bundle.from_json(TD, doc)


def test_not_json() -> None:
    with pytest.raises(BundleError, match="not JSON"):
        Bundle.from_json(TD, "{nope")
    with pytest.raises(BundleError, match="no valid certificate"):
        Bundle.from_pem(TD, "garbage")


def test_bundle_set_has_one_bundle_per_trust_domain(ca: CertificateAuthority) -> None:
    with pytest.raises(BundleError, match="two bundles"):
        BundleSet([ca.bundle(), ca.bundle()])
    other = Bundle(TrustDomain("other.org"))
    bundles = BundleSet([ca.bundle()]).with_bundle(other)
    assert set(bundles) == {TD, TrustDomain("other.org")}
    assert bundles.with_bundle(Bundle(TD))[TD].x509_authorities == ()
