"""openai-upstream failure handling against real HTTP servers on loopback: a small FastAPI app
that misbehaves on purpose (503 then 200, 429 with Retry-After, slow, broken stream, 401), a
port where nothing listens (connection refused), and the credential that zerogate holds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from inference_support import free_port

from inference.backends.base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
)
from inference.backends.breaker import BreakerState, CircuitBreaker
from inference.backends.openai_upstream import OpenAIUpstream
from inference.errors import (
    BackendUnavailableError,
    CircuitOpenError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from zerogate.clock import ManualClock
from zerogate.errors import ConfigError

QUESTION = (ChatMessage("user", "hi"),)


def _completion(text: str = "hello") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


def _flaky_app(seen: dict[str, list[dict[str, Any]]]) -> FastAPI:
    app = FastAPI()

    def record(kind: str, request: Request, body: Any) -> int:
        seen.setdefault(kind, []).append(
            {"authorization": request.headers.get("authorization"), "body": body}
        )
        return len(seen[kind])

    @app.post("/flaky/v1/chat/completions")
    async def flaky(request: Request) -> JSONResponse:
        n = record("flaky", request, await request.json())
        if n == 1:
            return JSONResponse({"error": {"message": "warming up"}}, status_code=503)
        return JSONResponse(_completion())

    @app.post("/down/v1/chat/completions")
    async def down(request: Request) -> JSONResponse:
        record("down", request, None)
        return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)

    @app.post("/ratelimit/v1/embeddings")
    async def ratelimit(request: Request) -> JSONResponse:
        n = record("ratelimit", request, await request.json())
        if n == 1:
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0.2"}
            )
        return JSONResponse(
            {
                "object": "list",
                "model": "m",
                "data": [{"object": "embedding", "index": 0, "embedding": [1.0, 0.0]}],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    @app.post("/slow/v1/chat/completions")
    async def slow(request: Request) -> JSONResponse:
        record("slow", request, None)
        await asyncio.sleep(3)
        return JSONResponse(_completion())

    @app.post("/badrequest/v1/chat/completions")
    async def badrequest(request: Request) -> JSONResponse:
        record("badrequest", request, None)
        return JSONResponse({"error": {"message": "max_tokens is too large"}}, status_code=400)

    @app.post("/unauthorized/v1/chat/completions")
    async def unauthorized(request: Request) -> JSONResponse:
        record("unauthorized", request, None)
        return JSONResponse({"error": {"message": "bad key"}}, status_code=401)

    @app.post("/broken/v1/chat/completions")
    async def broken(request: Request) -> StreamingResponse:
        record("broken", request, await request.json())

        async def events() -> AsyncIterator[bytes]:
            chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n".encode()
            raise RuntimeError("upstream crashed mid-stream")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/nousage/v1/chat/completions")
    async def nousage(request: Request) -> StreamingResponse:
        record("nousage", request, await request.json())

        async def events() -> AsyncIterator[bytes]:
            for piece, finish in (("Hel", None), ("lo", None), ("", "length")):
                chunk = {
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]
                }
                yield f": keep-alive\n\ndata: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def flaky() -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    seen: dict[str, list[dict[str, Any]]] = {}
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_flaky_app(seen), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "flaky server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", seen
    server.should_exit = True
    thread.join(10)


def _upstream(base: str, path: str, **kw: Any) -> OpenAIUpstream:
    kw.setdefault("task", "chat")
    kw.setdefault("backoff_base_s", 0.01)
    return OpenAIUpstream(name=path, url=f"{base}/{path}/v1", **kw)


async def test_503_then_200_is_retried_with_zerogates_credential(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, seen = flaky
    monkeypatch.setenv("ZG_TEST_UPSTREAM_KEY", "sk-held-by-zerogate")
    backend = _upstream(base, "flaky", api_key_env="ZG_TEST_UPSTREAM_KEY", upstream_model="big")
    await backend.start()
    result = await backend.handle(ChatRequest("flaky", QUESTION, max_tokens=4, temperature=0))
    await backend.stop()
    assert isinstance(result, ChatResponse)
    assert result.text == "hello"
    assert result.usage.prompt_tokens == 5
    assert backend.attempts == 2
    assert [c["authorization"] for c in seen["flaky"]] == ["Bearer sk-held-by-zerogate"] * 2
    assert seen["flaky"][1]["body"]["model"] == "big"
    assert backend.breaker.state is BreakerState.CLOSED


async def test_missing_credential_variable_fails_at_start() -> None:
    backend = OpenAIUpstream(
        name="x", url="http://127.0.0.1:9/v1", task="chat", api_key_env="ZG_TEST_NOT_SET_ANYWHERE"
    )
    with pytest.raises(ConfigError, match="ZG_TEST_NOT_SET_ANYWHERE"):
        await backend.start()


async def test_429_honours_retry_after(flaky: tuple[str, dict[str, list[dict[str, Any]]]]) -> None:
    base, seen = flaky
    backend = _upstream(base, "ratelimit", task="embeddings")
    await backend.start()
    started = time.monotonic()
    result = await backend.handle(EmbeddingsRequest("ratelimit", ("a",)))
    elapsed = time.monotonic() - started
    await backend.stop()
    assert isinstance(result, EmbeddingsResponse)
    assert result.vectors == [[1.0, 0.0]]
    assert backend.attempts == 2
    assert elapsed >= 0.2
    assert (
        "authorization" not in seen["ratelimit"][0] or seen["ratelimit"][0]["authorization"] is None
    )


async def test_persistent_5xx_gives_up_after_retries_and_opens_the_breaker(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, seen = flaky
    clock = ManualClock()
    breaker = CircuitBreaker(
        name="down", failure_threshold=3, reset_after=timedelta(seconds=30), clock=clock
    )
    backend = _upstream(base, "down", max_retries=2, breaker=breaker)
    await backend.start()
    with pytest.raises(UpstreamError, match="answered 503: overloaded"):
        await backend.handle(ChatRequest("down", QUESTION))
    assert len(seen["down"]) == 3
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await backend.handle(ChatRequest("down", QUESTION))
    assert len(seen["down"]) == 3  # refused without touching the upstream
    await backend.stop()


async def test_connection_refused_opens_breaker_then_half_open_trial() -> None:
    port = free_port()  # nothing listens there
    clock = ManualClock()
    breaker = CircuitBreaker(
        name="gone", failure_threshold=2, reset_after=timedelta(seconds=30), clock=clock
    )
    backend = OpenAIUpstream(
        name="gone",
        url=f"http://127.0.0.1:{port}/v1",
        task="chat",
        max_retries=3,
        backoff_base_s=0.01,
        breaker=breaker,
    )
    await backend.start()
    with pytest.raises(CircuitOpenError):
        await backend.handle(ChatRequest("gone", QUESTION))
    assert backend.attempts == 2  # the breaker cut the retries short
    assert breaker.state is BreakerState.OPEN
    clock.advance(timedelta(seconds=30))
    with pytest.raises(CircuitOpenError):  # the single trial fails, the breaker reopens
        await backend.handle(ChatRequest("gone", QUESTION))
    assert backend.attempts == 3
    assert breaker.state is BreakerState.OPEN
    await backend.stop()


async def test_connection_refused_without_breaker_trip_is_503() -> None:
    port = free_port()
    backend = OpenAIUpstream(
        name="gone",
        url=f"http://127.0.0.1:{port}/v1",
        task="embeddings",
        max_retries=1,
        backoff_base_s=0.01,
    )
    await backend.start()
    with pytest.raises(BackendUnavailableError, match="unreachable") as info:
        await backend.handle(EmbeddingsRequest("gone", ("a",)))
    assert info.value.http_status == 503
    assert backend.attempts == 2
    await backend.stop()


async def test_timeout_is_504_and_not_retried(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, _seen = flaky
    backend = _upstream(base, "slow", timeout_s=0.3, max_retries=3)
    await backend.start()
    with pytest.raises(UpstreamTimeoutError) as info:
        await backend.handle(ChatRequest("slow", QUESTION))
    await backend.stop()
    assert info.value.http_status == 504
    assert backend.attempts == 1


async def test_4xx_is_the_requests_fault_not_retried_not_a_breaker_failure(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, _seen = flaky
    breaker = CircuitBreaker(name="bad", failure_threshold=1, clock=ManualClock())
    backend = _upstream(base, "badrequest", breaker=breaker)
    await backend.start()
    with pytest.raises(InvalidRequestError, match="max_tokens is too large"):
        await backend.handle(ChatRequest("badrequest", QUESTION))
    assert backend.attempts == 1
    assert breaker.state is BreakerState.CLOSED
    unauthorized = _upstream(base, "unauthorized")
    await unauthorized.start()
    with pytest.raises(UpstreamError, match="refused zerogate's credential"):
        await unauthorized.handle(ChatRequest("unauthorized", QUESTION))
    await unauthorized.stop()
    await backend.stop()


async def test_broken_stream_is_an_error_and_never_retried(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, seen = flaky
    backend = _upstream(base, "broken", max_retries=3)
    await backend.start()
    stream = await backend.handle(ChatRequest("broken", QUESTION, stream=True))
    assert not isinstance(stream, ChatResponse | EmbeddingsResponse)
    texts = []
    with pytest.raises(UpstreamError):
        async for chunk in stream:
            texts.append(chunk.text)
    assert texts == ["Hel"]
    assert backend.attempts == 1
    assert len(seen["broken"]) == 1
    assert seen["broken"][0]["body"]["stream_options"] == {"include_usage": True}
    await backend.stop()


async def test_stream_without_usage_is_estimated(
    flaky: tuple[str, dict[str, list[dict[str, Any]]]],
) -> None:
    base, _ = flaky
    backend = _upstream(base, "nousage")
    await backend.start()
    stream = await backend.handle(ChatRequest("nousage", QUESTION, stream=True))
    assert not isinstance(stream, ChatResponse | EmbeddingsResponse)
    chunks = [c async for c in stream]
    await backend.stop()
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_bad_urls_are_refused() -> None:
    with pytest.raises(ConfigError, match="http"):
        OpenAIUpstream(name="x", url="ftp://example/v1", task="chat")
