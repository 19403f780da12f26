"""``local-torch`` embeddings: a sentence-transformers style encoder run with transformers.

Pipeline (as sentence-transformers runs all-MiniLM-L6-v2: Transformer -> mean Pooling ->
Normalize): tokenize, encoder forward pass, mean of the token states weighted by the attention
mask, L2 normalisation. Inputs longer than the model's ``max_seq_length``
(``sentence_bert_config.json``, else the tokenizer's limit) are refused with
``ContextLengthError`` rather than silently truncated, as OpenAI's API does.

Requests are tokenized on arrival (that gives the real ``usage.prompt_tokens`` and lets a bad
input fail alone), then queued in a ``MicroBatcher``; one worker thread pads each batch, sorted
by length to waste little on padding, and runs one forward pass per ``batch_max`` items.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from inference.backends import torch_support
from inference.backends.base import (
    BackendRequest,
    BackendResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Usage,
)
from inference.backends.batching import MicroBatcher
from inference.errors import (
    BackendUnavailableError,
    ContextLengthError,
    InvalidRequestError,
    WrongTaskError,
)
from zerogate.errors import ConfigError

log = logging.getLogger(__name__)

MAX_INPUTS = 2048  # per request, as OpenAI's embeddings API


class LocalTorchEmbeddings:
    """Implements ``Backend`` and ``Lifecycle``."""

    def __init__(
        self,
        *,
        name: str,
        path: Path | None = None,
        device: str = "auto",
        batch_max: int = 64,
        batch_wait_ms: float = 2.0,
    ) -> None:
        self.name = name
        self.path = path or torch_support.default_embeddings_path()
        self.device_spec = device
        self.batch_max = batch_max
        self.batch_wait_ms = batch_wait_ms
        self.device: Any = None
        self.dimensions = 0
        self.max_seq_length = 0
        self._tokenizer: Any = None
        self._model: Any = None
        self._executor = torch_support.single_thread_executor(f"embed-{name}")
        self._batcher: MicroBatcher[list[int], list[float]] | None = None

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._batcher is not None:
            return
        device = torch_support.resolve_device(self.device_spec)
        if not self.path.is_dir():
            raise ConfigError(f"embeddings model {self.name!r}: {self.path} is not a directory")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load, device)
        self._batcher = MicroBatcher(
            self._forward,
            executor=self._executor,
            batch_max=self.batch_max,
            batch_wait_ms=self.batch_wait_ms,
            name=f"embed-{self.name}",
        )
        self._batcher.start()
        log.info(
            "event=model.loaded model=%s task=embeddings device=%s dims=%d max_seq_length=%d",
            self.name,
            device,
            self.dimensions,
            self.max_seq_length,
        )

    def _load(self, device: Any) -> None:
        with torch_support.LOAD_LOCK:
            self._load_locked(device)

    def _load_locked(self, device: Any) -> None:

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        model = AutoModel.from_pretrained(str(self.path), dtype=torch_support.dtype_for(device))
        model.to(device).eval()
        limit = int(getattr(tokenizer, "model_max_length", 512) or 512)
        st_config = self.path / "sentence_bert_config.json"
        if st_config.is_file():
            limit = int(json.loads(st_config.read_text(encoding="utf-8"))["max_seq_length"])
        self.max_seq_length = min(limit, int(model.config.max_position_embeddings))
        self.dimensions = int(model.config.hidden_size)
        self.device = device
        self._tokenizer = tokenizer
        self._model = model

    async def stop(self) -> None:
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await batcher.stop()
        self._executor.shutdown(wait=True)

    def ready(self) -> bool:
        return self._batcher is not None

    @property
    def batch_stats(self) -> Any:
        return self._batcher.stats if self._batcher is not None else None

    # Backend -------------------------------------------------------------------------------

    async def handle(self, request: BackendRequest) -> BackendResponse:
        if not isinstance(request, EmbeddingsRequest):
            raise WrongTaskError(f"model {self.name!r} serves embeddings, not chat completions")
        batcher = self._batcher
        if batcher is None:
            raise BackendUnavailableError(f"model {self.name!r} is not loaded")
        ids = self.tokenize(request.inputs)
        vectors = await batcher.submit(ids)
        return EmbeddingsResponse(self.name, vectors, Usage(sum(len(i) for i in ids)))

    def tokenize(self, inputs: tuple[str, ...]) -> list[list[int]]:
        """Token ids per input (special tokens included); refuses empty or too-long inputs."""
        if not inputs:
            raise InvalidRequestError("input must hold at least one string")
        if len(inputs) > MAX_INPUTS:
            raise InvalidRequestError(f"input holds {len(inputs)} strings; at most {MAX_INPUTS}")
        for index, text in enumerate(inputs):
            if not text:
                raise InvalidRequestError(f"input[{index}] is empty")
        ids: list[list[int]] = self._tokenizer(list(inputs), add_special_tokens=True)["input_ids"]
        for index, row in enumerate(ids):
            if len(row) > self.max_seq_length:
                raise ContextLengthError(
                    f"input[{index}] has {len(row)} tokens; model {self.name!r} takes at most "
                    f"{self.max_seq_length}"
                )
        return ids

    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        """Runs on the model's thread: pad, encode, mean-pool, normalise."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out: list[list[float]] = [[] for _ in batch]
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_max):
                chunk = order[start : start + self.batch_max]
                enc = self._tokenizer.pad(
                    {"input_ids": [batch[i] for i in chunk]}, return_tensors="pt"
                )
                input_ids = enc["input_ids"].to(self.device)
                mask = enc["attention_mask"].to(self.device)
                states = self._model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
                for i, row in zip(chunk, pooled.cpu().tolist(), strict=True):
                    out[i] = row
        return out
