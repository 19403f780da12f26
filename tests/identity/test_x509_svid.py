"""X.509-SVID issuance and validation: what the CA signs, and what validation refuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from core_support import TD, WORKLOAD, forge_leaf, make_ca
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from identity.bundle import Bundle, BundleSet, validate_x509_svid
from identity.ca import CertificateAuthority, X509SvidParams
from identity.errors import (
    CaError,
    ChainVerificationError,
    InvalidLeafError,
    NoBundleError,
    X509SvidError,
)
from identity.keys import KeyType
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.clock import ManualClock
from zerogate.store import Database


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    db = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    yield db
    db.close()


@pytest.fixture
def ca(sqlite_db: Database, clock: ManualClock) -> CertificateAuthority:
    return make_ca(sqlite_db, clock)


def _ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


def test_leaf_matches_the_x509_svid_profile(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.issue_x509_svid(X509SvidParams(WORKLOAD, dns_names=("api.example.org",)))
    leaf = svid.leaf
    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WORKLOAD)]  # type: ignore[attr-defined]
    assert san.get_values_for_type(x509.DNSName) == ["api.example.org"]  # type: ignore[attr-defined]
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False  # type: ignore[attr-defined]
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_encipherment and ku.value.key_agreement  # type: ignore[attr-defined]
    assert not ku.value.key_cert_sign and not ku.value.crl_sign  # type: ignore[attr-defined]
    eku = list(_ext(leaf, x509.ExtendedKeyUsage).value)  # type: ignore[call-overload]
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku
    _ext(leaf, x509.SubjectKeyIdentifier)
    _ext(leaf, x509.AuthorityKeyIdentifier)
    assert leaf.not_valid_after_utc == clock.now() + timedelta(hours=1)
    assert svid.private_key is not None
    assert svid.private_key.public_key() == leaf.public_key()
    assert validate_x509_svid(svid.cert_chain, ca.bundle(), clock.now()) == WORKLOAD


def test_ca_certificate_profile(ca: CertificateAuthority) -> None:
    cert = ca.bundle().x509_authorities[0]
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca  # type: ignore[attr-defined]
    assert _ext(cert, x509.KeyUsage).value.key_cert_sign  # type: ignore[attr-defined]
    uris = _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(  # type: ignore[attr-defined]
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://example.org"]
    ski = _ext(cert, x509.SubjectKeyIdentifier).value.digest  # type: ignore[attr-defined]
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski  # type: ignore[attr-defined]


def test_public_key_and_csr_inputs(ca: CertificateAuthority, clock: ManualClock) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    by_key = ca.issue_x509_svid(X509SvidParams(WORKLOAD, public_key=key.public_key()))
    assert by_key.private_key is None and by_key.leaf.public_key() == key.public_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    by_csr = ca.issue_x509_svid(X509SvidParams(WORKLOAD, csr=csr))
    assert by_csr.leaf.public_key() == key.public_key()
    assert validate_x509_svid(by_csr.cert_chain, ca.bundle(), clock.now()) == WORKLOAD
    with pytest.raises(CaError, match="either public_key or csr"):
        ca.issue_x509_svid(X509SvidParams(WORKLOAD, csr=csr, public_key=key.public_key()))


def test_ttl_is_capped_by_the_ca_remaining_life(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    clock.advance(timedelta(hours=23, minutes=30))
    svid = ca.issue_x509_svid(X509SvidParams(WORKLOAD, ttl=timedelta(hours=5)))
    issuer = ca.bundle().x509_authorities[0]
    assert svid.expires_at == issuer.not_valid_after_utc


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://other.org/workload", "not in trust domain example.org"),
        ("spiffe://example.org", "has no path"),
    ],
)
def test_ca_refuses_ids_it_must_not_sign(
    ca: CertificateAuthority, spiffe_id: str, message: str
) -> None:
    with pytest.raises(CaError, match=message):
        ca.issue_x509_svid(X509SvidParams(SpiffeId.parse(spiffe_id)))


def test_negative_ttl_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CaError, match="TTL must be positive"):
        ca.issue_x509_svid(X509SvidParams(WORKLOAD, ttl=timedelta(seconds=-1)))


@pytest.mark.parametrize("key_type", [KeyType.EC_P384, KeyType.RSA_2048])
def test_other_ca_key_types(sqlite_db: Database, clock: ManualClock, key_type: KeyType) -> None:
    ca = make_ca(sqlite_db, clock, key_type=key_type, trust_domain=TrustDomain(f"{key_type}.org"))
    sid = SpiffeId.parse(f"spiffe://{key_type}.org/w")
    svid = ca.issue_x509_svid(X509SvidParams(sid))
    assert validate_x509_svid(svid.cert_chain, ca.bundle(), clock.now()) == sid


# Negative cases (issue 3: "What must be shown") ---------------------------------------------


def test_leaf_with_two_uri_sans_is_rejected(ca: CertificateAuthority, clock: ManualClock) -> None:
    leaf = forge_leaf(ca, clock.now(), uris=[str(WORKLOAD), "spiffe://example.org/other"])
    with pytest.raises(InvalidLeafError, match="2 URI SANs"):
        validate_x509_svid([leaf], ca.bundle(), clock.now())


def test_leaf_with_ca_true_is_rejected(ca: CertificateAuthority, clock: ManualClock) -> None:
    leaf = forge_leaf(ca, clock.now(), is_ca=True)
    with pytest.raises(InvalidLeafError, match="CA:true"):
        validate_x509_svid([leaf], ca.bundle(), clock.now())


@pytest.mark.parametrize("dns", [[], ["workload.example.org"]], ids=["no-san", "dns-san-only"])
def test_leaf_without_uri_san_is_rejected(
    ca: CertificateAuthority, clock: ManualClock, dns: list[str]
) -> None:
    # X509-SVID spec section 2: exactly one URI SAN, the SPIFFE ID
    leaf = forge_leaf(ca, clock.now(), uris=[], dns=dns)
    with pytest.raises(InvalidLeafError, match="URI SAN"):
        validate_x509_svid([leaf], ca.bundle(), clock.now())


def test_a_well_formed_forged_leaf_passes(ca: CertificateAuthority, clock: ManualClock) -> None:
    # the control for the three tests above: the forging helper itself makes valid leaves
    leaf = forge_leaf(ca, clock.now())
    assert validate_x509_svid([leaf], ca.bundle(), clock.now()) == WORKLOAD


def test_chain_from_a_foreign_ca_is_rejected(
    ca: CertificateAuthority, tmp_path: Path, clock: ManualClock
) -> None:
    other_db = Database.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        impostor = make_ca(other_db, clock)  # same trust domain name, different keys
        svid = impostor.issue_x509_svid(X509SvidParams(WORKLOAD))
    finally:
        other_db.close()
    with pytest.raises(ChainVerificationError, match="does not chain to the bundle"):
        validate_x509_svid(svid.cert_chain, ca.bundle(), clock.now())


def test_bundle_is_chosen_by_trust_domain_never_merged(
    ca: CertificateAuthority, tmp_path: Path, clock: ManualClock
) -> None:
    other_db = Database.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        foreign = make_ca(other_db, clock, trust_domain=TrustDomain("foreign.org"))
        foreign_svid = foreign.issue_x509_svid(
            X509SvidParams(SpiffeId.parse("spiffe://foreign.org/w"))
        )
    finally:
        other_db.close()
    both = BundleSet([ca.bundle(), foreign.bundle()])
    assert validate_x509_svid(foreign_svid.cert_chain, both, clock.now()).trust_domain == (
        TrustDomain("foreign.org")
    )
    with pytest.raises(NoBundleError, match=r"foreign\.org"):
        validate_x509_svid(foreign_svid.cert_chain, ca.bundle(), clock.now())
    # a bundle for example.org holding only foreign anchors never vouches for our SVIDs
    mixed = Bundle(TD, foreign.bundle().x509_authorities)
    svid = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    with pytest.raises(ChainVerificationError):
        validate_x509_svid(svid.cert_chain, BundleSet([mixed]), clock.now())


def test_expired_and_not_yet_valid(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.issue_x509_svid(X509SvidParams(WORKLOAD, ttl=timedelta(minutes=10)))
    with pytest.raises(ChainVerificationError):
        validate_x509_svid(svid.cert_chain, ca.bundle(), clock.now() + timedelta(minutes=11))
    with pytest.raises(ChainVerificationError):
        validate_x509_svid(svid.cert_chain, ca.bundle(), clock.now() - timedelta(minutes=5))


def test_empty_chain(ca: CertificateAuthority, clock: ManualClock) -> None:
    with pytest.raises(X509SvidError, match="empty certificate chain"):
        validate_x509_svid([], ca.bundle(), clock.now())


def test_workload_key_is_fresh_each_time(ca: CertificateAuthority) -> None:
    a = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    b = ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    assert a.leaf.public_key() != b.leaf.public_key()
    assert a.leaf.serial_number != b.leaf.serial_number
