"""An ``openai.OpenAI`` client that authenticates with the workload's SPIFFE identity.

    from inference.client import spiffe_openai_client
    client = spiffe_openai_client("https://localhost:8000/v1", socket="/run/zerogate/workload.sock")
    client.embeddings.create(model="all-MiniLM-L6-v2", input="hello")

Everything comes from the SPIFFE Workload API (py-spiffe), nothing from files or env keys:

- **jwt** (default): every request carries ``Authorization: Bearer <JWT-SVID>`` for the
  service's audience (``spiffe://<td>/inference`` unless given). The token is fetched on first
  use and again once half its lifetime has passed, so it never expires in flight
  (``JwtSvidAuth``, an ``httpx2.Auth`` the SDK's HTTP client runs on every request).
- **mtls**: the TLS client certificate is the workload's X.509-SVID; when the Workload API
  pushes a rotated one it is loaded into the same ``SSLContext``, so new connections use it.

Either way the server is trusted only through the X.509 bundle of the trust domain (never the
system store), and its host name is verified against the DNS SANs of its SVID (the service's
entry carries them; see ``inference/service.py``).
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal

import httpx2
import openai
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, WorkloadApiClient, X509Source, X509Svid

Mode = Literal["jwt", "mtls"]
PLACEHOLDER_KEY = "spiffe-workload-api"  # the SDK needs a non-empty key; auth replaces it


def _endpoint(socket: str | Path) -> str:
    text = str(socket)
    return text if text.startswith("unix:") else f"unix://{text}"


class JwtSvidAuth(httpx2.Auth):
    """Adds a fresh JWT-SVID to every request; refetches at half its remaining lifetime."""

    def __init__(
        self,
        workload: WorkloadApiClient,
        audience: str,
        spiffe_id: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._workload = workload
        self._clock = clock
        self._audience = audience
        self._subject = SpiffeId(spiffe_id) if spiffe_id else None
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._refresh_at:
                svid = self._workload.fetch_jwt_svid({self._audience}, subject=self._subject)
                self._token = svid.token
                self._refresh_at = now + max(0.0, (svid.expiry - now) / 2)
            return self._token

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        request.headers["authorization"] = f"Bearer {self.token()}"
        yield request


def _load_svid(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    """Python's ssl loads keys only from files: a private temporary directory, removed at once."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.TemporaryDirectory(prefix="zg-client-") as tmp:
        os.chmod(tmp, 0o700)
        cert_path, key_path = os.path.join(tmp, "svid.pem"), os.path.join(tmp, "svid.key")
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(key)
        with open(cert_path, "wb") as fh:
            fh.write(chain)
        ctx.load_cert_chain(cert_path, key_path)


def _pick(spiffe_id: str | None) -> Any:
    def picker(svids: list[X509Svid]) -> X509Svid:
        if spiffe_id is None:
            return svids[0]  # Workload API 5.3: the first is the default identity
        for svid in svids:
            if str(svid.spiffe_id) == spiffe_id:
                return svid
        raise LookupError(f"the Workload API offers no X.509-SVID for {spiffe_id}")

    return picker


class SpiffeTLS:
    """Client TLS from the Workload API: trust = the bundle of our trust domain; with
    ``present_svid`` also our X.509-SVID, reloaded when it rotates."""

    def __init__(self, source: X509Source, *, present_svid: bool) -> None:
        self.source = source
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._present = present_svid
        self._update()
        source.subscribe_for_updates(self._update)

    @property
    def svid(self) -> X509Svid:
        return self.source.get_x509_context().default_svid

    def _update(self) -> None:
        x509_context = self.source.get_x509_context()
        svid = x509_context.default_svid
        bundle = x509_context.x509_bundle_set.get_bundle_for_trust_domain(
            svid.spiffe_id.trust_domain
        )
        if bundle is None:
            raise LookupError(f"the Workload API gave no bundle for {svid.spiffe_id}")
        # new anchors are added (ssl cannot remove any); SVIDs replace the previous one
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)
        self.context.load_verify_locations(cadata=pem.decode("ascii"))
        if self._present:
            _load_svid(self.context, svid)


def spiffe_openai_client(
    base_url: str,
    *,
    socket: str | Path,
    mode: Mode = "jwt",
    audience: str | None = None,
    spiffe_id: str | None = None,
    timeout: float = 60.0,
    **kwargs: Any,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` for the gated service at ``base_url`` (``https://.../v1``).

    ``spiffe_id`` picks one of several identities the Workload API offers this workload;
    ``audience`` defaults to ``spiffe://<our trust domain>/inference``. Extra keyword
    arguments go to ``openai.OpenAI`` (``max_retries``, ...).
    """
    if mode not in ("jwt", "mtls"):
        raise ValueError(f"mode must be 'jwt' or 'mtls', got {mode!r}")
    workload = WorkloadApiClient(_endpoint(socket), default_timeout=30)
    source = X509Source(workload, timeout_in_seconds=30, svid_picker=_pick(spiffe_id))
    tls = SpiffeTLS(source, present_svid=mode == "mtls")
    auth: httpx2.Auth | None = None
    if mode == "jwt":
        own = tls.svid.spiffe_id
        auth = JwtSvidAuth(workload, audience or f"spiffe://{own.trust_domain}/inference", str(own))
    http = httpx2.Client(verify=tls.context, auth=auth, timeout=timeout)
    return openai.OpenAI(base_url=base_url, api_key=PLACEHOLDER_KEY, http_client=http, **kwargs)
