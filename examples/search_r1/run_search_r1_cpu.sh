#!/usr/bin/env bash
# Search-R1 on CPU: GRPO teaches the tiny model to search before answering (tools through verl's agent loop).
#
#   bash examples/search_r1/run_search_r1_cpu.sh            # ~6 minutes on 2 cores, everything offline
#
# 1. builds the task (a corpus of passages, questions answerable only from it; make_data.py) and warm-starts the
#    tiny model into one that knows the tool-call format but rarely searches (warm_start.py; cached in $OUT);
# 2. starts the BM25 retrieval server (python -m verl.tools.retrieval_server) on $PORT;
# 3. trains GRPO with the search tool (actor_rollout_ref.rollout.multi_turn.tool_config_path), then the same steps
#    with the tool disabled (its calls are answered "unknown tool"), and prints one line:
#       reward with search X, without Y      (held-out questions, greedy, after the last step)
# Extra Hydra overrides are forwarded to both runs; STEPS (default 60) sets their length. AGENT=openai trains the
# "with search" run through the OpenAI-client agent of openai_agent.py instead of verl's tool_agent loop. TWO_HOP=0.5
# makes half of the questions two-hop (outputs in outputs/search_r1_two_hop).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
TWO_HOP="${TWO_HOP:-0}"  # share of two-hop questions (search, read the friend's name, search again)
if [[ "$TWO_HOP" == 0 ]]; then OUT="${OUT:-$ROOT/outputs/search_r1}"; else OUT="${OUT:-$ROOT/outputs/search_r1_two_hop}"; fi
PORT="${PORT:-8001}"
STEPS="${STEPS:-60}"
AGENT="${AGENT:-tool_agent}"
PY="${PYTHON:-python3}"

bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0
mkdir -p "$OUT"
"$PY" examples/search_r1/make_data.py --out "$OUT/data" --retrieval_url "http://127.0.0.1:$PORT/retrieve" --two_hop "$TWO_HOP"
if [[ "$AGENT" == openai ]]; then
    "$PY" examples/search_r1/make_data.py --out "$OUT/data_openai" --agent_name search_agent --two_hop "$TWO_HOP" > /dev/null
    printf -- '- name: search_agent\n  _target_: %s\n  agent_fn: %s\n  agent_kwargs: {retrieval_url: "%s"}\n' \
        verl.experimental.agent_loop.openai_agent_loop.OpenAIAgentLoop "$ROOT/examples/search_r1/openai_agent.py:solve" \
        "http://127.0.0.1:$PORT/retrieve" > "$OUT/agent_loop.yaml"
    WITH_SEARCH=(data.train_files="$OUT/data_openai/train.parquet" data.val_files="$OUT/data_openai/test.parquet"
                 actor_rollout_ref.rollout.agent.agent_loop_config_path="$OUT/agent_loop.yaml")
else
    WITH_SEARCH=(actor_rollout_ref.rollout.multi_turn.tool_config_path="$OUT/data/search_tool.yaml")
fi
[[ -f "$OUT/model/config.json" ]] || "$PY" examples/search_r1/warm_start.py --data "$OUT/data/warm_start.jsonl" --out "$OUT/model"

"$PY" -m verl.tools.retrieval_server --corpus "$OUT/data/corpus.jsonl" --port "$PORT" > "$OUT/retrieval_server.log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    kill -0 $SERVER_PID 2>/dev/null || { cat "$OUT/retrieval_server.log"; echo "the retrieval server did not start (port $PORT taken? set PORT=...)"; exit 1; }
    sleep 1
done

train() {  # $1: run name; the rest: overrides
    local name="$1"; shift
    rm -f "$OUT/$name.metrics.jsonl"
    VERL_FILE_LOGGER_PATH="$OUT/$name.metrics.jsonl" "$PY" -m verl.trainer.main_ppo \
        algorithm.adv_estimator=grpo \
        data.train_files="$OUT/data/train.parquet" \
        data.val_files="$OUT/data/test.parquet" \
        data.train_batch_size=8 \
        data.max_prompt_length=32 \
        data.max_response_length=160 \
        data.return_raw_chat=True \
        data.dataloader_num_workers=0 \
        actor_rollout_ref.model.path="$OUT/model" \
        actor_rollout_ref.model.enable_gradient_checkpointing=False \
        actor_rollout_ref.actor.strategy=fsdp2 \
        actor_rollout_ref.actor.optim.lr=1e-3 \
        actor_rollout_ref.actor.ppo_mini_batch_size=8 \
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16 \
        actor_rollout_ref.actor.use_kl_loss=True \
        actor_rollout_ref.actor.kl_loss_coef=0.001 \
        actor_rollout_ref.actor.kl_loss_type=low_var_kl \
        actor_rollout_ref.actor.entropy_coeff=0 \
        actor_rollout_ref.rollout.name=hf \
        actor_rollout_ref.rollout.n=4 \
        actor_rollout_ref.rollout.temperature=1.0 \
        actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16 \
        actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3 \
        actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16 \
        algorithm.use_kl_in_reward=False \
        custom_reward_function.path="$ROOT/examples/search_r1/reward.py" \
        custom_reward_function.name=compute_score \
        trainer.device=cpu \
        trainer.n_gpus_per_node=2 \
        trainer.nnodes=1 \
        trainer.logger='[console,file]' \
        trainer.project_name=search_r1 \
        trainer.experiment_name="$name" \
        trainer.default_local_dir="$OUT/checkpoints/$name" \
        trainer.validation_data_dir="$OUT/validation/$name" \
        trainer.resume_mode=disable \
        trainer.val_before_train=True \
        trainer.test_freq="$STEPS" \
        trainer.save_freq=-1 \
        trainer.total_training_steps="$STEPS" \
        trainer.total_epochs=100 \
        "$@"
}

rm -rf "$OUT/validation"
train with_search "${WITH_SEARCH[@]}" "$@"
train without_search "$@"

"$PY" - "$OUT/with_search.metrics.jsonl" "$OUT/without_search.metrics.jsonl" "$OUT/validation" <<'PYEOF'
import json, sys
from pathlib import Path
def by_hops(name):  # the last validation's exact match, one-hop and two-hop questions apart
    dumps = sorted((Path(sys.argv[3]) / name).glob("*.jsonl"), key=lambda p: int(p.stem))
    rows = [json.loads(line) for line in dumps[-1].open()] if dumps else []
    two = [r["score"] for r in rows if "friend of" in r["input"]]
    one = [r["score"] for r in rows if "friend of" not in r["input"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    parts = [f"{kind} {mean(xs):.3f} ({len(xs)} questions)" for kind, xs in (("one-hop", one), ("two-hop", two)) if xs]
    return ", ".join(parts)
def summary(path):
    rows = [json.loads(line)["data"] for line in open(path)]
    val = [r[k] for r in rows for k in r if k.startswith("val-core/") and k.endswith("reward/mean@1")]
    calls = [r["tool_call_counts/mean"] for r in rows if "tool_call_counts/mean" in r]
    score = [r["critic/score/mean"] for r in rows if "critic/score/mean" in r]
    return val, calls, score
(v1, c1, s1), (v0, _, s0) = summary(sys.argv[1]), summary(sys.argv[2])
print(f"with search: held-out reward {v1[0]:.3f} before training -> {v1[-1]:.3f}; training reward "
      f"{sum(s1[:5]) / 5:.3f} (first 5 steps) -> {sum(s1[-5:]) / 5:.3f} (last 5); tool calls per sample "
      f"{sum(c1[:5]) / 5:.2f} -> {sum(c1[-5:]) / 5:.2f}")
print(f"without search: held-out reward {v0[0]:.3f} -> {v0[-1]:.3f}; training reward {sum(s0[:5]) / 5:.3f} -> {sum(s0[-5:]) / 5:.3f}")
print(f"held-out after training, with search: {by_hops('with_search')}; without: {by_hops('without_search')}")
print(f"reward with search {v1[-1]:.3f}, without {v0[-1]:.3f}")
PYEOF
