"""``openai-upstream``: any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp server, a
hosted API, another zerogate) reached by URL.

- The upstream credential is read by zerogate from the environment variable named in the
  model's ``api_key_env`` and sent as ``Authorization: Bearer``; the workload's own
  credential never reaches the upstream (a ``BackendRequest`` carries no headers at all).
- Timeouts: ``timeout_s`` per read/write (connect: at most 5 s). A read timeout is not
  retried (the upstream may still be generating) and answers 504.
- Retries: connection errors, 429 and 5xx are retried up to ``max_retries`` times with
  exponential backoff and jitter (delay ``d = min(cap, base * 2**n)``, sleep uniformly in
  ``[d/2, d]``; a ``Retry-After`` of at most ``cap`` seconds is honoured instead). A stream is
  retried only until its response headers arrive; once a byte has been passed on, never.
- A ``CircuitBreaker`` (``breaker.py``) guards every attempt: after repeated failures calls
  fail fast with 503 ``circuit_open`` instead of piling onto a sick upstream.
- Streaming: SSE passed through delta by delta; the upstream is asked for
  ``stream_options: {"include_usage": true}`` so its final usage chunk gives the real token
  counts. If the upstream sends no usage, completion tokens are counted as content chunks and
  prompt tokens estimated as characters / 4 (logged as ``event=upstream.usage_estimated``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from inference.backends.base import (
    BackendRequest,
    BackendResponse,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    ChatStream,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FinishReason,
    Usage,
)
from inference.backends.breaker import CircuitBreaker
from inference.errors import (
    BackendUnavailableError,
    InferenceError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    WrongTaskError,
)
from zerogate.errors import ConfigError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class _Retryable(Exception):
    """An attempt failed in a way that another attempt may fix."""

    def __init__(self, error: InferenceError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _finish(value: Any) -> FinishReason:
    return "length" if value == "length" else "stop"


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message", ""))[:500]
    except ValueError:
        pass
    return response.text[:200]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


class OpenAIUpstream:
    """Implements ``Backend`` and ``Lifecycle``."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        task: str,
        upstream_model: str = "",
        api_key_env: str = "",
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_base_s: float = 0.1,
        backoff_max_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"model {name!r}: upstream url must be http(s)://..., got {url!r}")
        if max_retries < 0:
            raise ConfigError(f"model {name!r}: max_retries must be >= 0")
        self.name = name
        self.url = url.rstrip("/")
        self.task = task
        self.upstream_model = upstream_model or name
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.breaker = breaker or CircuitBreaker(name=name)
        self.attempts = 0  # upstream HTTP attempts made, for tests and metrics
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._client: httpx.AsyncClient | None = None

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        headers = {"accept": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(
                    f"model {self.name!r}: environment variable {self.api_key_env} "
                    f"(api_key_env) is not set"
                )
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
            follow_redirects=False,
        )
        log.info("event=model.loaded model=%s backend=openai-upstream url=%s", self.name, self.url)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def ready(self) -> bool:
        return self._client is not None

    # Backend -------------------------------------------------------------------------------

    async def handle(self, request: BackendRequest) -> BackendResponse:
        asked = "embeddings" if isinstance(request, EmbeddingsRequest) else "chat"
        if asked != self.task:
            raise WrongTaskError(f"model {self.name!r} serves {self.task}, not {asked}")
        if isinstance(request, EmbeddingsRequest):
            if not request.inputs:
                raise InvalidRequestError("input must hold at least one string")
            body = await self._post_json(
                "embeddings",
                {
                    "model": self.upstream_model,
                    "input": list(request.inputs),
                    "encoding_format": "float",
                },
            )
            return self._embeddings(body, len(request.inputs))
        if not request.messages:
            raise InvalidRequestError("messages must hold at least one message")
        payload = self._chat_payload(request)
        if request.stream:
            response = await self._with_retries(lambda: self._open_stream(payload))
            return self._relay(response, request)
        return self._chat(await self._post_json("chat/completions", payload))

    def _chat_payload(self, request: ChatRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.upstream_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stream": request.stream,
        }
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.stop:
            payload["stop"] = list(request.stop)
        if request.seed is not None:
            payload["seed"] = request.seed
        if request.stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    # attempts, retries, breaker ------------------------------------------------------------

    def _client_or_fail(self) -> httpx.AsyncClient:
        if self._client is None:
            raise BackendUnavailableError(f"model {self.name!r} is not started")
        return self._client

    async def _with_retries(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        for n in range(self.max_retries + 1):
            self.breaker.acquire()  # raises CircuitOpenError
            self.attempts += 1
            try:
                result = await attempt()
            except _Retryable as failure:
                self.breaker.record_failure()
                if n == self.max_retries:
                    raise failure.error from None
                delay = self._backoff(n, failure.retry_after)
                if delay is None:
                    raise failure.error from None
                log.info(
                    "event=upstream.retry model=%s attempt=%d delay_s=%.3f reason=%s",
                    self.name,
                    n + 1,
                    delay,
                    failure.error.code,
                )
                await self._sleep(delay)
                continue
            except UpstreamTimeoutError:
                self.breaker.record_failure()
                raise
            except BaseException:
                # the upstream answered (a 4xx of the request's own making) or we were
                # cancelled: not the upstream's fault; closes a half-open trial
                self.breaker.record_success()
                raise
            self.breaker.record_success()
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        if retry_after is not None:
            # an upstream asking for a longer pause than we may wait: give up now
            return retry_after if retry_after <= self.backoff_max_s else None
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return self._rng.uniform(ceiling / 2, ceiling)

    def _check(self, response: httpx.Response) -> None:
        """Map a non-2xx answer to a domain error; raise ``_Retryable`` when worth retrying."""
        status = response.status_code
        if 200 <= status < 300:
            return
        message = _error_message(response)
        if status in RETRY_STATUSES:
            error: InferenceError = (
                BackendUnavailableError(f"upstream {self.name!r} is rate-limiting: {message}")
                if status == 429
                else UpstreamError(f"upstream {self.name!r} answered {status}: {message}")
            )
            raise _Retryable(error, _retry_after(response))
        if status in (400, 413, 422):
            raise InvalidRequestError(f"upstream {self.name!r} refused the request: {message}")
        if status in (401, 403):
            # the upstream refused zerogate's credential, not the caller's
            raise UpstreamError(f"upstream {self.name!r} refused zerogate's credential ({status})")
        raise UpstreamError(f"upstream {self.name!r} answered {status}: {message}")

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        client = self._client_or_fail()
        try:
            return await client.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
            raise _Retryable(
                BackendUnavailableError(f"upstream {self.name!r} unreachable: {exc!r}")
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(
                f"upstream {self.name!r} did not answer within {self.timeout_s}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.name!r} failed: {exc!r}") from exc

    async def _post_json(self, path: str, payload: dict[str, Any]) -> Any:
        async def attempt() -> Any:
            client = self._client_or_fail()
            response = await self._send(
                client.build_request("POST", path, json=payload), stream=False
            )
            self._check(response)
            try:
                return response.json()
            except ValueError as exc:
                raise UpstreamError(f"upstream {self.name!r} sent invalid JSON") from exc

        return await self._with_retries(attempt)

    async def _open_stream(self, payload: dict[str, Any]) -> httpx.Response:
        client = self._client_or_fail()
        request = client.build_request(
            "POST", "chat/completions", json=payload, headers={"accept": "text/event-stream"}
        )
        response = await self._send(request, stream=True)
        try:
            if response.status_code >= 300:
                await response.aread()
            self._check(response)
        except BaseException:
            await response.aclose()
            raise
        return response

    # answers -------------------------------------------------------------------------------

    def _embeddings(self, body: Any, count: int) -> EmbeddingsResponse:
        try:
            rows = sorted(body["data"], key=lambda row: int(row["index"]))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
            prompt_tokens = int(body["usage"]["prompt_tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"upstream {self.name!r} sent a malformed embeddings answer"
            ) from exc
        if len(vectors) != count:
            raise UpstreamError(
                f"upstream {self.name!r} sent {len(vectors)} embeddings for {count} inputs"
            )
        return EmbeddingsResponse(self.name, vectors, Usage(prompt_tokens))

    def _chat(self, body: Any) -> ChatResponse:
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] or ""
            usage = body["usage"]
            return ChatResponse(
                self.name,
                str(text),
                _finish(choice.get("finish_reason")),
                Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"])),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError(f"upstream {self.name!r} sent a malformed chat answer") from exc

    async def _relay(self, response: httpx.Response, request: ChatRequest) -> ChatStream:
        """Pass the upstream's SSE deltas on; end with one chunk holding finish + usage."""
        finish: FinishReason | None = None
        usage: Usage | None = None
        chunks = 0
        try:
            async for data in self._sse_data(response):
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                except ValueError as exc:
                    raise UpstreamError(f"upstream {self.name!r} sent a malformed event") from exc
                if not isinstance(event, dict):
                    raise UpstreamError(f"upstream {self.name!r} sent a malformed event")
                if "error" in event:
                    raise UpstreamError(
                        f"upstream {self.name!r} failed mid-stream: {event['error']}"
                    )
                if isinstance(event.get("usage"), dict):
                    u = event["usage"]
                    usage = Usage(
                        int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))
                    )
                for choice in event.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        chunks += 1
                        yield ChatChunk(str(delta))
                    if choice.get("finish_reason"):
                        finish = _finish(choice["finish_reason"])
        except httpx.TimeoutException as exc:
            self.breaker.record_failure()
            raise UpstreamTimeoutError(f"upstream {self.name!r} stalled mid-stream") from exc
        except httpx.HTTPError as exc:
            self.breaker.record_failure()
            raise UpstreamError(f"upstream {self.name!r} broke the stream: {exc!r}") from exc
        finally:
            await response.aclose()
        if finish is None:
            raise UpstreamError(f"upstream {self.name!r} ended the stream without finishing")
        if usage is None:
            prompt = sum(len(m.content) for m in request.messages) // 4
            log.warning("event=upstream.usage_estimated model=%s", self.name)
            usage = Usage(prompt, chunks)
        yield ChatChunk("", finish_reason=finish, usage=usage)

    @staticmethod
    async def _sse_data(response: httpx.Response) -> Any:
        """The ``data`` field of each server-sent event (WHATWG HTML, section 9.2.6)."""
        lines: list[str] = []
        async for line in response.aiter_lines():
            if line == "":
                if lines:
                    yield "\n".join(lines)
                    lines = []
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive
            field, _, value = line.partition(":")
            if field == "data":
                lines.append(value[1:] if value.startswith(" ") else value)
        if lines:
            yield "\n".join(lines)
