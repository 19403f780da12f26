"""Builds a runtime-only FastAPI app for tests and the crash test's child process.

The caller dependency stands in for the server's mTLS peer-certificate extraction (owned by
zerogate/server.py): it reads the SPIFFE ID the test puts in ``x-test-spiffe-id``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from runtime.api import SubmitFastPath, SubmitHandler, allow_list, router
from runtime.ingest import EventIngestor
from runtime.quarantine import QuarantineService
from runtime.sources.parse_pool import ParsePool

FALCO_ID = "spiffe://zerogate.internal/falco"


async def header_caller(request: Request) -> str | None:
    return request.headers.get("x-test-spiffe-id") or None


def build_app(
    ingestor: EventIngestor,
    quarantine: QuarantineService | None = None,
    *,
    max_body_bytes: int = 4 << 20,
    fast_path: bool = True,
    parser: ParsePool | None = None,
) -> FastAPI:
    """The runtime routes, plus (``fast_path``) the submit middleware, as
    RuntimeService.install sets them up in the server."""
    app = FastAPI()
    authorize = allow_list(FALCO_ID)
    app.include_router(
        router(
            ingestor=ingestor,
            caller=header_caller,
            authorize=authorize,
            quarantine=quarantine,
            max_body_bytes=max_body_bytes,
            keepalive_s=0.2,
            parser=parser,
        )
    )
    if fast_path:
        handler = SubmitHandler(
            ingestor=ingestor,
            caller=header_caller,
            authorize=authorize,
            max_body_bytes=max_body_bytes,
            parser=parser,
        )
        app.add_middleware(SubmitFastPath, handler=handler)
    return app
