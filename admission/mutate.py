"""SPIFFE Workload API injection: the JSON Patch that gives an opted-in pod its socket.

A pod annotated ``zerogate.io/inject: "true"`` gets a ``hostPath`` volume holding the
Workload API socket's directory, a read-only mount of it in every container and init
container, and ``SPIFFE_ENDPOINT_SOCKET`` (the SPIFFE Workload Endpoint spec, section 4:
"unix:" URI of the socket) in their environment. The patch is idempotent: a pod that
already carries the volume, mounts and variable gets an empty patch. Paths follow RFC 6902
with RFC 6901 pointers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

INJECT_ANNOTATION = "zerogate.io/inject"
VOLUME_NAME = "zerogate-workload-api"
MOUNT_PATH = "/spiffe-workload-api"
ENV_NAME = "SPIFFE_ENDPOINT_SOCKET"
DEFAULT_SOCKET = "/run/zerogate/sockets/agent.sock"

__all__ = ["DEFAULT_SOCKET", "INJECT_ANNOTATION", "injection_patch", "wants_injection"]


def wants_injection(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, Mapping) and annotations.get(INJECT_ANNOTATION) == "true"


def injection_patch(
    pod: Mapping[str, Any], *, socket_path: str = DEFAULT_SOCKET
) -> list[dict[str, Any]]:
    """The JSON Patch operations that inject the Workload API socket (empty if present)."""
    if not wants_injection(pod):
        return []
    socket = PurePosixPath(socket_path)
    endpoint = f"unix://{MOUNT_PATH}/{socket.name}"
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    volume = {"name": VOLUME_NAME, "hostPath": {"path": str(socket.parent), "type": "Directory"}}
    volumes = spec.get("volumes")
    if not isinstance(volumes, list):
        ops.append({"op": "add", "path": "/spec/volumes", "value": [volume]})
    elif not any(isinstance(v, Mapping) and v.get("name") == VOLUME_NAME for v in volumes):
        ops.append({"op": "add", "path": "/spec/volumes/-", "value": volume})
    mount = {"name": VOLUME_NAME, "mountPath": MOUNT_PATH, "readOnly": True}
    env = {"name": ENV_NAME, "value": endpoint}
    for field in ("initContainers", "containers"):
        containers = spec.get(field)
        if not isinstance(containers, list):
            continue
        for idx, container in enumerate(containers):
            if not isinstance(container, Mapping):
                continue
            base = f"/spec/{field}/{idx}"
            mounts = container.get("volumeMounts")
            if not isinstance(mounts, list):
                ops.append({"op": "add", "path": f"{base}/volumeMounts", "value": [mount]})
            elif not any(isinstance(m, Mapping) and m.get("name") == VOLUME_NAME for m in mounts):
                ops.append({"op": "add", "path": f"{base}/volumeMounts/-", "value": mount})
            envs = container.get("env")
            if not isinstance(envs, list):
                ops.append({"op": "add", "path": f"{base}/env", "value": [env]})
            elif not any(isinstance(e, Mapping) and e.get("name") == ENV_NAME for e in envs):
                ops.append({"op": "add", "path": f"{base}/env/-", "value": env})
    return ops
