"""JWT-SVID minting and validation (JWT-SVID 2-4, RFC 7515/7519), one test per rule."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from core_support import WORKLOAD, hs256_with_public_key, jws, make_ca
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.utils import der_to_raw_signature

from identity.bundle import BundleSet, validate_jwt_svid
from identity.ca import CertificateAuthority, JwtSvidParams
from identity.errors import (
    JwtAlgorithmError,
    JwtAudienceError,
    JwtExpiredError,
    JwtMalformedError,
    JwtMissingClaimError,
    JwtMissingKidError,
    JwtNoBundleError,
    JwtNotYetValidError,
    JwtSignatureError,
    JwtSubjectError,
    JwtSvidError,
    JwtTypeError,
    JwtUnknownKidError,
)
from identity.keys import KeyType, signer_for
from identity.rotation import Kind
from identity.spiffeid import SpiffeId, TrustDomain
from identity.svid import encode_jws
from zerogate.clock import ManualClock
from zerogate.store import Database

AUD = "spiffe://example.org/inference"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database.open(f"sqlite:///{tmp_path / 'ca.db'}")
    yield database
    database.close()


@pytest.fixture
def ca(db: Database, clock: ManualClock) -> CertificateAuthority:
    return make_ca(db, clock)


def _claims(clock: ManualClock, **over: object) -> dict[str, object]:
    now = int(clock.now().timestamp())
    claims: dict[str, object] = {"sub": str(WORKLOAD), "aud": [AUD], "exp": now + 300, "iat": now}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def test_minted_token_has_the_spec_shape(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, (AUD, "other")))
    header = jwt.get_unverified_header(svid.token)
    assert header["alg"] == "ES256" and header["typ"] == "JWT" and header["kid"] == svid.kid
    claims = validate_jwt_svid(svid.token, AUD, ca.bundle(), clock.now())
    assert claims.spiffe_id == WORKLOAD
    assert claims.audience == (AUD, "other")
    assert claims.claims["aud"] == [AUD, "other"]  # aud is always a list
    assert claims.expires_at == clock.now() + timedelta(minutes=5)
    assert claims.issued_at == clock.now()
    assert isinstance(claims.claims["jti"], str)


def test_ttl_is_capped_by_the_key_life(ca: CertificateAuthority, clock: ManualClock) -> None:
    clock.advance(timedelta(hours=23, minutes=58))
    svid = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, (AUD,), ttl=timedelta(hours=1)))
    assert svid.expires_at <= ca.bundle().jwt_authorities[-1].expires_at  # type: ignore[operator]


@pytest.mark.parametrize(
    ("key_type", "alg"), [(KeyType.EC_P384, "ES384"), (KeyType.RSA_2048, "RS256")]
)
def test_other_key_types(db: Database, clock: ManualClock, key_type: KeyType, alg: str) -> None:
    td = TrustDomain(f"k{alg.lower()}.org")
    ca = make_ca(db, clock, key_type=key_type, trust_domain=td)
    sid = SpiffeId.from_path(td, "/w")
    svid = ca.issue_jwt_svid(JwtSvidParams(sid, ("a",)))
    assert jwt.get_unverified_header(svid.token)["alg"] == alg
    assert validate_jwt_svid(svid.token, "a", ca.bundle(), clock.now()).spiffe_id == sid


def test_ps256_when_configured(db: Database, clock: ManualClock) -> None:
    ca = make_ca(db, clock, key_type=KeyType.RSA_2048, jwt_algorithm="PS256")
    svid = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("a",)))
    assert jwt.get_unverified_header(svid.token)["alg"] == "PS256"
    validate_jwt_svid(svid.token, "a", ca.bundle(), clock.now())


def test_empty_audience_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(JwtSvidError, match="audience must be a non-empty list"):
        ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ()))


# Negative cases --------------------------------------------------------------------------------


def test_alg_none_is_rejected(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    token = jws({"alg": "none", "kid": kid, "typ": "JWT"}, _claims(clock), b"")
    with pytest.raises(JwtAlgorithmError, match="'none' is not allowed"):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_hs256_signed_with_the_public_key_is_rejected(
    ca: CertificateAuthority, clock: ManualClock
) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    token = hs256_with_public_key(ca, kid, _claims(clock))
    with pytest.raises(JwtAlgorithmError, match="'HS256' is not allowed"):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_wrong_audience(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, ("someone-else",)))
    with pytest.raises(JwtAudienceError, match="does not contain"):
        validate_jwt_svid(svid.token, AUD, ca.bundle(), clock.now())


def test_expired(ca: CertificateAuthority, clock: ManualClock) -> None:
    svid = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, (AUD,)))
    validate_jwt_svid(svid.token, AUD, ca.bundle(), clock.now() + timedelta(seconds=299))
    with pytest.raises(JwtExpiredError, match=r"RFC 7519 4\.1\.4"):
        validate_jwt_svid(svid.token, AUD, ca.bundle(), clock.now() + timedelta(seconds=300))


def test_unknown_kid(ca: CertificateAuthority, clock: ManualClock) -> None:
    rogue = signer_for("rogue", ec.generate_private_key(ec.SECP256R1()))
    token = encode_jws(_claims(clock), key=rogue, kid="not-in-bundle", algorithm="ES256")
    with pytest.raises(JwtUnknownKidError, match="not-in-bundle"):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_known_kid_but_wrong_key(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    rogue = signer_for("rogue", ec.generate_private_key(ec.SECP256R1()))
    token = encode_jws(_claims(clock), key=rogue, kid=kid, algorithm="ES256")
    with pytest.raises(JwtSignatureError):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_foreign_trust_domain(ca: CertificateAuthority, db: Database, clock: ManualClock) -> None:
    foreign = make_ca(db, clock, trust_domain=TrustDomain("foreign.org"))
    token = foreign.issue_jwt_svid(
        JwtSvidParams(SpiffeId.parse("spiffe://foreign.org/w"), (AUD,))
    ).token
    with pytest.raises(JwtNoBundleError, match="foreign"):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())
    # with both bundles it validates, against foreign.org's bundle only
    both = BundleSet([ca.bundle(), foreign.bundle()])
    assert validate_jwt_svid(token, AUD, both, clock.now()).spiffe_id.trust_domain.name == (
        "foreign.org"
    )


def test_foreign_key_cannot_vouch_for_our_ids(
    ca: CertificateAuthority, db: Database, clock: ManualClock
) -> None:
    """A token claiming example.org, signed by foreign.org's key (whose kid is known)."""
    foreign = make_ca(db, clock, trust_domain=TrustDomain("foreign.org"))
    authority, signer = foreign.manager.active(Kind.JWT)
    token = encode_jws(_claims(clock), key=signer, kid=authority.kid, algorithm="ES256")
    both = BundleSet([ca.bundle(), foreign.bundle()])
    with pytest.raises(JwtUnknownKidError):
        validate_jwt_svid(token, AUD, both, clock.now())


def test_tampered_payload(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = ca.issue_jwt_svid(JwtSvidParams(WORKLOAD, (AUD,))).token
    header, _, sig = token.split(".")
    forged = jws({}, _claims(clock, sub="spiffe://example.org/admin"), b"").split(".")[1]
    with pytest.raises(JwtSignatureError):
        validate_jwt_svid(f"{header}.{forged}.{sig}", AUD, ca.bundle(), clock.now())


def _signed(ca: CertificateAuthority, header: dict[str, object], claims: dict[str, object]) -> str:
    _, signer = ca.manager.active(Kind.JWT)
    token = jws(header, claims, b"")
    signing_input = token.rsplit(".", 1)[0].encode()
    public = signer.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    raw = der_to_raw_signature(signer.sign(signing_input, "ES256"), public.curve)
    return jws(header, claims, raw)


def test_missing_kid(ca: CertificateAuthority, clock: ManualClock) -> None:
    token = _signed(ca, {"alg": "ES256", "typ": "JWT"}, _claims(clock))
    with pytest.raises(JwtMissingKidError):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


@pytest.mark.parametrize("claim", ["sub", "aud", "exp"])
def test_required_claims(ca: CertificateAuthority, clock: ManualClock, claim: str) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    claims = _claims(clock)
    del claims[claim]
    token = _signed(ca, {"alg": "ES256", "kid": kid, "typ": "JWT"}, claims)
    with pytest.raises(JwtMissingClaimError, match=repr(claim)):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_bad_typ(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    token = _signed(ca, {"alg": "ES256", "kid": kid, "typ": "at+jwt"}, _claims(clock))
    with pytest.raises(JwtTypeError):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_nbf_in_the_future(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    nbf = int(clock.now().timestamp()) + 60
    token = _signed(ca, {"alg": "ES256", "kid": kid}, _claims(clock, nbf=nbf))
    with pytest.raises(JwtNotYetValidError):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_sub_must_be_a_spiffe_id(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    token = _signed(ca, {"alg": "ES256", "kid": kid}, _claims(clock, sub="SPIFFE://example.org/w"))
    with pytest.raises(JwtSubjectError, match="scheme"):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


@pytest.mark.parametrize("token", ["", "a.b", "not.a.jwt", "a.b.c.d"])
def test_malformed(ca: CertificateAuthority, clock: ManualClock, token: str) -> None:
    with pytest.raises(JwtMalformedError):
        validate_jwt_svid(token, AUD, ca.bundle(), clock.now())


def test_string_aud_is_accepted_on_validation(ca: CertificateAuthority, clock: ManualClock) -> None:
    kid = ca.bundle().jwt_authorities[0].kid
    token = _signed(ca, {"alg": "ES256", "kid": kid}, _claims(clock, aud=AUD))
    assert validate_jwt_svid(token, AUD, ca.bundle(), clock.now()).audience == (AUD,)
