"""Lifecycle of the Workload API Unix socket server: ``start()``, ``stop()``, ``ready()``.

- The socket path comes from ``settings.workload_api_socket`` (default
  ``<data_dir>/workload.sock``); workloads find it through ``SPIFFE_ENDPOINT_SOCKET=unix://…``
  (SPIFFE Workload Endpoint section 4).
- A stale socket left by a crashed server is removed at start; a socket some live server
  still answers on, or a path that is not a socket at all, is an error (never unlinked).
- The socket is mode 0o777 like SPIRE agent's: any local process may connect, and
  attestation of its ``SO_PEERCRED`` (identity/attestation.py) decides what it gets, not file
  permissions (Workload Endpoint section 5: no client authentication).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path

from grpclib.server import Server

from identity.attestation import WorkloadAttestation
from identity.errors import IdentityError
from identity.service import IdentityService
from identity.workload_api import WorkloadApiService
from identity.workload_cache import AnyGate, IdentityGate, WorkloadCache
from identity.workload_core import CoreIdentitySource, IssuanceCheck
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings

log = logging.getLogger(__name__)

SOCKET_MODE = 0o777
# Connections waiting to be accepted: many workloads (re)connect at once after a restart; a
# full Unix-socket backlog makes connect() fail with EAGAIN instead of waiting.
LISTEN_BACKLOG = 4096


class WorkloadSocketError(IdentityError):
    code = "workload_socket_error"


def _remove_stale_socket(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise WorkloadSocketError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise WorkloadSocketError(f"cannot probe existing socket {path}: {exc}") from exc
    else:
        raise WorkloadSocketError(f"another server is listening on {path}")
    finally:
        probe.close()
    path.unlink()
    log.info("event=workload_api.stale_socket_removed path=%s", path)


class WorkloadApiServer:
    """The SPIFFE Workload API on a Unix socket (grpclib), with its SVID cache."""

    def __init__(
        self,
        socket_path: Path,
        cache: WorkloadCache,
        attestation: WorkloadAttestation | None = None,
        *,
        allow_unauthenticated_verifiers: bool = False,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.cache = cache
        self._service = WorkloadApiService(
            cache,
            attestation or WorkloadAttestation(),
            allow_unauthenticated_verifiers=allow_unauthenticated_verifiers,
        )
        self._server: Server | None = None
        self._ready = False

    @property
    def endpoint(self) -> str:
        """The ``SPIFFE_ENDPOINT_SOCKET`` value for clients."""
        return f"unix://{self.socket_path.resolve()}"

    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        if self._server is not None:
            raise WorkloadSocketError("Workload API server already started")
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_socket(path)
        await self.cache.start()
        self._service.open()
        server = Server([self._service])
        try:
            await server.start(path=str(path), backlog=LISTEN_BACKLOG)
            os.chmod(path, SOCKET_MODE)
        except BaseException:
            server.close()
            await self.cache.stop()
            raise
        self._server = server
        self._ready = True
        log.info("event=workload_api.started socket=%s", path)

    async def stop(self) -> None:
        self._ready = False
        server, self._server = self._server, None
        if server is not None:
            # Streams end with UNAVAILABLE so that clients reconnect (to our successor);
            # close() then stops accepting and cancels whatever is still running.
            await self._service.drain(timeout=2.0)
            server.close()
            await server.wait_closed()
        await self.cache.stop()
        with contextlib.suppress(FileNotFoundError):
            if server is not None:
                self.socket_path.unlink()
        log.info("event=workload_api.stopped socket=%s", self.socket_path)


def build_workload_api_server(
    settings: Settings,
    identity: IdentityService,
    *,
    clock: Clock = SYSTEM_CLOCK,
    gates: Sequence[IdentityGate] = (),
    attestation: WorkloadAttestation | None = None,
    issuance_check: IssuanceCheck | None = None,
) -> WorkloadApiServer:
    """The Workload API of ``zerogate serve``: the identity core's CA and entries, the deny
    list plus any extra ``gates`` (e.g. runtime quarantine), on ``settings.workload_api_socket``.
    """
    cache = WorkloadCache(
        CoreIdentitySource(identity.ca, identity.entries, issuance_check=issuance_check),
        gate=AnyGate(identity.deny_list, *gates),
        clock=clock,
    )
    return WorkloadApiServer(settings.workload_api_socket, cache, attestation)
