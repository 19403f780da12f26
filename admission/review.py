"""The AdmissionReview ``admission.k8s.io/v1`` wire model: parse a request, build a response.

Kubernetes reference: "Dynamic Admission Control", sections "Request" and "Response"
(https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/)
and ``k8s.io/api/admission/v1/types.go``. The rules enforced here:

- ``apiVersion`` must be ``admission.k8s.io/v1`` and ``kind`` ``AdmissionReview``; the
  webhook configuration only offers ``admissionReviewVersions: [v1]``.
- ``request.uid`` is required and ``response.uid`` MUST echo it.
- ``operation`` is one of CREATE, UPDATE, DELETE, CONNECT; CREATE and UPDATE carry
  ``request.object``; DELETE carries ``oldObject``.
- A denial sets ``allowed: false`` and a ``status`` (``code`` 403 and a ``message``).
- A patch is a base64-encoded JSON Patch (RFC 6902) with ``patchType: JSONPatch``.
- ``warnings`` are plain strings (each under 120 characters is recommended; longer ones are
  kept but truncated to 256 here, as kube-apiserver does not reject them).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from zerogate import json_input
from zerogate.errors import ZerogateError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
MAX_WARNING_CHARS = 256

__all__ = [
    "API_VERSION",
    "AdmissionRequest",
    "AdmissionResponse",
    "ReviewError",
    "parse_review",
]


class ReviewError(ZerogateError):
    """The body is not a well-formed AdmissionReview v1 (HTTP 400)."""

    code = "invalid_admission_review"


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The fields zerogate reads from ``request``; ``raw`` is the request as received."""

    uid: str
    kind: Mapping[str, str]
    operation: str
    namespace: str
    name: str
    user: str
    dry_run: bool
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    raw: Mapping[str, Any]

    @property
    def kind_name(self) -> str:
        return str(self.kind.get("kind", ""))

    @property
    def group(self) -> str:
        return str(self.kind.get("group", ""))

    def subject(self) -> Mapping[str, Any] | None:
        """The object policies judge: ``object``, or ``oldObject`` for DELETE."""
        return self.object if self.object is not None else self.old_object


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if value is not None and not isinstance(value, kind):
        raise ReviewError(f"{where}.{key} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def parse_review(body: bytes | str | Mapping[str, Any]) -> AdmissionRequest:
    """Parse and validate an AdmissionReview request body; ReviewError names the rule broken."""
    if isinstance(body, (bytes, str)):
        try:
            doc = json_input.loads(body)
        except json_input.JsonInputError as exc:
            raise ReviewError(f"body is not JSON: {exc}") from None
    else:
        doc = body
    if not isinstance(doc, Mapping):
        raise ReviewError("AdmissionReview must be a JSON object")
    if doc.get("apiVersion") != API_VERSION:
        raise ReviewError(
            f"apiVersion must be {API_VERSION!r} (admissionReviewVersions: [v1]), "
            f"got {doc.get('apiVersion')!r}"
        )
    if doc.get("kind") != KIND:
        raise ReviewError(f"kind must be {KIND!r}, got {doc.get('kind')!r}")
    req = doc.get("request")
    if not isinstance(req, Mapping):
        raise ReviewError("request is missing or not an object")
    uid = req.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("request.uid is missing: the response must echo it")
    kind = _field(req, "kind", Mapping, "request") or {}
    if not isinstance(kind.get("kind"), str) or not kind.get("kind"):
        raise ReviewError("request.kind.kind is missing")
    operation = req.get("operation")
    if operation not in OPERATIONS:
        raise ReviewError(
            f"request.operation must be one of {sorted(OPERATIONS)}, got {operation!r}"
        )
    obj = _field(req, "object", Mapping, "request")
    old = _field(req, "oldObject", Mapping, "request")
    if operation in ("CREATE", "UPDATE") and obj is None:
        raise ReviewError(f"request.object is required for {operation}")
    if operation == "UPDATE" and old is None:
        raise ReviewError("request.oldObject is required for UPDATE")
    user_info = _field(req, "userInfo", Mapping, "request") or {}
    dry_run = req.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ReviewError("request.dryRun must be a boolean")
    namespace = _field(req, "namespace", str, "request") or ""
    name = _field(req, "name", str, "request") or ""
    if not name and isinstance(obj, Mapping):
        meta = obj.get("metadata")
        if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
            name = meta["name"]
    return AdmissionRequest(
        uid=uid,
        kind={k: str(v) for k, v in kind.items()},
        operation=str(operation),
        namespace=namespace,
        name=name,
        user=str(user_info.get("username", "")),
        dry_run=dry_run,
        object=obj,
        old_object=old,
        raw=req,
    )


@dataclass(slots=True)
class AdmissionResponse:
    """What zerogate answers; ``to_review()`` gives the AdmissionReview v1 JSON."""

    uid: str
    allowed: bool
    message: str = ""
    code: int = 200
    warnings: list[str] = field(default_factory=list)
    patch: list[dict[str, Any]] | None = None

    def to_review(self) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": self.uid, "allowed": self.allowed}
        if not self.allowed:
            # status is a metav1.Status; 403 Forbidden for a policy denial
            response["status"] = {"code": self.code, "message": self.message}
        elif self.message:
            response["status"] = {"code": 200, "message": self.message}
        if self.warnings:
            response["warnings"] = [w[:MAX_WARNING_CHARS] for w in self.warnings]
        if self.patch:
            encoded = json.dumps(self.patch, separators=(",", ":")).encode()
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(encoded).decode()
        return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
