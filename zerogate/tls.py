"""Server-side TLS for uvicorn listeners: rotation without restart and client certificates.

Two problems uvicorn (0.54) leaves to the application:

1. **Rotation.** uvicorn builds one ``SSLContext`` at start. ``ServerTLS`` hands uvicorn a
   front context whose ``sni_callback`` (called on every ClientHello, with or without SNI)
   switches the connection to the newest context, so a rotated X.509-SVID or trust bundle
   applies to the next handshake; live connections keep theirs.
2. **Client certificates.** uvicorn does not put the peer certificate into the ASGI scope.
   ``PeerCertProtocol`` (pass it as ``http=``: uvicorn's httptools protocol, or its h11
   protocol where httptools is not installed) reads it from the connection's ``SSLObject``
   and publishes it under the ASGI TLS extension (``scope["extensions"]["tls"]``, keys as the
   ASGI spec's "TLS Extension": ``client_cert_chain`` as PEM strings, ``tls_version``,
   ``cipher_suite``, ``client_cert_name``, ``client_cert_error``, ``server_cert``).
   Python 3.11's ``ssl`` exposes only the peer's leaf certificate (the verified chain arrives
   in 3.13), so ``client_cert_chain`` holds the leaf; SPIFFE validation against the bundle
   of the leaf's trust domain is the application's job (identity's ``validate_x509_svid``).

Client certificates are requested (``CERT_OPTIONAL``) and, when presented, verified by
OpenSSL against the trust bundle during the handshake; a client without one (a JWT-SVID
caller) still connects, and the application decides what it may do.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # uvicorn's C-parser protocol (httptools): ~3x less CPU per request than h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is a dependency; h11 is the fallback
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def _context(
    cert_chain_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None, require_client: bool
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # cert and key must come from files; keep them in a private directory only while loading
    with tempfile.TemporaryDirectory(prefix="zg-tls-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        with open(os.open(cert_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
            fh.write(cert_chain_pem)
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
            fh.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    if client_ca_pem:
        ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ServerTLS:
    """A rotatable server TLS configuration for one listener."""

    def __init__(
        self,
        cert_chain_pem: bytes,
        key_pem: bytes,
        client_ca_pem: bytes | None = None,
        *,
        require_client_cert: bool = False,
    ) -> None:
        self._require_client = require_client_cert
        self._lock = threading.Lock()
        self._current = _context(cert_chain_pem, key_pem, client_ca_pem, require_client_cert)
        self._front = _context(cert_chain_pem, key_pem, client_ca_pem, require_client_cert)
        self._front.sni_callback = self._select
        self._server_cert_pem = cert_chain_pem
        self.generation = 0

    def _select(self, sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        with self._lock:
            sslobj.context = self._current

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give uvicorn (``ssl_context_factory``)."""
        return self._front

    def update(self, cert_chain_pem: bytes, key_pem: bytes, client_ca_pem: bytes | None) -> None:
        """Use a new certificate / trust bundle from the next handshake on."""
        ctx = _context(cert_chain_pem, key_pem, client_ca_pem, self._require_client)
        with self._lock:
            self._current = ctx
            self._server_cert_pem = cert_chain_pem
            self.generation += 1
        log.info("event=tls.rotated generation=%d", self.generation)

    def uvicorn_factory(self) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
        def factory(_config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
            return self._front

        return factory


def tls_extension(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> dict[str, Any]:
    """The ASGI TLS extension dict for one connection."""
    if ssl_object is None:
        return {}
    der = ssl_object.getpeercert(binary_form=True)
    chain: list[str] = []
    name: str | None = None
    if der:
        cert = x509.load_der_x509_certificate(der)
        chain.append(cert.public_bytes(Encoding.PEM).decode("ascii"))
        name = cert.subject.rfc4514_string()
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": name,
        "client_cert_error": None,
        "tls_version": TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }


class _WithTLS:
    """ASGI wrapper adding the connection's TLS extension to every scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            extensions = dict(scope.get("extensions") or {})
            extensions["tls"] = self.tls
            scope["extensions"] = extensions
        await self.app(scope, receive, send)


def _publish_peer(protocol: Any, transport: Any) -> None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        protocol.app = _WithTLS(protocol.app, tls_extension(ssl_object))


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol that exposes the TLS peer certificate to the app."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        _publish_peer(self, transport)


PeerCertProtocol: type[Any] = PeerCertH11Protocol
"""The protocol class for TLS listeners: httptools when installed, else h11."""

if HttpToolsProtocol is not None:

    class PeerCertHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol that exposes the TLS peer certificate to the app."""

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            _publish_peer(self, transport)

    PeerCertProtocol = PeerCertHttpToolsProtocol


def peer_certificate(scope: Scope) -> x509.Certificate | None:
    """The verified client leaf certificate of a request, if the client presented one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    return x509.load_pem_x509_certificate(chain[0].encode("ascii"))
