"""Admission test helpers: constraints, certificates, and the webhook served over real HTTPS
(as tests/kernel/test_tls.py serves it)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from x509_support import issue

from admission.admit import Admitter
from admission.gatekeeper import (
    Constraint,
    parse_constraint,
)
from admission.webhook import router
from zerogate.server import Listener, bind_socket, listener_server
from zerogate.tls import ServerTLS

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
LIBRARY = HERE / "gatekeeper-library"
PAYLOADS = HERE / "payloads"


def constraint(kind: str, name: str, *, action: str = "deny", **spec: object) -> Constraint:
    body = {
        "apiVersion": "constraints.gatekeeper.sh/v1beta1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"enforcementAction": action, **spec},
    }
    return parse_constraint(body)


@asynccontextmanager
async def serve_webhook(
    admitter: Admitter, *, serving: tuple[bytes, bytes, bytes] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The webhook router on a real TLS listener; yields a client that trusts only the CA
    (the caBundle a kube-apiserver would be given). ``serving`` = (cert chain PEM, key PEM,
    trust bundle PEM); by default a throwaway CA issues a certificate for localhost and the
    Service DNS name."""

    if serving is None:
        ca = issue("zerogate-test-ca")
        leaf = issue("zerogate-webhook", ca=ca, dns=["localhost", "zerogate.zerogate.svc"])
        serving = (leaf.cert_pem, leaf.key_pem, ca.cert_pem)
    chain_pem, key_pem, trust_pem = serving
    app = FastAPI()
    app.include_router(router(admitter))
    tls = ServerTLS(chain_pem, key_pem, None)
    listener = Listener("admission", app, "127.0.0.1", 0, tls)
    sock = bind_socket(listener.what, listener.host, listener.port)
    server = listener_server(listener.app, tls=tls)  # as zerogate serve runs it
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    ctx = ssl.create_default_context(cadata=trust_pem.decode())
    try:
        async with httpx.AsyncClient(
            base_url=f"https://localhost:{port}", verify=ctx, timeout=10
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
