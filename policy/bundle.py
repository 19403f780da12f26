"""OPA bundles: the tar.gz that OPA sidecars download (served at ``/bundles/{name}.tar.gz``,
built offline by ``zerogate policy bundle build``).

Layout (OPA docs, "Bundles" / ``v1/bundle/bundle.go``): ``/.manifest`` (JSON: ``revision``,
``roots``, ``rego_version``), ``/data.json`` (the merged data document), one entry per
``.rego`` module at its relative path, and optionally ``/.signatures.json``. The archive is
byte-for-byte deterministic (sorted entries, zero mtimes, gzip without timestamp), so the
served and the offline bundle are equal and the ETag (SHA-256 of the bytes) only changes
with the content.

Signing follows OPA's bundle signing spec ("Signing" in the bundle docs, ``v1/bundle/sign.go``
and ``hash.go``): ``.signatures.json`` = ``{"signatures": [JWS]}`` whose payload is
``{"files": [{"name", "hash", "algorithm": "SHA-256"}...], "keyid"?}``, one entry per file
except ``.signatures.json``; JSON files are hashed over their sorted-key compact encoding,
other files over their bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from policy.engine import compute_revision
from policy.errors import PolicyInputError
from policy.sources import load_directory

DEFAULT_BUNDLE = "zerogate"
_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Bundle:
    name: str
    revision: str
    content: bytes

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.content).hexdigest()[:32] + '"'


def roots_for(modules: Mapping[str, str], data: Mapping[str, Any]) -> list[str]:
    """The paths this bundle owns: each package path and each top-level data key, with
    any root inside another dropped (OPA requires roots not to overlap)."""
    candidates = set(data)
    for text in modules.values():
        match = _PACKAGE.search(text)
        if match:
            candidates.add(match.group(1).replace(".", "/"))
    roots: list[str] = []
    for root in sorted(candidates, key=lambda r: (r.count("/"), r)):
        if not any(root == r or root.startswith(r + "/") for r in roots):
            roots.append(root)
    return sorted(roots)


def opa_file_hash(name: str, raw: bytes) -> str:
    """SHA-256 as OPA's ``bundle.HashFile``: JSON over its sorted compact form."""
    if name.endswith(".json") or name == ".manifest":
        value = json.loads(raw)
        raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(raw).hexdigest()


def load_signing_key(path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyInputError(f"bundle signing key {path}: {exc}") from exc


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise PolicyInputError(f"unsupported bundle signing key type {type(key).__name__}")


def sign_files(files: Mapping[str, bytes], key: Any, *, keyid: str | None = None) -> bytes:
    """The ``.signatures.json`` content for ``files`` (name -> bytes, no leading slash)."""
    payload: dict[str, Any] = {
        "files": [
            {"name": name, "hash": opa_file_hash(name, files[name]), "algorithm": "SHA-256"}
            for name in sorted(files)
        ]
    }
    headers = {"kid": keyid} if keyid else None
    if keyid:
        payload["keyid"] = keyid
    token = jwt.encode(payload, key, algorithm=_algorithm(key), headers=headers)
    return json.dumps({"signatures": [token]}, indent=2).encode()


def build_bundle(
    modules: Mapping[str, str],
    data: Mapping[str, Any],
    *,
    name: str = DEFAULT_BUNDLE,
    signing_key: Any | None = None,
    keyid: str | None = None,
) -> Bundle:
    revision = compute_revision(modules, data)
    manifest = {"revision": revision, "roots": roots_for(modules, data), "rego_version": 1}
    files: dict[str, bytes] = {
        ".manifest": json.dumps(manifest, indent=2, sort_keys=True).encode(),
        "data.json": json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode(),
    }
    for module_id, text in modules.items():
        files[module_id.lstrip("/")] = text.encode()
    if signing_key is not None:
        files[".signatures.json"] = sign_files(files, signing_key, keyid=keyid)
    return Bundle(name, revision, _targz(files))


def bundle_from_directory(
    root: Path, *, name: str = DEFAULT_BUNDLE, signing_key: Any | None = None
) -> Bundle:
    sources = load_directory(root)
    return build_bundle(sources.modules, sources.data, name=name, signing_key=signing_key)


def read_bundle(content: bytes) -> dict[str, bytes]:
    """The files of a bundle (leading slash removed): for tests and ``policy check``."""
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            if extracted is not None:
                out[member.name.lstrip("/")] = extracted.read()
    return out


def _targz(files: Mapping[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            body = files[name]
            info = tarfile.TarInfo("/" + name)
            info.size = len(body)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(body))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    return out.getvalue()
