"""The model service as a FastAPI app: routes from ``inference/api.py``, the one error mapping
(every error leaves in OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape),
and the model registry's lifecycle.

``create_app`` refuses to build an app without a ``Gate`` unless ``ungated=True`` is passed:
being ungated is always an explicit choice (benchmarks, a trusted internal upstream).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference import api
from inference.errors import InferenceError
from inference.gate import Gate, Ungated
from inference.models import ModelRegistry
from inference.openai_types import error_body
from zerogate.errors import ConfigError
from zerogate.telemetry import FASTAPI_TELEMETRY_OFF

log = logging.getLogger(__name__)

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to OpenAI's error shape, once, for any app mounting the router."""

    @app.exception_handler(InferenceError)
    async def _inference_error(request: Request, exc: InferenceError) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc), error_type=exc.error_type, code=exc.code),
            status_code=exc.http_status,
            headers=exc.headers or None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
        return JSONResponse(
            error_body(
                "; ".join(problems), error_type="invalid_request_error", code="invalid_request"
            ),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(
                str(exc.detail), error_type=_STATUS_TYPES.get(exc.status_code, "error"), code=None
            ),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("event=inference.internal_error path=%s", request.url.path)
        return JSONResponse(
            error_body("internal error", error_type="server_error", code="internal_error"),
            status_code=500,
        )


def create_app(
    registry: ModelRegistry,
    *,
    gate: Gate | None = None,
    ungated: bool = False,
    manage_registry: bool = True,
) -> FastAPI:
    """The inference app. ``manage_registry``: start/stop the registry with the app."""
    if gate is None:
        if not ungated:
            raise ConfigError(
                "the inference service needs a gate (authn/authz/audit); pass ungated=True "
                "explicitly to serve without one"
            )
        gate = Ungated()
        log.warning("event=inference.ungated msg=serving without authentication")
    elif ungated:
        raise ConfigError("ungated=True and a gate were both given; choose one")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_registry:
            await registry.start()
        try:
            yield
        finally:
            if manage_registry:
                await registry.stop()

    app = FastAPI(
        title="zerogate inference",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY_OFF,  # zerogate.telemetry's providers trace the calls
    )
    install_error_handlers(app)
    app.include_router(api.router(registry, gate))
    return app
