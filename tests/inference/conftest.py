"""Session-wide real models and servers for the inference tests.

Every model is loaded once per session: the embeddings encoder, the chat model (its GGUF
converted once into a session data dir, which later loads reuse), and a second zerogate
inference instance (``python -m inference.cli serve --ungated``) run by uvicorn on a loopback
port as the real OpenAI-compatible upstream. Async tests here share the session event loop
(``pytestmark`` in each module) because the backends' workers live on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml
from inference_support import CHAT_MODEL, EMBED_MODEL, free_port

from inference.backends.local_torch_chat import LocalTorchChat
from inference.backends.local_torch_embeddings import LocalTorchEmbeddings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def model_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zerogate-data")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def embeddings_backend() -> AsyncIterator[LocalTorchEmbeddings]:
    backend = LocalTorchEmbeddings(name=EMBED_MODEL, device="auto", batch_max=32, batch_wait_ms=5)
    await backend.start()
    yield backend
    await backend.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chat_backend(model_data_dir: Path) -> AsyncIterator[LocalTorchChat]:
    backend = LocalTorchChat(
        name=CHAT_MODEL, cache_dir=model_data_dir / "models" / CHAT_MODEL, device="auto"
    )
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture(scope="session")
def upstream_url(model_data_dir: Path, chat_backend: LocalTorchChat) -> Iterator[str]:
    """Base URL (``.../v1``) of a second, ungated zerogate inference instance.

    Depends on ``chat_backend`` so the GGUF conversion is already cached in the data dir.
    """
    port = free_port()
    config = model_data_dir / "upstream.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(model_data_dir),
                "inference": {
                    "batch_wait_ms": 2.0,
                    "models": [
                        {"name": EMBED_MODEL, "task": "embeddings", "device": "cpu"},
                        {"name": CHAT_MODEL, "task": "chat", "device": "cpu"},
                    ],
                },
            }
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    log_path = model_data_dir / "upstream.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inference.cli",
                "serve",
                "--ungated",
                "--config",
                str(config),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"upstream instance exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"upstream instance not ready: {log_path.read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"{base}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
