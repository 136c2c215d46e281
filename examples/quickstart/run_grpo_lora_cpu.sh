#!/usr/bin/env bash
# The quick start with LoRA: the same GRPO job (run_grpo_cpu.sh), training rank-16 peft adapters on every linear
# layer instead of all the weights. The reference policy is the base model with the adapters switched off (no second
# copy); the rollout gets the adapters merged into the weights. Checkpoints hold actor/lora_adapter/ (loads with
# PeftModel.from_pretrained, or as actor_rollout_ref.model.lora_adapter_path) and actor/huggingface/ (merged).
#
# The base model is the tiny offline one with weights drawn at std 0.1 instead of 0.02. A LoRA adapter steers a base
# whose embeddings are already trained: with the default 0.02 draw the tied embeddings are so small that no update
# of the linear layers can lift one token's probability above about 2.5% (the logit of a token is at most
# |norm(h)| * |e| = sqrt(128) * 0.02 * sqrt(128) = 2.6), and the run stays near reward 0.
#   OUT=outputs/quickstart_lora bash examples/quickstart/run_grpo_lora_cpu.sh [hydra overrides ...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
export OUT="${OUT:-$ROOT/outputs/quickstart_lora}"
PY="${PYTHON:-python3}"

bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
[[ -f "$OUT/model/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$OUT/model" --init-std 0.1

exec bash examples/quickstart/run_grpo_cpu.sh \
    actor_rollout_ref.model.lora_rank=16 \
    actor_rollout_ref.model.lora_alpha=32 \
    actor_rollout_ref.model.target_modules=all-linear \
    actor_rollout_ref.actor.optim.lr=2e-2 \
    trainer.experiment_name=grpo_repeat_digit_lora \
    "$@"
