#!/usr/bin/env bash
# DAPO on CPU with the tiny model and the quick start's task (2 FSDP ranks, hf rollout), through verl's entry point
# `python -m recipe.dapo.main_dapo`. Scaled-down settings; the paper's are in README.md.
#   bash recipe/dapo/run_dapo_tiny_cpu.sh [overrides...]          (~30 s on 2 cores once installed)
# Measured: reward -0.41 (first 5 steps, overlong penalty included) -> 0.59 (last 5), 1..4 generation batches a step.
# Dynamic sampling keeps generating until enough prompt groups vary (max_num_gen_batches=0: no cap); once this toy
# task is solved every group scores alike and the steps would generate ever more, so the run stops at 12 steps.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/outputs/dapo}"
PY="${PYTHON:-python3}"

bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
[[ -f "$OUT/model/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$OUT/model"
[[ -f "$OUT/data/train.parquet" ]] || "$PY" examples/quickstart/make_data.py --out "$OUT/data"
rm -f "$OUT/metrics.jsonl"
export VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl"

MAX_RESPONSE=16
"$PY" -m recipe.dapo.main_dapo \
    data.train_files="$OUT/data/train.parquet" \
    data.val_files="$OUT/data/test.parquet" \
    data.gen_batch_size=32 \
    algorithm.filter_groups.max_num_gen_batches=0 \
    data.train_batch_size=8 \
    data.max_prompt_length=48 \
    data.max_response_length=$MAX_RESPONSE \
    data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="$OUT/model" \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.optim.lr=1e-2 \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.name=hf \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    +reward_model.reward_kwargs.overlong_buffer_cfg.enable=True \
    +reward_model.reward_kwargs.overlong_buffer_cfg.len=4 \
    +reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor=0.5 \
    +reward_model.reward_kwargs.overlong_buffer_cfg.log=False \
    +reward_model.reward_kwargs.max_resp_len=$MAX_RESPONSE \
    custom_reward_function.path="$ROOT/examples/quickstart/reward.py" \
    trainer.device=cpu \
    trainer.n_gpus_per_node=2 \
    trainer.logger='[console,file]' \
    trainer.experiment_name=dapo_tiny_cpu \
    trainer.default_local_dir="$OUT/checkpoints" \
    trainer.resume_mode=disable \
    trainer.val_before_train=False \
    trainer.test_freq=-1 \
    trainer.save_freq=-1 \
    trainer.total_training_steps=12 \
    trainer.total_epochs=100 \
    "$@"
"$PY" - "$OUT/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line)["data"] for line in open(sys.argv[1])]
scores = [r["critic/score/mean"] for r in rows if "critic/score/mean" in r]
gens = [r.get("train/num_gen_batches", 1) for r in rows]
print(f"DAPO: reward {sum(scores[:5]) / 5:.3f} (first 5 steps) -> {sum(scores[-5:]) / 5:.3f} (last 5); "
      f"generation batches per step {min(gens):.0f}..{max(gens):.0f} (dynamic sampling)")
PYEOF
