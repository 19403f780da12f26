"""Server TLS over real sockets: client certificates reach the app, rotation without restart."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from fastapi import FastAPI, Request
from x509_support import Issued, issue

from zerogate.server import Listener, bind_socket, listener_server
from zerogate.tls import PeerCertH11Protocol, PeerCertProtocol, ServerTLS, peer_certificate


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(request: Request) -> dict[str, str | None]:
        cert = peer_certificate(request.scope)
        if cert is None:
            return {"uri": None}
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return {"uri": uris[0] if uris else None}

    return app


@pytest.fixture(params=[PeerCertProtocol, PeerCertH11Protocol], ids=["httptools", "h11"])
async def served(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[str, ServerTLS, Issued]]:
    """Both protocol classes: what serve uses (httptools) and the fallback without it."""
    ca = issue("test-ca")
    server_cert = issue("server", ca=ca)
    tls = ServerTLS(server_cert.cert_pem, server_cert.key_pem, ca.cert_pem)
    listener = Listener("test", _app(), "127.0.0.1", 0, tls)
    sock = bind_socket(listener.what, listener.host, listener.port)
    server = listener_server(listener.app, tls=tls, http=request.param)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    yield f"https://localhost:{port}", tls, ca
    server.should_exit = True
    await asyncio.wait_for(task, 10)


def _client_ctx(ca: Issued, client: Issued | None, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    if client is not None:
        (tmp / "c.pem").write_bytes(client.cert_pem)
        (tmp / "c.key").write_bytes(client.key_pem)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "c.key")
    return ctx


async def test_client_certificate_reaches_the_app(
    served: tuple[str, ServerTLS, Issued], tmp_path: Path
) -> None:
    base, _, ca = served
    client = issue("workload", ca=ca, uri="spiffe://example.org/workload")
    async with httpx.AsyncClient(verify=_client_ctx(ca, client, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": "spiffe://example.org/workload"}
    async with httpx.AsyncClient(verify=_client_ctx(ca, None, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": None}


async def test_foreign_client_certificate_fails_the_handshake(
    served: tuple[str, ServerTLS, Issued], tmp_path: Path
) -> None:
    base, _, ca = served
    foreign_ca = issue("foreign-ca")
    intruder = issue("intruder", ca=foreign_ca, uri="spiffe://example.org/workload")
    async with httpx.AsyncClient(verify=_client_ctx(ca, intruder, tmp_path)) as http:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(f"{base}/whoami")


async def test_rotation_applies_to_the_next_handshake(
    served: tuple[str, ServerTLS, Issued], tmp_path: Path
) -> None:
    base, tls, ca = served
    new_ca = issue("next-ca")
    new_server = issue("server", ca=new_ca)
    bundle = ca.cert_pem + new_ca.cert_pem
    tls.update(new_server.cert_pem + b"", new_server.key_pem, bundle)
    # a client trusting only the new CA now connects; one trusting only the old fails
    client = issue("workload", ca=new_ca, uri="spiffe://example.org/after")
    async with httpx.AsyncClient(verify=_client_ctx(new_ca, client, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": "spiffe://example.org/after"}
    async with httpx.AsyncClient(verify=_client_ctx(ca, None, tmp_path)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base}/whoami")
    assert tls.generation == 1
