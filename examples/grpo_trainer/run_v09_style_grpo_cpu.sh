#!/usr/bin/env bash
# verl v0.9's GRPO example command (examples/grpo_trainer/run_qwen3_4b_fsdp.sh at v0.9.0, as quoted in
# ../shared/reference/verl_v09_keys.md section 7), run unchanged except for:
#   * local paths: the tiny offline model and the quick start's parquet files instead of Qwen and gsm8k;
#   * trainer.use_v1=false, as v0.9 itself needs without TransferQueue installed (it also selects v0.9's defaults
#     here, e.g. rollout.calculate_log_probs=true);
#   * the "CPU sizes" block after it, which shrinks batch, lengths, group size and ranks to a 2-core laptop (later
#     keys win in Hydra); drop it on a GPU node. Extra overrides are forwarded (e.g. actor_rollout_ref.rollout.name=hf).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/outputs/v09_style_grpo}"
PY="${PYTHON:-python3}"

bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
MODEL="$OUT/model"
[[ -f "$MODEL/config.json" ]] || "$PY" -m verl.utils.testing.tiny "$MODEL"
[[ -f "$OUT/data/train.parquet" ]] || "$PY" examples/quickstart/make_data.py --out "$OUT/data"
TRAIN_FILE="$OUT/data/train.parquet"
TEST_FILE="$OUT/data/test.parquet"
rm -f "$OUT/metrics.jsonl"
export VERL_FILE_LOGGER_PATH="$OUT/metrics.jsonl"

"$PY" -m verl.trainer.main_ppo algorithm.adv_estimator=grpo \
 data.train_files=$TRAIN_FILE data.val_files=$TEST_FILE data.train_batch_size=512 \
 data.max_prompt_length=1024 data.max_response_length=1024 data.filter_overlong_prompts=True \
 data.truncation=error algorithm.use_kl_in_reward=False \
 actor_rollout_ref.model.path=$MODEL actor_rollout_ref.model.use_remove_padding=True \
 actor_rollout_ref.model.enable_gradient_checkpointing=True actor_rollout_ref.actor.optim.lr=1e-6 \
 actor_rollout_ref.actor.ppo_mini_batch_size=256 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 \
 actor_rollout_ref.actor.use_kl_loss=True actor_rollout_ref.actor.kl_loss_coef=0.001 \
 actor_rollout_ref.actor.kl_loss_type=low_var_kl actor_rollout_ref.actor.entropy_coeff=0 \
 actor_rollout_ref.actor.fsdp_config.param_offload=False actor_rollout_ref.actor.fsdp_config.optimizer_offload=False \
 actor_rollout_ref.actor.ppo_max_token_len_per_gpu=3000 actor_rollout_ref.actor.use_dynamic_bsz=True \
 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2 actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
 actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
 actor_rollout_ref.rollout.enable_chunked_prefill=False actor_rollout_ref.rollout.enforce_eager=False \
 actor_rollout_ref.rollout.free_cache_engine=True actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
 actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=4096 \
 actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=4096 actor_rollout_ref.rollout.n=5 \
 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2 actor_rollout_ref.ref.fsdp_config.param_offload=True \
 actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=8192 \
 trainer.critic_warmup=0 'trainer.logger=["console"]' trainer.project_name=verl_grpo_example_geo3k \
 trainer.experiment_name=glm41v_9b_function_rm trainer.n_gpus_per_node=8 trainer.nnodes=1 \
 trainer.save_freq=20 trainer.test_freq=5 trainer.total_epochs=15 \
 trainer.use_v1=false \
 `# ---- CPU sizes (drop on a GPU node) ---------------------------------------------------------------------` \
 data.train_batch_size=8 data.max_prompt_length=48 data.max_response_length=16 data.dataloader_num_workers=0 \
 actor_rollout_ref.actor.ppo_mini_batch_size=8 actor_rollout_ref.actor.optim.lr=1e-2 actor_rollout_ref.rollout.n=4 \
 actor_rollout_ref.model.enable_gradient_checkpointing=False actor_rollout_ref.actor.strategy=fsdp2 \
 custom_reward_function.path="$ROOT/examples/quickstart/reward.py" \
 'trainer.logger=["console","file"]' trainer.n_gpus_per_node=2 trainer.device=cpu trainer.save_freq=-1 \
 trainer.test_freq=10 trainer.total_training_steps=20 trainer.resume_mode=disable \
 trainer.default_local_dir="$OUT/checkpoints" \
 "$@"

"$PY" - "$OUT/metrics.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
scores = [r["data"]["critic/score/mean"] for r in rows if "critic/score/mean" in r["data"]]
print(f"{len(scores)} steps; reward first {scores[0]:.3f} -> last {scores[-1]:.3f}")
PYEOF
