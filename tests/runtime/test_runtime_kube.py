"""Kubernetes pod actions against a local HTTP server that checks the API server wire format
(no cluster here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from runtime.errors import ActionError
from runtime.kube import KubernetesPods


@pytest.fixture
def apiserver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "type": self.headers.get("content-type"),
                    "auth": self.headers.get("authorization"),
                    "body": json.loads(body),
                }
            )
            status = 429 if "blocked" in self.path else 200
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        do_PATCH = _record
        do_POST = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_label_is_a_merge_patch(apiserver: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = apiserver
    pods = KubernetesPods(url, token="t0k")
    pods.label("ml", "model-0", {"zerogate.io/quarantined": "true"})
    assert seen == [
        {
            "method": "PATCH",
            "path": "/api/v1/namespaces/ml/pods/model-0",
            "type": "application/merge-patch+json",
            "auth": "Bearer t0k",
            "body": {"metadata": {"labels": {"zerogate.io/quarantined": "true"}}},
        }
    ]


def test_evict_posts_a_policy_v1_eviction(apiserver: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = apiserver
    KubernetesPods(url).evict("ml", "model-0")
    assert seen[0]["path"] == "/api/v1/namespaces/ml/pods/model-0/eviction"
    assert seen[0]["body"] == {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "model-0", "namespace": "ml"},
    }
    with pytest.raises(ActionError, match="PodDisruptionBudget"):
        KubernetesPods(url).evict("ml", "blocked")
