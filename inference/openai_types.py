"""OpenAI wire shapes (the ``/v1`` API as the ``openai`` SDK speaks it) and their mapping to
the backend request/response types of ``inference/backends/base.py``.

Requests ignore fields we do not know (as OpenAI-compatible servers such as vLLM do, so newer
SDKs keep working) but refuse fields we know and cannot honour (``n > 1``, image parts, token
id inputs) with a 400 that names them, rather than silently answering something else.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.backends.base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Usage,
)
from inference.errors import InvalidRequestError

MAX_TOKENS_LIMIT = 1 << 20


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


# requests ----------------------------------------------------------------------------------


class EmbeddingsBody(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    def to_backend(self) -> EmbeddingsRequest:
        raw = self.input
        if isinstance(raw, str):
            inputs: tuple[str, ...] = (raw,)
        elif all(isinstance(x, str) for x in raw):
            inputs = tuple(str(x) for x in raw)
        else:
            raise InvalidRequestError("input as token ids is not supported; send strings")
        if self.dimensions is not None:
            raise InvalidRequestError("dimensions is not supported by this model")
        return EmbeddingsRequest(model=self.model, inputs=inputs)


class TextPart(_Wire):
    type: str
    text: str | None = None


class MessageBody(_Wire):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def to_backend(self, index: int) -> ChatMessage:
        content = self.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            pieces = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise InvalidRequestError(
                        f"messages[{index}].content: only text parts are supported, got "
                        f"{part.type!r}"
                    )
                pieces.append(part.text)
            text = "".join(pieces)
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text)


class StreamOptions(_Wire):
    include_usage: bool = True


class ChatBody(_Wire):
    model: str = Field(min_length=1)
    messages: list[MessageBody] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    # the range torch.Generator.manual_seed takes; beyond it sampling failed with a 500
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    user: str | None = None

    def to_backend(self) -> ChatRequest:
        if self.n != 1:
            raise InvalidRequestError(f"n must be 1, got {self.n}")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4:
            raise InvalidRequestError(f"stop holds {len(stop)} strings; at most 4")
        return ChatRequest(
            model=self.model,
            messages=tuple(m.to_backend(i) for i, m in enumerate(self.messages)),
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(s for s in stop if s),
            stream=self.stream,
            seed=self.seed,
        )


# responses ---------------------------------------------------------------------------------


def _usage(usage: Usage, *, completion: bool = True) -> dict[str, int]:
    if not completion:
        return {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _b64(vector: list[float]) -> str:
    # the SDK decodes base64 embeddings as little-endian float32 (numpy.frombuffer / array)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embeddings_response(body: EmbeddingsBody, result: EmbeddingsResponse) -> dict[str, Any]:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _b64(v) if body.encoding_format == "base64" else v,
        }
        for i, v in enumerate(result.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": _usage(result.usage, completion=False),
    }


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_response(result: ChatResponse, *, cid: str, created: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result.usage),
    }


def chat_chunk(
    *,
    cid: str,
    created: int,
    model: str,
    delta: dict[str, str] | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``. With ``usage`` and no delta: the final usage chunk
    (``choices`` empty, as OpenAI sends it for ``stream_options.include_usage``)."""
    choices: list[dict[str, Any]] = []
    if delta is not None or finish_reason is not None:
        choices.append(
            {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        )
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": _usage(usage) if usage is not None else None,
    }


def models_response(names: list[str], *, created: int | None = None) -> dict[str, Any]:
    stamp = created if created is not None else int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": stamp, "owned_by": "zerogate"}
            for name in names
        ],
    }


def error_body(message: str, *, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}
