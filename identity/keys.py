"""Key managers: where CA and JWT signing keys live, handing out signers, never key bytes.

As SPIRE's ``pkg/server/plugin/keymanager``: a :class:`Key` signs; the private key stays
inside this module. The only path by which it leaves is :func:`sign_certificate`, which hands
it straight to cryptography's certificate builder. Implementations:

- :class:`DiskKeyManager`: one PEM file per key (mode 0600, directory 0700), written
  atomically, so keys survive a restart.
- :class:`MemoryKeyManager`: keys live in the process only (tests, ephemeral servers).

Both pass the same contract suite (tests/identity/test_keys_contract.py). Key types: ECDSA
P-256 (default), P-384, RSA-2048. :func:`load_pem_signer` wraps an upstream CA key read from a
PEM file in the same ``Key`` interface.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from identity.errors import KeyManagerError, KeyNotFoundError

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class KeyType(StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"


# JWS algorithms (RFC 7518 3.1) each key type can produce.
JWS_ALGORITHMS: dict[KeyType, tuple[str, ...]] = {
    KeyType.EC_P256: ("ES256",),
    KeyType.EC_P384: ("ES384",),
    KeyType.RSA_2048: ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


# Immutable signature-algorithm objects, made once (they are on the JWT-SVID hot path).
_ECDSA: dict[str, ec.ECDSA] = {
    "ES256": ec.ECDSA(hashes.SHA256()),
    "ES384": ec.ECDSA(hashes.SHA384()),
    "ES512": ec.ECDSA(hashes.SHA512()),
}


def generate_private_key(key_type: KeyType) -> PrivateKey:
    """A fresh private key (also used for workload keys the CA mints for a caller)."""
    if key_type is KeyType.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if key_type is KeyType.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if key_type is KeyType.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise KeyManagerError(f"unsupported key type {key_type!r}")


def key_type_of(key: PrivateKey | PublicKey) -> KeyType:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyType.EC_P256
        if isinstance(key.curve, ec.SECP384R1):
            return KeyType.EC_P384
        raise KeyManagerError(f"unsupported EC curve {key.curve.name}: use P-256 or P-384")
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyManagerError(f"RSA key of {key.key_size} bits is too small: need >= 2048")
        return KeyType.RSA_2048
    raise KeyManagerError(f"unsupported key {type(key).__name__}")


def default_jws_algorithm(key_type: KeyType) -> str:
    return JWS_ALGORITHMS[key_type][0]


def certificate_hash(key_type: KeyType) -> hashes.SHA256 | hashes.SHA384:
    """The digest used to sign certificates with a key of this type."""
    return hashes.SHA384() if key_type is KeyType.EC_P384 else hashes.SHA256()


class Key(Protocol):
    """A signer. ``sign`` returns DER ECDSA signatures or raw RSA signatures."""

    @property
    def id(self) -> str: ...

    @property
    def key_type(self) -> KeyType: ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes, algorithm: str | None = None) -> bytes:
        """Sign ``data`` with the JWS ``algorithm`` (default: the key type's first)."""
        ...


class KeyManager(Protocol):
    """Creates, finds and deletes keys by id. Key ids are ``[A-Za-z0-9._-]{1,128}``."""

    def generate_key(self, key_id: str, key_type: KeyType) -> Key:
        """Create (or replace) the key ``key_id`` and return its signer."""
        ...

    def get_key(self, key_id: str) -> Key:
        """The signer of ``key_id``; raises KeyNotFoundError."""
        ...

    def list_keys(self) -> list[Key]: ...

    def delete_key(self, key_id: str) -> None:
        """Remove ``key_id``; raises KeyNotFoundError when absent."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class _PrivateKeySigner:
    """A ``Key`` over an in-process private key. Never exposes the key itself."""

    _id: str
    _private: PrivateKey
    _type: KeyType = field(init=False, repr=False)
    _public: PublicKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_type", key_type_of(self._private))
        object.__setattr__(self, "_public", self._private.public_key())

    @property
    def id(self) -> str:
        return self._id

    @property
    def key_type(self) -> KeyType:
        return self._type

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes, algorithm: str | None = None) -> bytes:
        kt = self._type
        alg = algorithm or JWS_ALGORITHMS[kt][0]
        if alg not in JWS_ALGORITHMS[kt]:
            raise KeyManagerError(f"key {self._id} ({kt}) cannot sign with {alg}")
        if isinstance(self._private, ec.EllipticCurvePrivateKey):
            return self._private.sign(data, _ECDSA[alg])
        digest = _HASHES[alg[2:]]()
        if alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            return self._private.sign(data, pss, digest)
        return self._private.sign(data, padding.PKCS1v15(), digest)

    def __repr__(self) -> str:
        return f"Key(id={self._id!r}, type={self.key_type})"


def sign_certificate(key: Key, builder: x509.CertificateBuilder) -> x509.Certificate:
    """The one narrow path by which a private key leaves a signer: into cryptography."""
    if not isinstance(key, _PrivateKeySigner):
        raise KeyManagerError(f"key {key.id} cannot sign certificates in-process")
    return builder.sign(key._private, certificate_hash(key.key_type))


def signer_for(key_id: str, private: PrivateKey) -> Key:
    """Wrap a private key the caller owns (a workload key minted for it) as a ``Key``."""
    key_type_of(private)
    return _PrivateKeySigner(key_id, private)


def key_fingerprint(public: PublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo DER."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _check_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise KeyManagerError(f"invalid key id {key_id!r}: use [A-Za-z0-9._-], 1-128 chars")


class MemoryKeyManager:
    """Keys held in this process only."""

    def __init__(self) -> None:
        self._keys: dict[str, _PrivateKeySigner] = {}
        self._lock = threading.Lock()

    def generate_key(self, key_id: str, key_type: KeyType) -> Key:
        _check_id(key_id)
        signer = _PrivateKeySigner(key_id, generate_private_key(KeyType(key_type)))
        with self._lock:
            self._keys[key_id] = signer
        return signer

    def get_key(self, key_id: str) -> Key:
        with self._lock:
            try:
                return self._keys[key_id]
            except KeyError:
                raise KeyNotFoundError(f"no key with id {key_id!r}") from None

    def list_keys(self) -> list[Key]:
        with self._lock:
            return [self._keys[k] for k in sorted(self._keys)]

    def delete_key(self, key_id: str) -> None:
        with self._lock:
            if self._keys.pop(key_id, None) is None:
                raise KeyNotFoundError(f"no key with id {key_id!r}")


class DiskKeyManager:
    """One PKCS#8 PEM file per key in ``directory`` (0700), each file mode 0600."""

    SUFFIX = ".key.pem"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        self._lock = threading.Lock()
        self._cache: dict[str, _PrivateKeySigner] = {}

    def _path(self, key_id: str) -> Path:
        _check_id(key_id)
        return self.directory / f"{key_id}{self.SUFFIX}"

    def generate_key(self, key_id: str, key_type: KeyType) -> Key:
        path = self._path(key_id)
        private = generate_private_key(KeyType(key_type))
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        signer = _PrivateKeySigner(key_id, private)
        with self._lock:
            self._cache[key_id] = signer
        return signer

    def get_key(self, key_id: str) -> Key:
        path = self._path(key_id)
        with self._lock:
            cached = self._cache.get(key_id)
            if cached is not None and path.exists():
                return cached
        try:
            signer = _PrivateKeySigner(key_id, _read_private_key(path))
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key with id {key_id!r} in {self.directory}") from None
        with self._lock:
            self._cache[key_id] = signer
        return signer

    def list_keys(self) -> list[Key]:
        ids = sorted(
            p.name[: -len(self.SUFFIX)]
            for p in self.directory.iterdir()
            if p.name.endswith(self.SUFFIX) and not p.name.startswith(".")
        )
        return [self.get_key(i) for i in ids]

    def delete_key(self, key_id: str) -> None:
        path = self._path(key_id)
        with self._lock:
            self._cache.pop(key_id, None)
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key with id {key_id!r} in {self.directory}") from None


def _read_private_key(path: Path) -> PrivateKey:
    data = path.read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyManagerError(f"{path}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise KeyManagerError(f"{path}: unsupported key type {type(key).__name__}")
    key_type_of(key)
    return key


def load_pem_signer(path: Path, key_id: str = "upstream") -> Key:
    """A signer over a private key read from a PEM file (the upstream CA key)."""
    try:
        return _PrivateKeySigner(key_id, _read_private_key(Path(path)))
    except FileNotFoundError:
        raise KeyManagerError(f"key file not found: {path}") from None


def open_key_manager(kind: str, directory: Path) -> KeyManager:
    """The key manager configured by ``settings.identity.key_store``."""
    if kind == "memory":
        return MemoryKeyManager()
    if kind == "disk":
        return DiskKeyManager(directory)
    raise KeyManagerError(f"unknown key store {kind!r}: use disk or memory")
