"""One GRPO step, measured two ways in one run: through this framework and as a plain transformers loop.

* framework: ``main_ppo``'s TaskRunner -> RayPPOTrainer -> 2 FSDP2 ranks (gloo) in Ray actors, hf rollout;
  per-stage times are read from the metrics it logs (``timing_s/<stage>``).
* baseline: the same workload in one process with plain transformers and torch: ``generate``, a no-grad forward
  for the old log-probs, one for the reference, GRPO advantages, one PPO-clip update with AdamW.

Prints per-stage seconds (gen, old_log_prob, ref, adv, update_actor, step), tokens/s and the ratio between the
two. The first step of each is a warm-up and is not counted.

Usage: python benchmarks/train_step.py [--steps 4] [--batch 8] [--n 4] [--response-length 32] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("gen", "old_log_prob", "ref", "adv", "update_actor", "step")


def _prepare(workdir: Path, n_prompts: int) -> tuple[str, str]:
    sys.path.insert(0, str(REPO / "examples" / "quickstart"))
    import pandas as pd
    from make_data import make_rows

    from verl.utils.testing.tiny import build_tiny_model

    model_dir = workdir / "model"
    build_tiny_model(model_dir, seed=0)
    pd.DataFrame(make_rows(n_prompts, 7, "train", seed=0)).to_parquet(workdir / "train.parquet")
    return str(model_dir), str(workdir / "train.parquet")


def run_framework(args, model_dir: str, data: str, workdir: Path) -> dict[str, float]:
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.config import compose_config

    metrics = workdir / "framework.jsonl"
    os.environ["VERL_FILE_LOGGER_PATH"] = str(metrics)
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={data}",
        "data.val_files=null",
        f"data.train_batch_size={args.batch}",
        "data.max_prompt_length=48",
        f"data.max_response_length={args.response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.batch * args.n // args.ranks}",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.rollout.name=hf",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.batch * args.n // args.ranks}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.batch * args.n // args.ranks}",
        f"custom_reward_function.path={REPO / 'examples' / 'quickstart' / 'reward.py'}",
        "trainer.device=cpu",
        f"trainer.n_gpus_per_node={args.ranks}",
        "trainer.logger=[file]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={workdir / 'ckpt'}",
        f"trainer.total_training_steps={args.steps + 1}",
        "trainer.total_epochs=100",
        "trainer.progress_bar=False",
    ]
    run_ppo(compose_config("ppo_trainer", overrides))
    rows = [json.loads(line)["data"] for line in metrics.read_text().splitlines()][1:]  # drop the warm-up step
    out = {s: statistics.mean(r.get(f"timing_s/{s}", 0.0) for r in rows) for s in STAGES}
    out["tokens"] = statistics.mean(r["perf/total_num_tokens"] for r in rows)
    return out


def run_plain(args, model_dir: str) -> dict[str, float]:
    """The same GRPO step, written directly against transformers in one process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    actor = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    optim = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    prompts = [[{"role": "user", "content": f"Repeat the digit 7 ({i})."}] for i in range(args.batch)]
    texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True)
    ids, mask = enc.input_ids.repeat_interleave(args.n, 0), enc.attention_mask.repeat_interleave(args.n, 0)
    R = args.response_length

    def logp(model, seq, attn):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False).logits[:, -R - 1 : -1]
        return torch.log_softmax(logits.float(), -1).gather(-1, seq[:, -R:, None]).squeeze(-1)

    rows = []
    for _ in range(args.steps + 1):
        t = {}
        t0 = time.perf_counter()
        with torch.no_grad():
            out = actor.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=R,
                min_new_tokens=R,
                do_sample=True,
                top_k=0,
                pad_token_id=tok.pad_token_id,
            )
        t["gen"] = time.perf_counter() - t0
        seq = out[:, : ids.shape[1] + R]
        attn = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1] :])], dim=1)
        s = time.perf_counter()
        with torch.no_grad():
            old = logp(actor, seq, attn)
        t["old_log_prob"] = time.perf_counter() - s
        s = time.perf_counter()
        with torch.no_grad():
            ref_lp = logp(ref, seq, attn)
        t["ref"] = time.perf_counter() - s
        s = time.perf_counter()
        words = tok.batch_decode(seq[:, -R:], skip_special_tokens=True)
        score = torch.tensor([sum(w == "7" for w in x.split()) / max(len(x.split()), 1) for x in words])
        grouped = score.view(args.batch, args.n)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        t["adv"] = time.perf_counter() - s
        s = time.perf_counter()
        new = logp(actor, seq, attn)
        ratio = torch.exp(new - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        kl = (torch.exp(ref_lp - new) - (ref_lp - new) - 1).mean()
        (pg + 0.001 * kl).backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        optim.step()
        optim.zero_grad()
        t["update_actor"] = time.perf_counter() - s
        t["step"] = time.perf_counter() - t0
        t["tokens"] = float(attn.sum())
        rows.append(t)
    rows = rows[1:]
    return {k: statistics.mean(r[k] for r in rows) for k in (*STAGES, "tokens")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--ranks", type=int, default=2, help="FSDP ranks (CPU processes) for the framework run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir, data = _prepare(workdir, n_prompts=args.batch * (args.steps + 2))
        plain = run_plain(args, model_dir)
        framework = run_framework(args, model_dir, data, workdir)
    print(f"\nGRPO step: {args.batch} prompts x {args.n} samples, {args.response_length} response tokens")
    print(f"{'stage':<14}{'framework (s)':>16}{'plain HF (s)':>16}{'ratio':>10}")
    for stage in STAGES:
        f, p = framework[stage], plain[stage]
        print(f"{stage:<14}{f:>16.3f}{p:>16.3f}{(f / p if p else float('nan')):>10.2f}")
    f_tps, p_tps = framework["tokens"] / framework["step"], plain["tokens"] / plain["step"]
    print(f"{'tokens/s':<14}{f_tps:>16.1f}{p_tps:>16.1f}{f_tps / p_tps:>10.2f}")
    print(f"framework: {args.ranks} FSDP2 ranks in Ray actors (gloo); plain: 1 process, same model and batch")


if __name__ == "__main__":
    main()
