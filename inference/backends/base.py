"""The backend seam: one method, ``handle``, like httpx's ``BaseTransport.handle_request``.

A backend receives a typed, already-validated request and answers with a typed response:

=====================================  =============================================
request                                 answer
=====================================  =============================================
``EmbeddingsRequest``                   ``EmbeddingsResponse`` (one vector per input)
``ChatRequest(stream=False)``           ``ChatResponse``
``ChatRequest(stream=True)``            ``ChatStream``: an async generator of ``ChatChunk``
=====================================  =============================================

What every backend MUST do (``tests/inference/test_backends_contract.py`` checks it):

- raise ``WrongTaskError`` for a request of the other task, ``InvalidRequestError`` for a
  request it cannot serve (empty input, prompt too long), never a bare exception;
- report real token counts in ``Usage`` (the gate debits budgets with them);
- for a stream: validate before returning (errors that can be known up front are raised by
  ``handle``, not by the first ``__anext__``), yield text deltas, and end with exactly one
  chunk that carries ``finish_reason`` and ``usage``; release every resource (lock, thread,
  HTTP connection) when the generator finishes or ``aclose()`` is called.
- ``finish_reason`` is ``"stop"`` (end of sequence or a stop string) or ``"length"``
  (``max_tokens`` reached).

Long-running backends also implement ``Lifecycle`` (``start``/``stop``/``ready``); the
``ModelRegistry`` (``inference/models.py``) drives it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeAlias, runtime_checkable

FinishReason = Literal["stop", "length"]
Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat completion. ``max_tokens=None`` lets the backend apply its default cap;
    ``temperature == 0`` means greedy decoding; ``seed`` makes sampling reproducible."""

    model: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stream: bool = False
    seed: int | None = None


BackendRequest: TypeAlias = EmbeddingsRequest | ChatRequest


@dataclass(frozen=True, slots=True)
class EmbeddingsResponse:
    model: str
    vectors: list[list[float]]
    usage: Usage


@dataclass(frozen=True, slots=True)
class ChatResponse:
    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """A piece of a streamed answer. The last chunk of a stream carries ``finish_reason``
    and ``usage`` (its ``text`` may be empty); no chunk follows it."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = field(default=None)


ChatStream: TypeAlias = AsyncGenerator[ChatChunk, None]
BackendResponse: TypeAlias = EmbeddingsResponse | ChatResponse | ChatStream


class Backend(Protocol):
    async def handle(self, request: BackendRequest) -> BackendResponse:
        """Serve one request; see the module docstring for the contract."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    async def start(self) -> None:
        """Load weights / open connections. Raises on a configuration that cannot work."""
        ...

    async def stop(self) -> None:
        """Release resources; later calls to ``handle`` raise ``BackendUnavailableError``."""
        ...

    def ready(self) -> bool:
        """True once ``start`` has finished and until ``stop``."""
        ...


async def collect(stream: ChatStream, *, model: str) -> ChatResponse:
    """Drain a stream into a ``ChatResponse`` (used by backends whose non-streamed answer is
    the streamed one joined, and by tests)."""
    parts: list[str] = []
    try:
        async for chunk in stream:
            parts.append(chunk.text)
            if chunk.finish_reason is not None:
                if chunk.usage is None:
                    raise RuntimeError("the final chunk of a stream must carry usage")
                text = "".join(parts)
                return ChatResponse(model, text, chunk.finish_reason, chunk.usage)
    finally:
        await stream.aclose()
    raise RuntimeError("the stream ended without a final chunk")
