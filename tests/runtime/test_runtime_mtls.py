"""POST /v1/runtime/falco over real mTLS: Falco's X.509-SVID (minted by zerogate's CA) is
accepted, another SVID is refused by policy (403), no client certificate is 401, and nothing
is stored for the refused ones. Uses the server's TLS listener pieces and mtls_caller."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from runtime_corpus import docs_raw

from identity.ca import X509SvidParams
from identity.service import IdentityService, open_identity
from identity.spiffeid import SpiffeId
from policy.service import open_policy
from runtime.events import EventStore
from runtime.service import open_runtime
from zerogate.audit import AuditLog
from zerogate.clock import SYSTEM_CLOCK
from zerogate.config import Settings
from zerogate.server import bind_socket, listener_server
from zerogate.store import Database
from zerogate.tls import ServerTLS
from zerogate.wiring import mtls_caller

REPO = Path(__file__).resolve().parents[2]


def _client_ctx(identity: IdentityService, tmp: Path, spiffe_id: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=identity.ca.bundle().to_pem())
    if spiffe_id is not None:
        svid = identity.ca.issue_x509_svid(X509SvidParams(spiffe_id=SpiffeId.parse(spiffe_id)))
        name = spiffe_id.rsplit("/", 1)[-1]
        (tmp / f"{name}.pem").write_bytes(svid.chain_pem())
        (tmp / f"{name}.key").write_bytes(svid.key_pem())
        ctx.load_cert_chain(tmp / f"{name}.pem", tmp / f"{name}.key")
    return ctx


@pytest.fixture
async def server(
    database: Database, runtime_audit: AuditLog, tmp_path: Path
) -> AsyncIterator[tuple[str, IdentityService, Database]]:
    settings = Settings(
        data_dir=tmp_path,
        identity={"key_store": "memory"},
        policy={"rego_dir": REPO / "rego", "watch": False},
    )
    identity = open_identity(settings, database, runtime_audit)
    policy = open_policy(settings, runtime_audit)
    rt = open_runtime(settings, database, runtime_audit, policy=policy)
    app = FastAPI()
    app.include_router(rt.router(caller=mtls_caller(identity, SYSTEM_CLOCK)))
    server_svid = identity.ca.issue_x509_svid(
        X509SvidParams(
            spiffe_id=SpiffeId.parse("spiffe://zerogate.internal/zerogate/server"),
            dns_names=("localhost",),
        )
    )
    tls = ServerTLS(
        server_svid.chain_pem(), server_svid.key_pem(), identity.ca.bundle().to_pem().encode()
    )
    sock = bind_socket("runtime", "127.0.0.1", 0)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    uv = listener_server(app, tls=tls)
    await rt.start()
    task = asyncio.create_task(uv.serve(sockets=[sock]))
    while not uv.started:
        await asyncio.sleep(0.01)
    try:
        yield f"https://localhost:{sock.getsockname()[1]}", identity, database
    finally:
        uv.should_exit = True
        await asyncio.wait_for(task, 10)
        await rt.stop()


@pytest.mark.parametrize(
    ("client_id", "status"),
    [
        ("spiffe://zerogate.internal/falco", 200),
        ("spiffe://zerogate.internal/ns/default/sa/app", 403),
        (None, 401),
    ],
    ids=["falco-svid", "other-svid", "no-client-cert"],
)
async def test_submit_over_mtls(
    server: tuple[str, IdentityService, Database],
    tmp_path: Path,
    client_id: str | None,
    status: int,
) -> None:
    base, identity, db = server
    ctx = _client_ctx(identity, tmp_path, client_id)
    async with httpx.AsyncClient(base_url=base, verify=ctx, timeout=10) as client:
        reply = await client.post("/v1/runtime/falco", json=docs_raw())
    assert reply.status_code == status, reply.text
    assert EventStore(db).count() == (1 if status == 200 else 0)
