#!/usr/bin/env bash
# GRPO with the Megatron workers (megatron-core, tensor parallel over 2 ranks) on the quick start's task, on CPU.
# The same job as examples/quickstart/run_grpo_cpu.sh, with verl's Megatron config and key layout:
#   --config-name ppo_megatron_trainer, actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2.
# PP=2 splits the model into two pipeline stages instead (megatron-core's 1F1B schedule, micro-batches of 4).
# Needs the megatron extra:  bash scripts/install.sh --extras test,megatron
# Extra Hydra overrides are forwarded. Leaves in $OUT: metrics.jsonl, metrics.reward_curve.png, checkpoints/
# (global_step_N/actor: each rank's slice, and an HF export in actor/huggingface).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PP="${PP:-1}"
OUT="${OUT:-$ROOT/outputs/megatron_tiny$([[ $PP == 1 ]] || echo _pp$PP)}"
TP=2 MICRO=32
[[ $PP == 1 ]] || { TP=1; MICRO=4; }
PY="${PYTHON:-python3}"

# the extras installed so far, plus megatron
EXTRAS="$(cut -d- -f2- .install-stamp 2>/dev/null || echo test)"
[[ ",$EXTRAS," == *",megatron,"* ]] || EXTRAS="$EXTRAS,megatron"
bash scripts/install.sh --extras "$EXTRAS"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
[[ -f "$OUT/model/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$OUT/model"
[[ -f "$OUT/data/train.parquet" ]] || "$PY" examples/quickstart/make_data.py --out "$OUT/data"
rm -f "$OUT/metrics.jsonl"
export VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl"

"$PY" -m verl.trainer.main_ppo --config-name ppo_megatron_trainer \
    algorithm.adv_estimator=grpo \
    data.train_files="$OUT/data/train.parquet" \
    data.val_files="$OUT/data/test.parquet" \
    data.train_batch_size=8 \
    data.max_prompt_length=48 \
    data.max_response_length=16 \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="$OUT/model" \
    actor_rollout_ref.model.enable_gradient_checkpointing=False \
    actor_rollout_ref.actor.megatron.tensor_model_parallel_size=$TP \
    actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=$PP \
    actor_rollout_ref.actor.megatron.dtype=float32 \
    actor_rollout_ref.actor.optim.lr=1e-2 \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=$MICRO \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.actor.kl_loss_type=low_var_kl \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.actor.checkpoint.save_contents='[model,optimizer,extra,hf_model]' \
    actor_rollout_ref.rollout.name=hf \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=32 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 \
    algorithm.use_kl_in_reward=False \
    custom_reward_function.path="$ROOT/examples/quickstart/reward.py" \
    custom_reward_function.name=compute_score \
    trainer.device=cpu \
    trainer.n_gpus_per_node=2 \
    trainer.nnodes=1 \
    trainer.logger='[console,file]' \
    trainer.project_name=megatron_tiny \
    trainer.experiment_name=grpo_tp${TP}_pp${PP} \
    trainer.default_local_dir="$OUT/checkpoints" \
    trainer.resume_mode=disable \
    trainer.val_before_train=True \
    trainer.test_freq=20 \
    trainer.save_freq=60 \
    trainer.total_training_steps=60 \
    trainer.total_epochs=10 \
    hydra.run.dir="$OUT/hydra" \
    "$@"

"$PY" - "$OUT/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
scores = [r["data"]["critic/score/mean"] for r in rows if "critic/score/mean" in r["data"]]
if len(scores) >= 10:
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    print(f"reward: mean of first 5 steps {first:.3f} -> mean of last 5 steps {last:.3f} (rise {last - first:+.3f})")
PYEOF
echo "outputs in $OUT: metrics.jsonl, metrics.reward_curve.png, checkpoints/"
