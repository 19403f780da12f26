"""The one contract every backend passes (inference/backends/base.py), run against the local
PyTorch backends and the openai-upstream backend talking to a real second zerogate instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from inference_support import CHAT_MODEL, EMBED_MODEL

from inference.backends.base import (
    Backend,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
)
from inference.backends.local_torch_chat import LocalTorchChat
from inference.backends.local_torch_embeddings import LocalTorchEmbeddings
from inference.backends.openai_upstream import OpenAIUpstream
from inference.errors import InvalidRequestError, WrongTaskError

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = (ChatMessage("user", "What is the capital of France?"),)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def upstream_embeddings(upstream_url: str) -> AsyncIterator[OpenAIUpstream]:
    backend = OpenAIUpstream(
        name="up-embed", url=upstream_url, task="embeddings", upstream_model=EMBED_MODEL
    )
    await backend.start()
    yield backend
    await backend.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def upstream_chat(upstream_url: str) -> AsyncIterator[OpenAIUpstream]:
    backend = OpenAIUpstream(
        name="up-chat", url=upstream_url, task="chat", upstream_model=CHAT_MODEL
    )
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture(params=["local-torch", "openai-upstream"])
def embedder(request: pytest.FixtureRequest) -> Backend:
    name = "embeddings_backend" if request.param == "local-torch" else "upstream_embeddings"
    backend: Backend = request.getfixturevalue(name)
    return backend


@pytest.fixture(params=["local-torch", "openai-upstream"])
def chatter(request: pytest.FixtureRequest) -> Backend:
    name = "chat_backend" if request.param == "local-torch" else "upstream_chat"
    backend: Backend = request.getfixturevalue(name)
    return backend


def _model(backend: Backend) -> str:
    assert isinstance(backend, LocalTorchEmbeddings | LocalTorchChat | OpenAIUpstream)
    return backend.name


async def _embed(backend: Backend, *texts: str) -> EmbeddingsResponse:
    result = await backend.handle(EmbeddingsRequest(_model(backend), texts))
    assert isinstance(result, EmbeddingsResponse)
    return result


async def _chat(backend: Backend, **kw: object) -> ChatResponse:
    request = ChatRequest(_model(backend), kw.pop("messages", QUESTION), **kw)  # type: ignore[arg-type]
    result = await backend.handle(request)
    assert isinstance(result, ChatResponse)
    return result


async def _stream(backend: Backend, **kw: object) -> list[ChatChunk]:
    request = ChatRequest(_model(backend), QUESTION, stream=True, **kw)  # type: ignore[arg-type]
    stream = await backend.handle(request)
    assert not isinstance(stream, ChatResponse | EmbeddingsResponse)
    return [chunk async for chunk in stream]


# embeddings ---------------------------------------------------------------------------------


async def test_embeddings_one_vector_per_input_in_order(embedder: Backend) -> None:
    texts = ("The cat sat on the mat.", "Stock prices fell sharply.", "A kitten rests on a rug.")
    both = await _embed(embedder, *texts)
    assert len(both.vectors) == 3
    assert {len(v) for v in both.vectors} == {384}
    assert both.usage.prompt_tokens > 3
    assert both.usage.completion_tokens == 0
    alone = await _embed(embedder, texts[1])
    assert max(abs(a - b) for a, b in zip(alone.vectors[0], both.vectors[1], strict=True)) < 1e-4
    assert alone.usage.prompt_tokens < both.usage.prompt_tokens


async def test_embeddings_refuse_empty_input(embedder: Backend) -> None:
    with pytest.raises(InvalidRequestError):
        await _embed(embedder)
    with pytest.raises(InvalidRequestError):
        await _embed(embedder, "fine", "")


async def test_embeddings_backend_refuses_chat(embedder: Backend) -> None:
    with pytest.raises(WrongTaskError):
        await embedder.handle(ChatRequest(_model(embedder), QUESTION))


# chat ---------------------------------------------------------------------------------------


async def test_chat_greedy_answer_with_real_usage(chatter: Backend) -> None:
    result = await _chat(chatter, max_tokens=16, temperature=0.0)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens > 10
    assert 1 <= result.usage.completion_tokens <= 16


async def test_chat_max_tokens_ends_with_length(chatter: Backend) -> None:
    result = await _chat(chatter, max_tokens=3, temperature=0.0)
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 3
    assert result.text


async def test_chat_stream_matches_plain_and_ends_with_one_final_chunk(chatter: Backend) -> None:
    plain = await _chat(chatter, max_tokens=12, temperature=0.0)
    chunks = await _stream(chatter, max_tokens=12, temperature=0.0)
    finals = [c for c in chunks if c.finish_reason is not None]
    assert finals == [chunks[-1]]
    assert chunks[-1].usage == plain.usage
    assert chunks[-1].finish_reason == plain.finish_reason
    assert "".join(c.text for c in chunks) == plain.text
    assert len([c for c in chunks if c.text]) > 1  # delivered piece by piece


async def test_chat_stop_string_cuts_the_answer(chatter: Backend) -> None:
    result = await _chat(chatter, max_tokens=16, temperature=0.0, stop=("Paris",))
    assert "Paris" not in result.text
    assert result.text.startswith("The capital of France")
    assert result.finish_reason == "stop"


async def test_chat_closing_a_stream_early_frees_the_model(chatter: Backend) -> None:
    request = ChatRequest(_model(chatter), QUESTION, stream=True, max_tokens=64, temperature=0)
    stream = await chatter.handle(request)
    assert not isinstance(stream, ChatResponse | EmbeddingsResponse)
    first = await anext(stream)
    assert first.finish_reason is None
    await stream.aclose()
    result = await asyncio.wait_for(_chat(chatter, max_tokens=2, temperature=0.0), 60)
    assert result.usage.completion_tokens == 2


async def test_chat_refuses_empty_messages_and_embeddings(chatter: Backend) -> None:
    with pytest.raises(InvalidRequestError):
        await _chat(chatter, messages=())
    with pytest.raises(WrongTaskError):
        await chatter.handle(EmbeddingsRequest(_model(chatter), ("text",)))
