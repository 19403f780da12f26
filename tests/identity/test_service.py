"""open_identity from settings: disk keys, upstream CA from PEM files (root and intermediate)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from identity.bundle import validate_x509_svid
from identity.ca import X509SvidParams
from identity.errors import CaError
from identity.service import open_identity
from identity.spiffeid import SpiffeId
from zerogate.config import Settings
from zerogate.errors import ConfigError
from zerogate.store import Database

WORKLOAD = SpiffeId.parse("spiffe://example.org/w")


def _ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    signer_key = issuer[1] if issuer else key
    aki = (
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key())
        if issuer
        else x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(aki, critical=False)
        .sign(signer_key, hashes.SHA256())
    )


def _write(
    path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None
) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture
def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = Database.open(f"sqlite:///{tmp_path / 'z.db'}")
    yield database
    database.close()


def test_self_signed_with_disk_keys(tmp_path: Path, db: Database) -> None:
    settings = Settings(data_dir=tmp_path / "data", trust_domain="example.org")
    svc = open_identity(settings, db)
    keys = list((tmp_path / "data" / "keys").iterdir())
    assert len(keys) == 2  # the X.509 CA and the JWT key
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    server = svc.ca.issue_server_svid(svc.server_id, svc.server_dns_names)
    assert str(server.spiffe_id) == "spiffe://example.org/zerogate/server"
    dns = server.leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert dns.value.get_values_for_type(x509.DNSName) == ["localhost", "zerogate.zerogate.svc"]
    # a second open (a restart) resumes the same CA
    again = open_identity(settings, db)
    assert again.ca.bundle().x509_authorities == svc.ca.bundle().x509_authorities


def test_upstream_root(tmp_path: Path, db: Database) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("upstream root", root_key, None)
    settings = Settings(
        data_dir=tmp_path,
        trust_domain="example.org",
        identity={
            "key_store": "memory",
            "upstream_ca_cert": _write(tmp_path / "root.pem", cert=root),
            "upstream_ca_key": _write(tmp_path / "root.key", key=root_key),
        },
    )
    svc = open_identity(settings, db)
    assert svc.ca.bundle().x509_authorities == (root,)
    svid = svc.ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    assert len(svid.cert_chain) == 2  # leaf, our intermediate CA
    assert svid.cert_chain[1].issuer == root.subject
    assert validate_x509_svid(svid.cert_chain, svc.ca.bundle(), datetime.now(UTC)) == WORKLOAD


def test_upstream_intermediate_with_bundle(tmp_path: Path, db: Database) -> None:
    root_key, mid_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    root = _ca_cert("root", root_key, None)
    mid = _ca_cert("upstream intermediate", mid_key, (root, root_key))
    settings = Settings(
        data_dir=tmp_path,
        trust_domain="example.org",
        identity={
            "key_store": "memory",
            "upstream_ca_cert": _write(tmp_path / "mid.pem", cert=mid),
            "upstream_ca_key": _write(tmp_path / "mid.key", key=mid_key),
            "upstream_ca_bundle": _write(tmp_path / "roots.pem", cert=root),
        },
    )
    svc = open_identity(settings, db)
    svid = svc.ca.issue_x509_svid(X509SvidParams(WORKLOAD))
    assert [c.subject for c in svid.cert_chain[1:]] == [svid.cert_chain[1].subject, mid.subject]
    assert validate_x509_svid(svid.cert_chain, svc.ca.bundle(), datetime.now(UTC)) == WORKLOAD


def test_upstream_misconfiguration(tmp_path: Path, db: Database) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("root", root_key, None)
    cert = _write(tmp_path / "root.pem", cert=root)
    other = _write(tmp_path / "other.key", key=ec.generate_private_key(ec.SECP256R1()))
    base: dict[str, Any] = {"data_dir": tmp_path, "trust_domain": "example.org"}
    with pytest.raises(ConfigError, match="together"):
        open_identity(Settings(**base, identity={"upstream_ca_cert": cert}), db)
    with pytest.raises(CaError, match="does not match"):
        open_identity(
            Settings(**base, identity={"upstream_ca_cert": cert, "upstream_ca_key": other}), db
        )
    (tmp_path / "bad.pem").write_text("nope")
    with pytest.raises(CaError, match="upstream CA certificate"):
        open_identity(
            Settings(
                **base,
                identity={"upstream_ca_cert": tmp_path / "bad.pem", "upstream_ca_key": other},
            ),
            db,
        )
