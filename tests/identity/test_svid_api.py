"""`POST /v1/svid/x509`: SVIDs for remote callers attested by join token or k8s PSAT."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from identity.attestation import FileJwks, JoinTokens, PsatAttestor
from identity.bundle import Bundle, validate_x509_svid
from identity.service import IdentityService, open_identity
from identity.spiffeid import SpiffeId, TrustDomain
from identity.svid_api import router
from zerogate.audit import AuditLog
from zerogate.config import Settings
from zerogate.store import Database

TD = TrustDomain.parse("example.org")
CLUSTER_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[TestClient, IdentityService, JoinTokens]]:
    db = Database.open(f"sqlite:///{tmp_path / 'z.db'}")
    audit = AuditLog.open(db, signing_key=tmp_path / "audit.pem")
    settings = Settings(
        data_dir=tmp_path, trust_domain="example.org", identity={"key_store": "memory"}
    )
    service = open_identity(settings, db, audit)
    service.entries.create(
        {
            "spiffe_id": "spiffe://example.org/ns/ml/sa/trainer",
            "selectors": ["k8s:ns:ml", "k8s:sa:trainer"],
            "dns_names": ["trainer.ml.svc"],
        }
    )
    jwk = json.loads(ECAlgorithm.to_jwk(CLUSTER_KEY.public_key()))
    jwk.update(kid="k1", use="sig", alg="ES256")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    psat = PsatAttestor(jwks=FileJwks(tmp_path / "jwks.json"), audience="zerogate")
    tokens = JoinTokens(db, audit=audit, trust_domain=TD)
    app = FastAPI()
    app.include_router(router(service, tokens, psat))
    yield TestClient(app), service, tokens
    audit.close()
    db.close()


def _csr() -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def _psat(**override: Any) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "aud": ["zerogate"],
        "exp": int((now + timedelta(minutes=10)).timestamp()),
        "iat": int(now.timestamp()),
        "sub": "system:serviceaccount:ml:trainer",
        "kubernetes.io": {
            "namespace": "ml",
            "serviceaccount": {"name": "trainer", "uid": "u-sa"},
            "pod": {"name": "trainer-0", "uid": "u-pod"},
        },
    }
    claims.update(override)
    return jwt.encode(claims, CLUSTER_KEY, algorithm="ES256", headers={"kid": "k1"})


def _check_svid(body: dict[str, Any], key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> None:
    chain = x509.load_pem_x509_certificates(body["svid"].encode())
    bundle = Bundle.from_pem(TD, body["bundle"])
    assert validate_x509_svid(chain, bundle, datetime.now(UTC)) == SpiffeId.parse(spiffe_id)
    assert chain[0].public_key() == key.public_key()
    assert body["spiffe_id"] == spiffe_id


def test_join_token_gets_an_svid_once(
    setup: tuple[TestClient, IdentityService, JoinTokens],
) -> None:
    client, _, tokens = setup
    issued = tokens.generate("spiffe://example.org/node/edge-1", timedelta(minutes=5))
    csr, key = _csr()
    request = {"csr": csr, "attestation": {"type": "join_token", "token": issued.token}}
    r = client.post("/v1/svid/x509", json=request)
    assert r.status_code == 200, r.text
    _check_svid(r.json(), key, "spiffe://example.org/node/edge-1")
    again = client.post("/v1/svid/x509", json=request)
    assert again.status_code == 401
    assert "already used" in again.json()["message"]


def test_psat_selects_the_matching_entry(
    setup: tuple[TestClient, IdentityService, JoinTokens],
) -> None:
    client, _, _ = setup
    csr, key = _csr()
    r = client.post(
        "/v1/svid/x509", json={"csr": csr, "attestation": {"type": "k8s_psat", "token": _psat()}}
    )
    assert r.status_code == 200, r.text
    _check_svid(r.json(), key, "spiffe://example.org/ns/ml/sa/trainer")
    leaf = x509.load_pem_x509_certificates(r.json()["svid"].encode())[0]
    dns = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns.get_values_for_type(x509.DNSName) == ["trainer.ml.svc"]


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda r: r.update(csr="not a csr"), 400, "invalid_csr"),
        (lambda r: r.update(extra=1), 400, "invalid_request"),
        (lambda r: r["attestation"].update(type="aws_iid"), 400, "invalid_request"),
        (lambda r: r["attestation"].update(token=_psat(aud=["other"])), 401, "attestation_failed"),
        (lambda r: r["attestation"].update(token=_psat(exp=1)), 401, "attestation_failed"),
        (
            lambda r: r["attestation"].update(
                token=_psat(
                    sub="system:serviceaccount:ml:other",
                    **{
                        "kubernetes.io": {
                            "namespace": "ml",
                            "serviceaccount": {"name": "other", "uid": "x"},
                            "pod": {"name": "p", "uid": "y"},
                        }
                    },
                )
            ),
            403,
            "no_entry",
        ),
        (lambda r: r.update(spiffe_id="spiffe://example.org/someone-else"), 403, "forbidden"),
        (lambda r: r.update(spiffe_id="spiffe://Bad/ID"), 400, "invalid_spiffe_id"),
    ],
    ids=[
        "bad-csr",
        "unknown-field",
        "unknown-attestor",
        "wrong-audience",
        "expired",
        "no-entry",
        "not-entitled",
        "bad-id",
    ],
)
def test_refusals(
    setup: tuple[TestClient, IdentityService, JoinTokens],
    mutate: Any,
    status: int,
    code: str,
) -> None:
    client, _, _ = setup
    csr, _ = _csr()
    request: dict[str, Any] = {"csr": csr, "attestation": {"type": "k8s_psat", "token": _psat()}}
    mutate(request)
    r = client.post("/v1/svid/x509", json=request)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


def test_denied_identity_is_refused(
    setup: tuple[TestClient, IdentityService, JoinTokens],
) -> None:
    client, service, _ = setup
    service.deny_list.add("spiffe_id", "spiffe://example.org/ns/ml/sa/trainer", reason="test")
    csr, _ = _csr()
    r = client.post(
        "/v1/svid/x509", json={"csr": csr, "attestation": {"type": "k8s_psat", "token": _psat()}}
    )
    assert r.status_code == 403
    assert r.json()["code"] == "identity_denied"
