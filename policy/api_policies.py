"""OPA Policy API (``/v1/policies``) plus zerogate's ``POST /v1/policies/reload``.

``PUT /v1/policies/{id}`` takes the module text as the body; a module that does not parse or
compile is refused with 400 ``invalid_parameter`` and each error's location, and the active
revision does not change (OPA "Create or Update a Policy"). Modules from files in the policy
directory are listed too; only modules written through this API can be deleted here.

The ``ast`` returned is a summary (package path and rule names, in OPA's AST JSON shape),
enough for clients that read the package and rules of each policy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from policy.api import error_response
from policy.errors import PolicyError, PolicyInputError
from policy.service import PolicyService

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][\w.]*)", re.MULTILINE)
_RULE = re.compile(r"^(?:default\s+)?([A-Za-z_]\w*)\b", re.MULTILINE)
_KEYWORDS = {"package", "import", "default", "not", "some", "every", "with", "else"}
MAX_MODULE_BYTES = 1 << 20


def ast_summary(text: str) -> dict[str, Any]:
    match = _PACKAGE.search(text)
    parts = match.group(1).split(".") if match else []
    rules = []
    seen: set[str] = set()
    for rule in _RULE.finditer(text):
        name = rule.group(1)
        if name in _KEYWORDS or name in seen:
            continue
        seen.add(name)
        rules.append({"head": {"name": name}})
    return {
        "package": {
            "path": [{"type": "var", "value": "data"}]
            + [{"type": "string", "value": p} for p in parts]
        },
        "rules": rules,
    }


def _policy(module_id: str, text: str) -> dict[str, Any]:
    return {"id": module_id, "raw": text, "ast": ast_summary(text)}


def policies_router(service: PolicyService, admin: Callable[..., Any]) -> APIRouter:
    api = APIRouter(prefix="/v1/policies")
    store = service.store

    @api.get("")
    @api.get("/")
    async def list_policies() -> Response:
        try:
            modules = store.snapshot.modules
        except PolicyError as exc:
            return error_response(exc)
        return JSONResponse({"result": [_policy(k, v) for k, v in sorted(modules.items())]})

    @api.post("/reload", dependencies=[Depends(admin)])
    async def reload() -> Response:
        try:
            revision = await run_in_threadpool(service.reload)
        except PolicyError as exc:
            return error_response(exc)
        return JSONResponse({"result": {"revision": revision}})

    @api.get("/{module_id:path}")
    async def get_policy(module_id: str) -> Response:
        try:
            return JSONResponse({"result": _policy(module_id, store.module(module_id))})
        except PolicyError as exc:
            return error_response(exc)

    @api.put("/{module_id:path}", dependencies=[Depends(admin)])
    async def put_policy(module_id: str, request: Request) -> Response:
        raw = await request.body()
        try:
            if len(raw) > MAX_MODULE_BYTES:
                raise PolicyInputError(f"module is larger than {MAX_MODULE_BYTES} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PolicyInputError(f"module is not UTF-8: {exc}") from None
            await run_in_threadpool(store.put_module, module_id, text)
        except PolicyError as exc:
            return error_response(exc)
        return JSONResponse({})

    @api.delete("/{module_id:path}", dependencies=[Depends(admin)])
    async def delete_policy(module_id: str) -> Response:
        try:
            await run_in_threadpool(store.delete_module, module_id)
        except PolicyError as exc:
            return error_response(exc)
        return JSONResponse({})

    return api
