"""Client TLS contexts from SVIDs (servers use ``zerogate.tls.ServerTLS``, which rotates).

Python's ``ssl`` loads certificates and keys only from files, so the SVID is written to a
private (0700) temporary directory, loaded, and the files removed at once. Trust comes from
our bundle only (never the system store). Client certificates, when asked for, are checked by
``ssl`` against the bundle; the SPIFFE ID of the peer is then read with
``identity.bundle.validate_x509_svid`` by whoever wires the transport.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from identity.bundle import Bundle
from identity.ca import X509Svid


def _load_svid(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    with tempfile.TemporaryDirectory(prefix="zerogate-svid-") as tmp:
        os.chmod(tmp, 0o700)
        cert = Path(tmp) / "svid.pem"
        key = Path(tmp) / "svid.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(svid.key_pem())
        cert.write_bytes(svid.chain_pem())
        ctx.load_cert_chain(cert, key)


def client_ssl_context(bundle: Bundle, svid: X509Svid | None = None) -> ssl.SSLContext:
    """A client context trusting only ``bundle``, presenting ``svid`` when given (mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=bundle.to_pem())
    if svid is not None:
        _load_svid(ctx, svid)
    return ctx
