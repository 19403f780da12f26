"""Helpers for the gate tests: a real uvicorn HTTPS listener in a thread (its own event loop),
client TLS contexts from SVIDs, and forged credentials that break one rule each."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives import serialization

from identity.bundle import Bundle
from identity.ca import CertificateAuthority, X509Svid
from identity.rotation import Kind
from identity.svid import encode_jws
from identity.tls import client_ssl_context
from zerogate.server import bind_socket, listener_server
from zerogate.tls import ServerTLS


class ThreadServer:
    """An ASGI app behind uvicorn + ``ServerTLS`` + ``PeerCertProtocol`` (as the service
    runs it), on a loopback port, in a thread with its own event loop."""

    def __init__(self, app: Any, tls: ServerTLS) -> None:
        self.server = listener_server(
            app, tls=tls, host="127.0.0.1", port=0, lifespan="on", timeout_graceful_shutdown=2
        )
        self.sock = bind_socket("test", "127.0.0.1", 0)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 120) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


def client_context(bundle: Bundle, svid: X509Svid | None = None) -> ssl.SSLContext:
    return client_ssl_context(bundle, svid)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def claims_for(spiffe_id: str, audience: str, *, exp_in: float = 300) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "sub": spiffe_id,
        "aud": [audience],
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=exp_in)).timestamp()),
        "jti": base64.urlsafe_b64encode(hashlib.sha256(str(now).encode()).digest()).decode(),
    }


def signed_jwt(ca: CertificateAuthority, claims: dict[str, Any]) -> str:
    """Claims chosen by the test, signed by the CA's real JWT key (e.g. an expired token)."""
    authority, signer = ca.manager.active(Kind.JWT)
    return encode_jws(claims, key=signer, kid=authority.kid, algorithm="ES256")


def alg_none_jwt(ca: CertificateAuthority, claims: dict[str, Any]) -> str:
    kid = ca.bundle().jwt_authorities[0].kid
    return f"{_b64({'alg': 'none', 'kid': kid, 'typ': 'JWT'})}.{_b64(claims)}."


def hs256_with_public_key(ca: CertificateAuthority, claims: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HMAC keyed with the bundle's public key PEM."""
    authority = ca.bundle().jwt_authorities[0]
    secret = authority.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64({'alg': 'HS256', 'kid': authority.kid, 'typ': 'JWT'})}.{_b64(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
