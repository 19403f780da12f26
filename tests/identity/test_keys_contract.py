"""One contract every KeyManager implementation passes (as SPIRE's keymanagertest)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from identity.errors import KeyManagerError, KeyNotFoundError
from identity.keys import (
    JWS_ALGORITHMS,
    DiskKeyManager,
    KeyManager,
    KeyType,
    MemoryKeyManager,
    PublicKey,
)


@pytest.fixture(params=["memory", "disk"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyManager]:
    if request.param == "memory":
        yield MemoryKeyManager()
    else:
        yield DiskKeyManager(tmp_path / "keys")


def _verify(public: PublicKey, sig: bytes, data: bytes, alg: str) -> None:
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(sig, data, ec.ECDSA(digest))
    elif alg.startswith("PS"):
        public.verify(
            sig, data, padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest
        )
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(sig, data, padding.PKCS1v15(), digest)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generate_sign_verify(manager: KeyManager, key_type: KeyType) -> None:
    key = manager.generate_key("ca-1", key_type)
    assert key.id == "ca-1" and key.key_type is key_type
    for alg in JWS_ALGORITHMS[key_type]:
        sig = key.sign(b"payload", alg)
        _verify(key.public_key(), sig, b"payload", alg)
        with pytest.raises(InvalidSignature):
            _verify(key.public_key(), sig, b"tampered", alg)


def test_get_returns_the_same_key(manager: KeyManager) -> None:
    key = manager.generate_key("k", KeyType.EC_P256)
    again = manager.get_key("k")
    assert again.public_key() == key.public_key()
    _verify(key.public_key(), again.sign(b"x"), b"x", "ES256")


def test_generate_replaces(manager: KeyManager) -> None:
    first = manager.generate_key("k", KeyType.EC_P256)
    second = manager.generate_key("k", KeyType.EC_P256)
    assert first.public_key() != second.public_key()
    assert manager.get_key("k").public_key() == second.public_key()


def test_list_and_delete(manager: KeyManager) -> None:
    manager.generate_key("b", KeyType.EC_P256)
    manager.generate_key("a", KeyType.EC_P384)
    assert [k.id for k in manager.list_keys()] == ["a", "b"]
    manager.delete_key("a")
    assert [k.id for k in manager.list_keys()] == ["b"]
    with pytest.raises(KeyNotFoundError):
        manager.get_key("a")
    with pytest.raises(KeyNotFoundError):
        manager.delete_key("a")


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", "x" * 129, "sp ace"])
def test_bad_key_ids_are_rejected(manager: KeyManager, bad: str) -> None:
    with pytest.raises(KeyManagerError, match="invalid key id"):
        manager.generate_key(bad, KeyType.EC_P256)


def test_algorithm_must_fit_the_key(manager: KeyManager) -> None:
    key = manager.generate_key("k", KeyType.EC_P256)
    with pytest.raises(KeyManagerError, match="cannot sign with RS256"):
        key.sign(b"x", "RS256")


def test_signer_exposes_no_private_key(manager: KeyManager) -> None:
    key = manager.generate_key("k", KeyType.EC_P256)
    public_names = [n for n in dir(key) if not n.startswith("_")]
    assert sorted(public_names) == ["id", "key_type", "public_key", "sign"]
    assert "PRIVATE" not in repr(key)


def test_disk_files_are_0600_and_survive_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    key = DiskKeyManager(directory).generate_key("ca", KeyType.EC_P256)
    path = directory / "ca.key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    reopened = DiskKeyManager(directory).get_key("ca")
    assert reopened.public_key() == key.public_key()
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_disk_rejects_a_corrupt_key_file(tmp_path: Path) -> None:
    manager = DiskKeyManager(tmp_path)
    (tmp_path / "bad.key.pem").write_text("not a key")
    with pytest.raises(KeyManagerError, match="not an unencrypted PEM private key"):
        manager.get_key("bad")
