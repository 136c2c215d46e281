#!/usr/bin/env bash
# Multi-turn GRPO with logit capture: a classification dialogue ("does this paper belong to this author?") whose
# interaction scores each answer by exact match blended with the probability the policy gave the correct label
# token, read from the rollout's captured logits (logit_capture.mode=token_ids on the yes/no label tokens).
#
# Runs on CPU with the tiny offline model (2 FSDP ranks under Ray). Extra Hydra overrides are forwarded, e.g.
#   bash examples/grpo_trainer/run_multiturn_nd_grpo.sh actor_rollout_ref.rollout.name=vllm        # real vLLM on CPU
#   bash examples/grpo_trainer/run_multiturn_nd_grpo.sh actor_rollout_ref.rollout.name=sglang_with_logit \
#       actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct trainer.device=cuda              # a GPU machine
# Leaves in $OUT: metrics.jsonl, metrics.reward_curve.png, checkpoints/.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/outputs/multiturn_nd}"
PY="${PYTHON:-python3}"

bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
MODEL="${MODEL:-$OUT/model}"
[[ -f "$MODEL/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$MODEL"
LABEL_IDS=$("$PY" examples/data_preprocess/multiturn_nd.py --out "$OUT/data" --tokenizer "$MODEL" --train 64 --val 16 \
    | sed -n 's/^LABEL_TOKEN_IDS=//p')
rm -f "$OUT/metrics.jsonl"
export VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl"

"$PY" -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files="$OUT/data/train.parquet" \
    data.val_files="$OUT/data/test.parquet" \
    data.train_batch_size=8 \
    data.max_prompt_length=160 \
    data.max_response_length=64 \
    data.return_raw_chat=True \
    data.dataloader_num_workers=0 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.model.enable_gradient_checkpointing=False \
    actor_rollout_ref.actor.strategy=fsdp2 \
    actor_rollout_ref.actor.optim.lr=1e-3 \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.use_kl_loss=True \
    actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.rollout.name=hf \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.n=4 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
    actor_rollout_ref.rollout.multi_turn.enable=True \
    actor_rollout_ref.rollout.multi_turn.max_assistant_turns=2 \
    actor_rollout_ref.rollout.multi_turn.interaction_config_path="$OUT/data/interaction.yaml" \
    actor_rollout_ref.rollout.logit_capture.enable=True \
    actor_rollout_ref.rollout.logit_capture.mode=token_ids \
    "actor_rollout_ref.rollout.logit_capture.ids=$LABEL_IDS" \
    custom_reward_function.path="$ROOT/examples/grpo_trainer/multiturn_nd_reward.py" \
    trainer.device=cpu \
    trainer.n_gpus_per_node=2 \
    trainer.nnodes=1 \
    trainer.logger='[console,file]' \
    trainer.project_name=multiturn_nd \
    trainer.experiment_name=tiny_cpu \
    trainer.default_local_dir="$OUT/checkpoints" \
    trainer.val_before_train=True \
    trainer.test_freq=5 \
    trainer.save_freq=-1 \
    trainer.total_training_steps="${STEPS:-10}" \
    trainer.total_epochs=100 \
    "$@"
"$PY" - "$OUT/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line)["data"] for line in open(sys.argv[1])]
scores = [r["critic/score/mean"] for r in rows if "critic/score/mean" in r]
if len(scores) >= 6:
    k = min(5, len(scores) // 2)
    first, last = sum(scores[:k]) / k, sum(scores[-k:]) / k
    print(f"score: mean of the first {k} steps {first:.4f} -> last {k} steps {last:.4f} ({last / max(first, 1e-9):.1f}x)")
    print("The score blends exact match with the probability the policy gives the correct label token (read from the")
    print("captured logits). On the 0.4M-parameter tiny model exact answers stay rare, so the score stays small: its")
    print("rise is that probability growing. 10 steps show the loop working; STEPS=60 (~3 min) shows the rise.")
PYEOF
echo "outputs in $OUT: metrics.jsonl, metrics.reward_curve.png"
