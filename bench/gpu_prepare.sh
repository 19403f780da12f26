#!/usr/bin/env bash
# Prepare what bench/gpu_check.sh needs on a GPU machine (run HERE, once, after `make setup`):
#   .whl/                      cp312 wheels of the service's packages the GPU image lacks, and
#                              OPA's Go bindings as a tarball (their wheel claims Python >= 3.14)
#   .zerogate/gpu/minilm-int8  the embeddings model int8-packed (bench/gpu_pack.py)
#   .zerogate/gpu/smol-config  the chat model's config + tokenizer (random weights there)
# Together with the repository this stays under the device tool's 64 MiB. Then, with the
# device tool: carry [".whl", ".zerogate/gpu/minilm-int8", ".zerogate/gpu/smol-config"] and run
#   PYTHON=python3 OUT=$OUT bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")" && touch "$exclude"
grep -qxF "/.whl/" "$exclude" || echo "/.whl/" >> "$exclude"
mkdir -p .whl .zerogate/gpu
# what the gated service imports beyond the GPU image's packages (checked by running
# bench/inference.py in a venv holding only that image's package list plus these)
PKGS="alembic annotated-types cffi cryptography fastapi gordon-to-regorus mako opentelemetry-api
opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-exporter-prometheus
opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common
opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common opentelemetry-proto
googleapis-common-protos pycparser pydantic pydantic-core pydantic-settings pyjwt python-dotenv
rfc8785 sqlalchemy starlette typing-inspection uvicorn gguf grpclib h2 hpack hyperframe spiffe
pem pyasn1 pyasn1-modules truststore h11 httptools uvloop"
req=$(mktemp)
.venv/bin/pip freeze 2>/dev/null | while IFS= read -r line; do
  name=$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')
  for p in $PKGS; do if [ "$name" = "$p" ]; then echo "$line"; fi; done
done > "$req"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_27_x86_64 -d .whl -r "$req"
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
tar -cJf .whl/opa_bindings.tar.xz -C "$site" opa_bindings opa_golib_python_bindings-0.4.4.dist-info
HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_pack.py pack .zerogate/gpu/minilm-int8
HF_HUB_OFFLINE=1 .venv/bin/python - <<'PY'
from pathlib import Path
from transformers import AutoConfig, AutoTokenizer
from inference.backends.torch_support import default_chat_path
src = default_chat_path()
out = Path(".zerogate/gpu/smol-config")
kw = {"gguf_file": src.name} if src.suffix == ".gguf" else {}
base = src.parent if src.suffix == ".gguf" else src
AutoConfig.from_pretrained(base, **kw).save_pretrained(out)
AutoTokenizer.from_pretrained(base, **kw).save_pretrained(out)
print(f"chat config + tokenizer -> {out}")
PY
du -sh .whl .zerogate/gpu/minilm-int8 .zerogate/gpu/smol-config
