"""Kubernetes pod actions (label, evict) over the API server's REST interface with httpx.

Decision: no ``kubernetes`` client dependency. Two calls do not justify its size; these are
the documented wire formats:

- label: ``PATCH /api/v1/namespaces/{ns}/pods/{name}`` with ``Content-Type:
  application/merge-patch+json`` (RFC 7386) and ``{"metadata": {"labels": {...}}}``;
- evict: ``POST /api/v1/namespaces/{ns}/pods/{name}/eviction`` with a ``policy/v1``
  ``Eviction`` object (the eviction subresource honours PodDisruptionBudgets: 429 means a
  budget forbids it now).

``KubernetesPods.in_cluster()`` uses the pod's service account (token and CA under
/var/run/secrets/kubernetes.io/serviceaccount, ``KUBERNETES_SERVICE_HOST``/``_PORT``); it
needs RBAC ``patch`` on pods and ``create`` on pods/eviction. Not exercised against a live
cluster here: tests run it against a local HTTP server that checks the wire format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import httpx

from runtime.errors import ActionError

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesPods:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client: httpx.Client | None = None,
        verify: str | bool = True,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._base = base_url.rstrip("/")
        self._client = client or httpx.Client(headers=headers, verify=verify, timeout=10.0)

    @classmethod
    def in_cluster(cls, sa_dir: Path = SA_DIR) -> KubernetesPods:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ActionError("not in a Kubernetes pod: KUBERNETES_SERVICE_HOST is not set")
        token = (sa_dir / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token=token, verify=str(sa_dir / "ca.crt"))

    def _pod(self, namespace: str, pod: str) -> str:
        if not namespace or not pod:
            raise ActionError("a pod action needs a namespace and a pod name")
        return (
            f"{self._base}/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
        )

    def label(self, namespace: str, pod: str, labels: Mapping[str, str]) -> None:
        reply = self._client.patch(
            self._pod(namespace, pod),
            json={"metadata": {"labels": dict(labels)}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if reply.status_code >= 300:
            raise ActionError(
                f"label {namespace}/{pod}: HTTP {reply.status_code} {reply.text[:200]}"
            )

    def evict(self, namespace: str, pod: str) -> None:
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": namespace},
        }
        reply = self._client.post(self._pod(namespace, pod) + "/eviction", json=body)
        if reply.status_code == 429:
            raise ActionError(f"evict {namespace}/{pod}: a PodDisruptionBudget forbids it now")
        if reply.status_code >= 300:
            raise ActionError(
                f"evict {namespace}/{pod}: HTTP {reply.status_code} {reply.text[:200]}"
            )

    def close(self) -> None:
        self._client.close()
