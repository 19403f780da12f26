"""Validating/MutatingWebhookConfiguration manifests (``zerogate admission manifests``).

Shapes from ``admissionregistration.k8s.io/v1`` (Kubernetes "Dynamic Admission Control"):

- ``admissionReviewVersions: [v1]``: zerogate speaks only AdmissionReview v1;
- ``sideEffects: None``: reviews (dry-run ones too) change nothing outside the answer;
- ``failurePolicy``: ``Fail`` when zerogate fails closed (``admission.failure_mode: deny``),
  ``Ignore`` when it fails open;
- ``timeoutSeconds``: the webhook's own deadline, one second above zerogate's per-request
  deadline so zerogate's answer (with its failure mode) arrives first (1..30 s);
- ``namespaceSelector`` exempting zerogate's own namespace and ``kube-system``, so a broken
  webhook can never block its own repair;
- ``caBundle``: base64 of the PEM trust bundle that verifies the serving certificate.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import yaml

__all__ = ["render", "webhook_configurations"]


def _timeout(deadline_s: float) -> int:
    return max(1, min(30, math.ceil(deadline_s) + 1))


def webhook_configurations(
    *,
    ca_bundle_pem: bytes,
    namespace: str = "zerogate",
    service: str = "zerogate",
    port: int = 443,
    failure_mode: str = "deny",
    validate_timeout_s: float = 3.0,
    mutate_timeout_s: float = 1.0,
) -> list[dict[str, Any]]:
    if b"-----BEGIN CERTIFICATE-----" not in ca_bundle_pem:
        raise ValueError("caBundle must be a PEM certificate bundle")
    ca = base64.b64encode(ca_bundle_pem).decode()
    exempt = {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": sorted({namespace, "kube-system"}),
            }
        ]
    }
    policy = "Fail" if failure_mode == "deny" else "Ignore"
    labels = {"app.kubernetes.io/name": "zerogate", "app.kubernetes.io/component": "admission"}

    def client(path: str) -> dict[str, Any]:
        return {
            "service": {"namespace": namespace, "name": service, "path": path, "port": port},
            "caBundle": ca,
        }

    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"{service}-validating", "labels": labels},
        "webhooks": [
            {
                "name": "validation.zerogate.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": policy,
                "matchPolicy": "Equivalent",
                "timeoutSeconds": _timeout(validate_timeout_s),
                "clientConfig": client("/admission/validate"),
                "namespaceSelector": exempt,
                "rules": [
                    {
                        "apiGroups": ["*"],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["*"],
                        "scope": "*",
                    }
                ],
            }
        ],
    }
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": f"{service}-mutating", "labels": labels},
        "webhooks": [
            {
                "name": "inject.zerogate.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": policy,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": _timeout(mutate_timeout_s),
                "clientConfig": client("/admission/mutate"),
                "namespaceSelector": exempt,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            }
        ],
    }
    return [validating, mutating]


def render(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
