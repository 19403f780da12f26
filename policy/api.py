"""OPA-compatible REST API on the control plane, so existing OPA clients work unchanged.

``router(service, admin)`` mounts, split by API (STYLE.md 9):

- Data API (``policy/api_data.py``): ``POST|GET /v1/data/{path}`` -> ``{"result", "decision_id"}``
  (undefined: no ``result`` key), ``PUT|DELETE /v1/data/{path}`` (admin).
- Policy API (``policy/api_policies.py``): ``GET /v1/policies``, ``PUT|GET|DELETE
  /v1/policies/{id}`` (writes admin), ``POST /v1/policies/reload`` (admin, zerogate's own).
- Bundles (``policy/api_bundles.py``): ``GET /bundles/{name}.tar.gz`` with ETag.
- ``GET /health``.

Shapes and codes follow OPA's ``v1/server/types/types.go``; ``error_response`` is the one
place where a domain error becomes a status and an OPA error body (like OPA's
``writer.ErrorAuto``). ``admin`` is a FastAPI dependency supplied by the server that raises
403 for callers without an admin SVID; it guards every write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from policy.errors import (
    PolicyCompileError,
    PolicyError,
    PolicyEvalError,
    PolicyInputError,
    PolicyNotFoundError,
    PolicyUnavailableError,
)
from policy.service import PolicyService
from zerogate import json_input

# OPA error codes (v1/server/types/types.go).
CODE_INVALID_PARAMETER = "invalid_parameter"
CODE_RESOURCE_NOT_FOUND = "resource_not_found"
CODE_INTERNAL = "internal_error"
CODE_UNAVAILABLE = "unavailable"
MSG_COMPILE = "error(s) occurred while compiling module(s)"
MAX_BODY_BYTES = 8 << 20  # inputs and data documents; modules have their own limit


def error_response(exc: PolicyError) -> JSONResponse:
    """Map a policy error to OPA's status and body, once for every handler."""
    if isinstance(exc, PolicyCompileError):
        body: dict[str, Any] = {
            "code": CODE_INVALID_PARAMETER,
            "message": MSG_COMPILE,
            "errors": [e.as_opa() for e in exc.errors],
        }
        return JSONResponse(body, status_code=400)
    if isinstance(exc, PolicyInputError):
        return JSONResponse({"code": CODE_INVALID_PARAMETER, "message": str(exc)}, 400)
    if isinstance(exc, PolicyNotFoundError):
        return JSONResponse({"code": CODE_RESOURCE_NOT_FOUND, "message": str(exc)}, 404)
    if isinstance(exc, PolicyUnavailableError):
        return JSONResponse({"code": CODE_UNAVAILABLE, "message": str(exc)}, 503)
    if isinstance(exc, PolicyEvalError):
        body = {"code": CODE_INTERNAL, "message": str(exc)}
        if exc.location is not None:
            body["errors"] = [exc.location.as_opa()]
        return JSONResponse(body, status_code=500)
    return JSONResponse({"code": CODE_INTERNAL, "message": str(exc)}, status_code=500)


async def json_body(request: Request, *, required: bool = False) -> Any:
    """The request body as JSON; an empty body is None. Raises PolicyInputError."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise PolicyInputError(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if required:
            raise PolicyInputError("request body is empty")
        return None
    try:
        return json_input.loads(raw)
    except json_input.JsonInputError as exc:
        raise PolicyInputError(f"body contains malformed JSON: {exc}") from None


def flag(request: Request, name: str) -> bool:
    """OPA's boolean query parameters: present without value, or true/1."""
    if name not in request.query_params:
        return False
    return request.query_params[name].lower() in ("", "true", "1")


def router(
    service: PolicyService,
    admin: Callable[..., Any],
    *,
    signing_key: Any | None = None,
    bundle_reader: Callable[..., Any] | None = None,
) -> APIRouter:
    """All policy routes. ``admin`` guards writes; ``bundle_reader`` (optional) guards
    bundle downloads; ``signing_key`` signs served bundles."""
    from policy.api_bundles import bundles_router
    from policy.api_data import data_router
    from policy.api_policies import policies_router

    api = APIRouter()

    @api.get("/health", include_in_schema=True)
    async def health() -> Response:
        if service.ready():
            return JSONResponse({})
        return JSONResponse({"error": "no policy revision is loaded"}, status_code=500)

    api.include_router(data_router(service, admin))
    api.include_router(policies_router(service, admin))
    api.include_router(bundles_router(service, signing_key=signing_key, reader=bundle_reader))
    return api
