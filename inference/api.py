"""HTTP routes of the model service: ``/v1/models``, ``/v1/embeddings``,
``/v1/chat/completions`` (plain and SSE), ``/healthz``, ``/readyz``.

Thin by design: parse the wire body (``openai_types``), ask the ``Gate`` to admit the call,
call the model's backend, answer in OpenAI's shape, and settle the admission with the real
usage. Errors are raised as ``InferenceError`` and mapped once in ``inference/app.py``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from inference import openai_types as wire
from inference.backends.base import ChatResponse, ChatStream, EmbeddingsResponse, Usage
from inference.errors import InferenceError, UpstreamError
from inference.gate import Admission, CallOutcome, Gate, ModelCall
from inference.models import ModelRegistry

log = logging.getLogger(__name__)


def router(registry: ModelRegistry, gate: Gate) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz() -> JSONResponse:
        if registry.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "loading"}, status_code=503)

    @api.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        admission = await gate.admit(request, ModelCall("models", ""))
        names = await gate.visible_models(request, registry.names())
        await admission.settle(CallOutcome(200, time.perf_counter() - started))
        return wire.models_response(names)

    @api.post("/v1/embeddings")
    async def embeddings(body: wire.EmbeddingsBody, request: Request) -> dict[str, Any]:
        backend_request = body.to_backend()
        call = ModelCall(
            "embeddings", body.model, input_chars=sum(len(s) for s in backend_request.inputs)
        )
        admission = await gate.admit(request, call)
        started = time.perf_counter()
        try:
            model = registry.get(body.model, task="embeddings")
            result = await model.backend.handle(backend_request)
            if not isinstance(result, EmbeddingsResponse):
                raise UpstreamError(f"backend of {body.model!r} answered {type(result).__name__}")
        except InferenceError as exc:
            await admission.settle(_failed(exc, started))
            raise
        await admission.settle(CallOutcome(200, time.perf_counter() - started, usage=result.usage))
        return wire.embeddings_response(body, result)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: wire.ChatBody, request: Request
    ) -> dict[str, Any] | StreamingResponse:
        backend_request = body.to_backend()
        call = ModelCall(
            "chat",
            body.model,
            stream=body.stream,
            max_tokens=backend_request.max_tokens,
            input_chars=sum(len(m.content) for m in backend_request.messages),
        )
        admission = await gate.admit(request, call)
        started = time.perf_counter()
        cid, created = wire.completion_id(), int(time.time())
        try:
            model = registry.get(body.model, task="chat")
            result = await model.backend.handle(backend_request)
        except InferenceError as exc:
            await admission.settle(_failed(exc, started))
            raise
        if isinstance(result, ChatResponse):
            await admission.settle(
                CallOutcome(
                    200,
                    time.perf_counter() - started,
                    usage=result.usage,
                    finish_reason=result.finish_reason,
                )
            )
            return wire.chat_response(result, cid=cid, created=created)
        if isinstance(result, EmbeddingsResponse):
            error = UpstreamError(f"backend of {body.model!r} answered embeddings to a chat call")
            await admission.settle(_failed(error, started))
            raise error
        events = _sse(
            result, admission, model=body.model, cid=cid, created=created, started=started
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return api


def _failed(exc: InferenceError, started: float) -> CallOutcome:
    return CallOutcome(exc.http_status, time.perf_counter() - started, error_code=exc.code)


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _sse(
    stream: ChatStream,
    admission: Admission,
    *,
    model: str,
    cid: str,
    created: int,
    started: float,
) -> AsyncIterator[bytes]:
    """Backend chunks as OpenAI ``chat.completion.chunk`` events: a role delta, content
    deltas, a finish chunk, a usage chunk (always sent: the gate accounts with it), [DONE]."""
    usage: Usage | None = None
    finish: str | None = None
    first_token: float | None = None
    status, error_code = 200, None
    try:
        yield _event(
            wire.chat_chunk(
                cid=cid, created=created, model=model, delta={"role": "assistant", "content": ""}
            )
        )
        async for chunk in stream:
            if chunk.text:
                if first_token is None:
                    first_token = time.perf_counter() - started
                yield _event(
                    wire.chat_chunk(
                        cid=cid, created=created, model=model, delta={"content": chunk.text}
                    )
                )
            if chunk.finish_reason is not None:
                finish, usage = chunk.finish_reason, chunk.usage
                yield _event(
                    wire.chat_chunk(
                        cid=cid, created=created, model=model, delta={}, finish_reason=finish
                    )
                )
                yield _event(wire.chat_chunk(cid=cid, created=created, model=model, usage=usage))
        yield _event("[DONE]")
    except InferenceError as exc:
        # headers are gone: report in-band as OpenAI-compatible servers do, then end
        status, error_code = exc.http_status, exc.code
        log.warning("event=chat.stream_failed model=%s code=%s error=%s", model, exc.code, exc)
        yield _event(wire.error_body(str(exc), error_type=exc.error_type, code=exc.code))
        yield _event("[DONE]")
    finally:
        await stream.aclose()
        if usage is None and status == 200:
            status, error_code = 499, "client_closed"
        await admission.settle(
            CallOutcome(
                status,
                time.perf_counter() - started,
                usage=usage,
                finish_reason=finish,
                error_code=error_code,
                time_to_first_token_s=first_token,
            )
        )
