"""OPA Data API (``/v1/data``): query documents, and write data (admin).

``POST /v1/data/{path}`` with ``{"input": ...}`` (or an empty body) and ``GET
/v1/data/{path}[?input=<json>]`` answer ``{"result": ..., "decision_id": ...}``; an undefined
document has no ``result`` key (OPA "Get a Document"). ``?metrics`` adds
``metrics.timer_rego_query_eval_ns``, ``?provenance`` adds the bundle revision. Every answer
is a decision: cached per nothing (no caller key here) and written to the decision log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from policy.api import error_response, flag, json_body
from policy.engine import Decision
from policy.errors import PolicyError, PolicyInputError
from policy.service import PolicyService
from zerogate import json_input


def _answer(request: Request, decision: Decision, service: PolicyService) -> JSONResponse:
    body: dict[str, Any] = {"decision_id": decision.decision_id}
    if decision.defined:
        body["result"] = decision.result
    if flag(request, "metrics"):
        body["metrics"] = {"timer_rego_query_eval_ns": decision.eval_ns}
    if flag(request, "provenance"):
        body["provenance"] = {
            "bundles": {service.bundle_name: {"revision": decision.revision}},
            "engine": service.engine.name,
        }
    return JSONResponse(body)


def data_router(service: PolicyService, admin: Callable[..., Any]) -> APIRouter:
    api = APIRouter(prefix="/v1/data")

    async def query(request: Request, path: str, input: Any) -> Response:
        try:
            decision = await service.adecide(path, input)
        except PolicyError as exc:
            return error_response(exc)
        return _answer(request, decision, service)

    @api.post("")
    @api.post("/{path:path}")
    async def post_document(request: Request, path: str = "") -> Response:
        try:
            body = await json_body(request)
            if body is not None and not isinstance(body, dict):
                raise PolicyInputError("body must be an object with an optional 'input' key")
        except PolicyError as exc:
            return error_response(exc)
        return await query(request, path, (body or {}).get("input"))

    @api.get("")
    @api.get("/{path:path}")
    async def get_document(request: Request, path: str = "") -> Response:
        raw = request.query_params.get("input")
        input: Any = None
        if raw is not None:
            try:
                input = json_input.loads(raw)
            except json_input.JsonInputError as exc:
                return error_response(PolicyInputError(f"input parameter is not JSON: {exc}"))
        return await query(request, path, input)

    @api.put("/{path:path}", dependencies=[Depends(admin)])
    async def put_document(request: Request, path: str = "") -> Response:
        try:
            value = await json_body(request, required=True)
            await run_in_threadpool(service.store.put_data, path, value)
        except PolicyError as exc:
            return error_response(exc)
        return Response(status_code=204)

    @api.delete("/{path:path}", dependencies=[Depends(admin)])
    async def delete_document(path: str = "") -> Response:
        try:
            await run_in_threadpool(service.store.delete_data, path)
        except PolicyError as exc:
            return error_response(exc)
        return Response(status_code=204)

    return api
