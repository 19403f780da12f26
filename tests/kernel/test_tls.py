"""Server TLS over real sockets: client certificates reach the app, rotation without restart."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI, Request

from zerogate.server import Listener, _QuietServer, bind_socket
from zerogate.tls import PeerCertH11Protocol, ServerTLS, peer_certificate


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _issue(subject: str, *, ca: Issued | None = None, uri: str | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.cert.subject if ca else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    cert = builder.sign(ca.key if ca else key, hashes.SHA256())
    return Issued(cert, key)


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


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, ServerTLS, Issued]]:
    import uvicorn

    ca = _issue("test-ca")
    server_cert = _issue("server", ca=ca)
    tls = ServerTLS(server_cert.cert_pem, server_cert.key_pem, ca.cert_pem)
    listener = Listener("test", _app(), "127.0.0.1", 0, tls)
    sock = bind_socket(listener.what, listener.host, listener.port)
    config = uvicorn.Config(
        listener.app,
        log_config=None,
        lifespan="off",
        ssl_context_factory=tls.uvicorn_factory(),
        http=PeerCertH11Protocol,
    )
    server = _QuietServer(config)
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
    client = _issue("workload", ca=ca, uri="spiffe://example.org/workload")
    async with httpx.AsyncClient(verify=_client_ctx(ca, client, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": "spiffe://example.org/workload"}
    async with httpx.AsyncClient(verify=_client_ctx(ca, None, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": None}


async def test_foreign_client_certificate_fails_the_handshake(
    served: tuple[str, ServerTLS, Issued], tmp_path: Path
) -> None:
    base, _, ca = served
    foreign_ca = _issue("foreign-ca")
    intruder = _issue("intruder", ca=foreign_ca, uri="spiffe://example.org/workload")
    async with httpx.AsyncClient(verify=_client_ctx(ca, intruder, tmp_path)) as http:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(f"{base}/whoami")


async def test_rotation_applies_to_the_next_handshake(
    served: tuple[str, ServerTLS, Issued], tmp_path: Path
) -> None:
    base, tls, ca = served
    new_ca = _issue("next-ca")
    new_server = _issue("server", ca=new_ca)
    bundle = ca.cert_pem + new_ca.cert_pem
    tls.update(new_server.cert_pem + b"", new_server.key_pem, bundle)
    # a client trusting only the new CA now connects; one trusting only the old fails
    client = _issue("workload", ca=new_ca, uri="spiffe://example.org/after")
    async with httpx.AsyncClient(verify=_client_ctx(new_ca, client, tmp_path)) as http:
        assert (await http.get(f"{base}/whoami")).json() == {"uri": "spiffe://example.org/after"}
    async with httpx.AsyncClient(verify=_client_ctx(ca, None, tmp_path)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{base}/whoami")
    assert tls.generation == 1
