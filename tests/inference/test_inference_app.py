"""The ungated app skeleton through the real ``openai`` SDK and raw HTTP: OpenAI wire shapes,
SSE with usage in the final chunk, OpenAI-shaped errors; the registry built from settings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import openai
import pytest
from inference_support import CHAT_MODEL, EMBED_MODEL

from inference.app import create_app
from inference.models import ModelRegistry
from zerogate.config import InferenceSettings, ModelSettings
from zerogate.errors import ConfigError


@pytest.fixture
def client(upstream_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream_url, api_key="unused-ungated", max_retries=0)


def test_models_list(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == sorted([EMBED_MODEL, CHAT_MODEL])


def test_embeddings_via_sdk_base64_and_float(client: openai.OpenAI) -> None:
    texts = ["The cat sleeps.", "A kitten naps.", "Interest rates rose."]
    default = client.embeddings.create(model=EMBED_MODEL, input=texts)  # SDK asks for base64
    floats = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == 384
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
    cat, kitten, rates = (d.embedding for d in floats.data)
    dot = lambda u, v: sum(x * y for x, y in zip(u, v, strict=True))  # noqa: E731
    assert dot(cat, kitten) > dot(cat, rates)
    assert math.isclose(dot(cat, cat), 1.0, abs_tol=1e-5)
    assert default.usage.prompt_tokens == floats.usage.prompt_tokens > 0


def test_chat_plain_and_streaming_via_sdk(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    assert plain.choices[0].message.content and "Paris" in plain.choices[0].message.content
    assert plain.choices[0].finish_reason == "stop"
    assert plain.usage is not None and plain.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens


def test_raw_sse_ends_with_done(upstream_url: str) -> None:
    body = {
        "model": CHAT_MODEL,
        "stream": True,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    with httpx.stream("POST", f"{upstream_url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["usage"]["completion_tokens"] == 2
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "message"),
    [
        (
            "chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
            "the model 'nope' does not exist",
        ),
        (
            "embeddings",
            {"model": CHAT_MODEL, "input": "x"},
            400,
            "model_task_mismatch",
            "serves chat, not embeddings",
        ),
        ("embeddings", {"model": EMBED_MODEL, "input": ""}, 400, "invalid_request", "is empty"),
        (
            "embeddings",
            {"model": EMBED_MODEL, "input": [[1, 2]]},
            400,
            "invalid_request",
            "token ids",
        ),
        (
            "chat/completions",
            {"model": CHAT_MODEL, "messages": []},
            400,
            "invalid_request",
            "messages",
        ),
        (
            "chat/completions",
            {"model": CHAT_MODEL, "n": 2, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request",
            "n must be 1",
        ),
        (
            "chat/completions",
            {
                "model": CHAT_MODEL,
                "max_tokens": 100000,
                "messages": [{"role": "user", "content": "x"}],
            },
            400,
            "context_length_exceeded",
            "context length",
        ),
        (
            "chat/completions",
            {"model": CHAT_MODEL, "temperature": 9, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request",
            "temperature",
        ),
        (
            "chat/completions",
            {"model": CHAT_MODEL, "seed": 2**64, "messages": [{"role": "user", "content": "x"}]},
            400,
            "invalid_request",
            "seed",
        ),
    ],
)
def test_errors_use_openais_shape(
    upstream_url: str, path: str, body: dict[str, object], status: int, code: str, message: str
) -> None:
    response = httpx.post(f"{upstream_url}/{path}", json=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"


def test_unknown_route_and_malformed_json_are_openai_errors(upstream_url: str) -> None:
    missing = httpx.get(f"{upstream_url}/nothing-here", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    garbage = httpx.post(
        f"{upstream_url}/embeddings",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert garbage.status_code == 400
    assert garbage.json()["error"]["code"] == "invalid_request"


def test_health_and_readiness(upstream_url: str) -> None:
    base = upstream_url.removesuffix("/v1")
    assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz", timeout=10).json() == {"status": "ready"}


def test_an_app_without_a_gate_must_be_asked_for(tmp_path: Path) -> None:
    registry = ModelRegistry.from_settings(
        InferenceSettings(models=[ModelSettings(name="e", task="embeddings", device="cpu")]),
        data_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match="needs a gate"):
        create_app(registry)
    assert create_app(registry, ungated=True).title == "zerogate inference"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "a", "task": "chat"}, {"name": "a", "task": "embeddings"}], "repeated: a"),
        ([{"name": "u", "task": "chat", "backend": "openai-upstream"}], "needs `url`"),
        ([{"name": "d", "task": "chat", "device": "gpu0"}], "unknown device 'gpu0'"),
    ],
)
def test_registry_refuses_bad_model_settings(
    tmp_path: Path, models: list[dict[str, str]], message: str
) -> None:
    settings = InferenceSettings(models=[ModelSettings(**m) for m in models])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        ModelRegistry.from_settings(settings, data_dir=tmp_path)


def test_cli_gated_serve_refuses_to_start_without_its_svid(tmp_path: Path) -> None:
    """Gated is the default; without a Workload API to get its SVID from it exits 1."""
    import subprocess
    import sys

    config = tmp_path / "zerogate.yaml"
    config.write_text(f"data_dir: {tmp_path}\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "inference.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 1, done.stderr
    assert "cannot get the X.509-SVID of spiffe://zerogate.internal/inference" in done.stderr
