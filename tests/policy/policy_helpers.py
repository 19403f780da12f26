"""Helpers shared by the policy tests: a real uvicorn on loopback serving zerogate's OPA REST
API, services over a directory, and the admin dependencies (always / never)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException

from policy.api import router
from policy.cache import DecisionCache
from policy.engine import PolicyEngine
from policy.opa_embedded import OpaEmbeddedEngine
from policy.service import PolicyService
from policy.store import PolicyStore


def always_admin() -> None:
    """A real FastAPI dependency that lets every caller write."""


def never_admin() -> None:
    """A real FastAPI dependency that refuses every write, as the server's does for
    callers without an admin SVID."""
    raise HTTPException(status_code=403, detail="admin SVID required")


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 (random port); yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_service(root: Path | None, engine: PolicyEngine | None = None) -> PolicyService:
    store = PolicyStore(engine or OpaEmbeddedEngine(), root)
    store.reload(reason="start")
    return PolicyService(store, cache=DecisionCache(1000), audit=None)


def make_app(service: PolicyService, admin: Callable[[], None] = always_admin) -> FastAPI:
    app = FastAPI()
    app.include_router(router(service, admin))
    return app
