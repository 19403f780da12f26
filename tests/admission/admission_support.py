"""Admission test helpers: constraints, certificates, and the webhook served over real HTTPS
(as tests/kernel/test_tls.py serves it)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from admission.admit import Admitter
from admission.gatekeeper import (
    Constraint,
    parse_constraint,
)
from admission.webhook import router
from zerogate.server import Listener, _QuietServer, bind_socket
from zerogate.tls import PeerCertH11Protocol, ServerTLS

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


def issue(subject: str, *, ca: Issued | None = None, dns: list[str] | None = None) -> Issued:
    """A CA (ca=None) or a serving certificate with the webhook Service's DNS names."""
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
        ).add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns or ["localhost"]]),
            critical=False,
        )
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
    return Issued(builder.sign(ca.key if ca else key, hashes.SHA256()), key)


@asynccontextmanager
async def serve_webhook(
    admitter: Admitter, *, serving: tuple[bytes, bytes, bytes] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The webhook router on a real TLS listener; yields a client that trusts only the CA
    (the caBundle a kube-apiserver would be given). ``serving`` = (cert chain PEM, key PEM,
    trust bundle PEM); by default a throwaway CA issues a certificate for localhost and the
    Service DNS name."""
    import uvicorn

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
    # accepted sockets inherit TCP_NODELAY (bind_socket's proto-0 socket makes asyncio skip it)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
    ctx = ssl.create_default_context(cadata=trust_pem.decode())
    try:
        async with httpx.AsyncClient(
            base_url=f"https://localhost:{port}", verify=ctx, timeout=10
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
