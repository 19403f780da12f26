"""The model registry: which models exist, which backend serves each, and their lifecycle.

Built from ``InferenceSettings.models`` (``zerogate.yaml``). Each entry is validated when the
registry is built (bad device names, missing URLs, unknown task/backend pairs fail before
anything loads); ``start()`` loads every backend (weights, connections) and ``ready()`` is true
once all are up. The built-in backends are one small table, ``BACKENDS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inference.backends.base import Backend, Lifecycle
from inference.errors import BackendUnavailableError, ModelNotFoundError, WrongTaskError
from zerogate.config import InferenceSettings, ModelSettings
from zerogate.errors import ConfigError

log = logging.getLogger(__name__)

Factory = Callable[[ModelSettings, InferenceSettings, Path], Backend]


def _local_embeddings(
    model: ModelSettings, inference: InferenceSettings, data_dir: Path
) -> Backend:
    from inference.backends.local_torch_embeddings import LocalTorchEmbeddings

    return LocalTorchEmbeddings(
        name=model.name,
        path=Path(model.path) if model.path else None,
        device=model.device,
        batch_max=inference.batch_max,
        batch_wait_ms=inference.batch_wait_ms,
    )


def _local_chat(model: ModelSettings, inference: InferenceSettings, data_dir: Path) -> Backend:
    from inference.backends.local_torch_chat import LocalTorchChat

    return LocalTorchChat(
        name=model.name,
        path=Path(model.path) if model.path else None,
        cache_dir=data_dir / "models" / model.name,
        device=model.device,
    )


def _upstream(model: ModelSettings, inference: InferenceSettings, data_dir: Path) -> Backend:
    from inference.backends.openai_upstream import OpenAIUpstream

    if not model.url:
        raise ConfigError(f"model {model.name!r}: backend openai-upstream needs `url`")
    return OpenAIUpstream(
        name=model.name,
        url=model.url,
        task=model.task,
        upstream_model=model.upstream_model,
        api_key_env=model.api_key_env,
        timeout_s=model.timeout_s,
        max_retries=model.max_retries,
    )


# (backend, task) -> factory. Adding a backend is one line here.
BACKENDS: dict[tuple[str, str], Factory] = {
    ("local-torch", "embeddings"): _local_embeddings,
    ("local-torch", "chat"): _local_chat,
    ("openai-upstream", "embeddings"): _upstream,
    ("openai-upstream", "chat"): _upstream,
}

_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    task: str
    backend_name: str
    backend: Backend


class ModelRegistry:
    def __init__(self, models: list[Model]) -> None:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"model names must be unique; repeated: {', '.join(duplicates)}")
        self._models = {m.name: m for m in models}
        self._started = False

    @classmethod
    def from_settings(cls, inference: InferenceSettings, *, data_dir: Path) -> ModelRegistry:
        models = []
        for entry in inference.models:
            device = entry.device
            if not (device in _DEVICES or (device.startswith("cuda:") and device[5:].isdigit())):
                raise ConfigError(
                    f"model {entry.name!r}: unknown device {device!r} (auto, cpu, cuda, cuda:N)"
                )
            factory = BACKENDS.get((entry.backend, entry.task))
            if factory is None:
                raise ConfigError(
                    f"model {entry.name!r}: backend {entry.backend!r} cannot serve {entry.task!r}"
                )
            models.append(
                Model(entry.name, entry.task, entry.backend, factory(entry, inference, data_dir))
            )
        return cls(models)

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models.values())

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str, *, task: str | None = None) -> Model:
        """The model called ``name``; with ``task``, refuse a model of another task."""
        model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(f"the model {name!r} does not exist")
        if task is not None and model.task != task:
            raise WrongTaskError(f"model {name!r} serves {model.task}, not {task}")
        return model

    async def start(self) -> None:
        """Load every model, one after another (transformers' loading is not thread-safe and
        the cores are shared anyway); on a failure stop the ones already loaded."""
        for model in self:
            if isinstance(model.backend, Lifecycle):
                try:
                    await model.backend.start()
                except BaseException:
                    await self.stop()
                    raise
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for model in self:
            if isinstance(model.backend, Lifecycle):
                try:
                    await model.backend.stop()
                except Exception as exc:
                    log.warning("event=model.stop_failed model=%s error=%s", model.name, exc)

    def ready(self) -> bool:
        return self._started and all(
            m.backend.ready() for m in self if isinstance(m.backend, Lifecycle)
        )

    def require_ready(self, name: str) -> None:
        model = self.get(name)
        if isinstance(model.backend, Lifecycle) and not model.backend.ready():
            raise BackendUnavailableError(f"model {name!r} is not loaded yet")
