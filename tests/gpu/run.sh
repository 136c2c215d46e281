#!/usr/bin/env bash
# The GPU checks of the engine contract, in one run (under 8 minutes on one H100): prints a figure per check, says
# what it skipped and why, and leaves JSON/logs in OUT.
#
#   bash tests/gpu/run.sh [OUT]          # default OUT: $OUT or /tmp/verl-gpu-checks
#
# 1. the environment (torch, CUDA, GPU; which optional engines are installed);
# 2. pytest -m gpu: CUDA paths (packed vs padded log-probs in fp32/bf16, flash-attn varlen when installed; the hf
#    engine against transformers' generate on CUDA; the real SGLang engine when SGLang is installed);
# 3. GRPO, 3 steps, hf rollout on CUDA/nccl in bf16 with FSDP2 and use_remove_padding, driving the real FSDP worker
#    classes through torch.distributed without Ray (tests/gpu/grpo_no_ray.py), then the same with the padded
#    forward for the step-time comparison. Ulysses sequence parallelism is refused before Ray (not implemented), so
#    it is not run.
#
# On a machine without a package registry, carry the few wheels our package needs beyond torch and transformers
# (bash tests/gpu/wheels.sh prepares them in .whl/; install them with pip --no-index --target and PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-${OUT:-/tmp/verl-gpu-checks}}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0

echo "== 1. environment"
"$PY" - <<'PY' | tee "$OUT/environment.txt"
import importlib.util, torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("transformers", "tensordict", "omegaconf", "hydra", "flash_attn", "vllm", "sglang", "ray", "pytest"):
    spec = importlib.util.find_spec(name)
    version = "-"
    if spec is not None:
        try:
            version = __import__(name).__version__
        except Exception:
            version = "present"
    print(f"  {name:<13} {version if spec else 'not installed'}")
PY
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: nothing to check here (the CPU suite covers the rest)"
  exit 0
fi
NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"

echo "== 2. pytest -m gpu"
timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider -p no:randomly -s tests/gpu tests/workers/rollout/test_sglang_rollout.py \
  -o addopts="" 2>&1 | tee "$OUT/pytest_gpu.log" | grep -E "max \|diff\||passed|failed|skipped|SKIPPED|Error" || true
grep -qE "[0-9]+ failed" "$OUT/pytest_gpu.log" && status=1

echo "== 3. GRPO without Ray: hf rollout, CUDA/nccl, bf16, FSDP2 ($NGPU GPU(s))"
for rp in true false; do
  timeout 240 "$PY" -m torch.distributed.run --nproc_per_node "$NGPU" tests/gpu/grpo_no_ray.py --steps 3 --device cuda \
    --dtype bfloat16 --strategy fsdp2 --remove-padding "$rp" --prompts 16 --n 4 --response-length 64 \
    --out "$OUT/grpo_remove_padding_$rp.json" > "$OUT/grpo_remove_padding_$rp.log" 2>&1 || { status=1; tail -30 "$OUT/grpo_remove_padding_$rp.log"; }
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for rp in ("true", "false"):
    path = out / f"grpo_remove_padding_{rp}.json"
    if not path.exists():
        print(f"  use_remove_padding={rp}: no result (see {path.with_suffix('.log')})")
        continue
    s = json.loads(path.read_text())
    steps = s["steps"]
    later = [r["step_s"] for r in steps[1:]] or [steps[-1]["step_s"]]
    print(f"  use_remove_padding={rp}: {s['gpu']} x{s['world']}, init {s['init_s']:.1f} s, step (after the first) "
          f"{sum(later) / len(later):.2f} s, peak memory {s['peak_device_memory_gb']:.2f} GiB")
    for r in steps:
        print(f"    step {r['step']}: reward {r['reward_mean']:.3f}  gen {r['gen_s']:.2f} s  update {r['update_s']:.2f} s  "
              f"engine-vs-actor max |dlogp| {r['engine_vs_actor_max_abs_logprob_gap']:.2e}")
PY
echo "== 4. Megatron: logits against HF on CUDA (TP=$(( NGPU > 1 ? 2 : 1 ))), then GRPO 3 steps with the Megatron workers"
if "$PY" -c "import megatron.core" 2>/dev/null; then
  MODEL_DIR="$OUT/tiny_model"
  [[ -f "$MODEL_DIR/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$MODEL_DIR" > /dev/null
  timeout 180 "$PY" -m torch.distributed.run --nproc_per_node "$(( NGPU > 1 ? 2 : 1 ))" tests/models/mcore_tp_worker.py \
    "$MODEL_DIR" "$(( NGPU > 1 ? 2 : 1 ))" > "$OUT/megatron_parity.log" 2>&1 || status=1
  grep "^REPORT" "$OUT/megatron_parity.log" | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read()[7:]); print(f'  TP={r[\"tp\"]}: max |logit diff| {r[\"max_logit_diff\"]:.2e}, slices reassemble {r[\"reassembled\"]}, HF round trip {r[\"round_trip\"]}')" \
    || { status=1; tail -20 "$OUT/megatron_parity.log"; }
  timeout 240 "$PY" -m torch.distributed.run --nproc_per_node "$NGPU" tests/gpu/grpo_no_ray.py --steps 3 --device cuda \
    --dtype bfloat16 --strategy megatron --prompts 16 --n 4 --response-length 64 \
    --out "$OUT/grpo_megatron.json" > "$OUT/grpo_megatron.log" 2>&1 || { status=1; tail -30 "$OUT/grpo_megatron.log"; }
  [[ -f "$OUT/grpo_megatron.json" ]] && "$PY" -c "import json; s=json.load(open('$OUT/grpo_megatron.json')); print('  megatron GRPO rewards', [round(r['reward_mean'], 3) for r in s['steps']], 'engine-vs-actor max |dlogp|', max(r['engine_vs_actor_max_abs_logprob_gap'] for r in s['steps']))"
else
  echo "  skipped: megatron-core is not installed (carry its wheel: bash tests/gpu/wheels.sh)"
fi
echo "skipped: Ulysses sequence parallelism (refused before Ray: not implemented); vLLM/SGLang unless installed here"
exit $status
