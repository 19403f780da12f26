"""Assembles the control plane: kernel (store, audit, telemetry) plus the subsystems.

``ControlPlane`` opens the kernel, builds each subsystem's component, mounts their routers on
one FastAPI app and runs the HTTP listeners (uvicorn) in one asyncio loop. Only this module and
``zerogate.cli`` wire subsystems together (DESIGN.md section 2).

Shutdown (SIGTERM/SIGINT or ``stop()``): listeners stop accepting, subsystems stop, then the
audit log is flushed and closed with a final signed checkpoint, so no acknowledged record is
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from zerogate.audit import AuditLog
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.config import Settings
from zerogate.errors import ZerogateError
from zerogate.store import Database
from zerogate.telemetry import FASTAPI_TELEMETRY_OFF, PROMETHEUS_CONTENT_TYPE, Telemetry
from zerogate.tls import PeerCertProtocol, ServerTLS

log = logging.getLogger(__name__)


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop (libuv: a cheaper event loop and TLS transport) where it is
    installed, on asyncio's own loop otherwise. What ``zerogate serve`` runs on."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


class Component(Protocol):
    """A long-running part of the control plane."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...


@dataclass
class Kernel:
    """What every subsystem is built from."""

    settings: Settings
    db: Database
    audit: AuditLog
    telemetry: Telemetry
    clock: Clock


@dataclass
class Listener:
    """One HTTP listener: what it serves and where."""

    what: str
    app: FastAPI
    host: str
    port: int
    tls: ServerTLS | None = None


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the control plane owns shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listener_server(app: Any, *, tls: ServerTLS | None = None, **options: Any) -> uvicorn.Server:
    """A uvicorn server as zerogate runs every listener: no uvicorn logging config, access log,
    lifespan or signal handling (the owner of the loop decides shutdown), and with ``tls`` the
    rotating context and the protocol that hands the client certificate to the app
    (``zerogate.tls.PeerCertProtocol``). ``options`` (host, port, http, lifespan,
    timeout_graceful_shutdown, ...) override."""
    config: dict[str, Any] = {"log_config": None, "access_log": False, "lifespan": "off"}
    if tls is not None:
        config |= {"ssl_context_factory": tls.uvicorn_factory(), "http": PeerCertProtocol}
    return _QuietServer(uvicorn.Config(app, **(config | options)))


def bind_socket(what: str, host: str, port: int) -> socket.socket:
    """Bind the listener's socket ourselves, so a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # listener says TCP; with protocol 0 every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ZerogateError(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}",
            code="listen_failed",
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def open_kernel(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, telemetry: Telemetry | None = None
) -> Kernel:
    """Open the store (migrating it) and the audit log."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database.open(settings.effective_database_url)
    audit = AuditLog.from_settings(db, settings, clock=clock)
    telemetry = telemetry or Telemetry.create(settings.telemetry.service_name)
    return Kernel(settings, db, audit, telemetry, clock)


def health_routes(
    app: FastAPI, checks: dict[str, Callable[[], bool]], telemetry: Telemetry
) -> None:
    """/healthz (process alive), /readyz (every configured part up), /metrics."""

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz() -> JSONResponse:
        results: dict[str, bool] = {}
        for name, check in checks.items():
            try:
                results[name] = bool(check())
            except Exception:  # a failing check means not ready, never a 500
                log.exception("event=readyz.check_failed part=%s", name)
                results[name] = False
        ok = all(results.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "parts": results},
            status_code=200 if ok else 503,
        )

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(telemetry.prometheus_text(), media_type=PROMETHEUS_CONTENT_TYPE)


def database_check(db: Database) -> Callable[[], bool]:
    def check() -> bool:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    return check


class ControlPlane:
    """The all-in-one control plane process."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.kernel = open_kernel(settings, clock=clock, telemetry=telemetry)
        self.components: list[Component] = []
        self.checks: dict[str, Callable[[], bool]] = {
            "database": database_check(self.kernel.db),
            "audit": lambda: self.kernel.audit.healthy,
        }
        self.app = FastAPI(
            title="zerogate control plane",
            docs_url=None,
            redoc_url=None,
            telemetry=FASTAPI_TELEMETRY_OFF,
        )
        self.listeners: list[Listener] = []
        # subsystem objects other parts (tests, the CLI) may need after assembly
        self.extras: dict[str, Any] = {}
        self._signal_handlers: dict[signal.Signals, list[Callable[[], object]]] = {}
        self._servers: list[uvicorn.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = False
        host, port = split_listen(settings.listen)
        self.listeners.append(Listener("control-plane", self.app, host, port))
        health_routes(self.app, self.checks, self.kernel.telemetry)

    def on_signal(self, sig: signal.Signals, handler: Callable[[], object]) -> None:
        """Run ``handler`` (in a thread) when the process gets ``sig`` (e.g. SIGHUP: reload)."""
        self._signal_handlers.setdefault(sig, []).append(handler)

    def _dispatch_signal(self, sig: signal.Signals) -> None:
        log.info("event=signal.received signal=%s", sig.name)
        for handler in self._signal_handlers.get(sig, []):
            asyncio.get_running_loop().run_in_executor(None, handler)

    def add_component(self, component: Component) -> None:
        self.components.append(component)
        self.checks[component.name] = component.ready

    async def start(self) -> None:
        self.kernel.audit.append(
            "control_plane.started",
            {"trust_domain": self.settings.trust_domain, "listen": self.settings.listen},
        )
        for component in self.components:
            await component.start()
            log.info("event=component.started component=%s", component.name)
        for listener in self.listeners:
            server = listener_server(
                listener.app, tls=listener.tls, host=listener.host, port=listener.port
            )
            sock = bind_socket(listener.what, listener.host, listener.port)
            self._servers.append(server)
            task = asyncio.create_task(
                server.serve(sockets=[sock]), name=f"listener-{listener.what}"
            )
            self._tasks.append(task)
            while not server.started:
                if task.done():
                    task.result()  # raises the startup error
                    raise ZerogateError(f"listener {listener.what} exited during startup")
                await asyncio.sleep(0.01)
            bound = self.bound_port(server) or listener.port
            scheme = "https" if listener.tls else "http"
            log.info(
                "event=listener.started what=%s address=%s://%s:%d",
                listener.what,
                scheme,
                listener.host,
                bound,
            )

    @staticmethod
    def bound_port(server: uvicorn.Server) -> int | None:
        for srv in getattr(server, "servers", []):
            for sock in srv.sockets:
                return int(sock.getsockname()[1])
        return None

    def ports(self) -> dict[str, int]:
        """Listener name -> bound port (useful with port 0)."""
        out: dict[str, int] = {}
        for listener, server in zip(self.listeners, self._servers, strict=False):
            out[listener.what] = self.bound_port(server) or listener.port
        return out

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for server in self._servers:
            server.should_exit = True
        if self._tasks:
            # uvicorn drains open connections before serve() returns
            _done, pending = await asyncio.wait(self._tasks, timeout=10)
            for task in pending:
                task.cancel()
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:
                log.exception("event=component.stop_failed component=%s", component.name)
        self.kernel.audit.append("control_plane.stopped", {})
        self.kernel.audit.close()
        self.kernel.telemetry.shutdown()
        self.kernel.db.close()
        log.info("event=control_plane.stopped")

    async def run(self, until: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start, wait for SIGTERM/SIGINT (or ``until``), stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        for extra in self._signal_handlers:
            loop.add_signal_handler(extra, self._dispatch_signal, extra)
        try:
            await self.start()
            # Everything built at start (compiled policies, the model, SQLAlchemy metadata, the
            # CA) lives as long as the process: move it out of the cyclic collector's view so a
            # full collection does not walk it on the request path (CPython gc.freeze).
            gc.collect()
            gc.freeze()
            if until is not None:
                await until()
            else:
                await self._stopping.wait()
            log.info("event=control_plane.stopping")
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, *self._signal_handlers):
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        self._stopping.set()


def build_control_plane(
    settings: Settings, *, clock: Clock = SYSTEM_CLOCK, telemetry: Telemetry | None = None
) -> ControlPlane:
    """The all-in-one control plane with every subsystem the settings enable."""
    from zerogate import wiring

    plane = ControlPlane(settings, clock=clock, telemetry=telemetry)
    try:
        wiring.assemble(plane)
    except BaseException:
        plane.kernel.audit.close()
        plane.kernel.db.close()
        raise
    return plane
