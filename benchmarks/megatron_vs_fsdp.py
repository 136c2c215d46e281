"""Megatron (tensor parallel 2, and pipeline parallel 2) against FSDP2 (data parallel 2) on the same training
workload, in one run.

Each runs the real ``ActorRolloutRefWorker`` of its strategy on two ranks (``torchrun``, gloo, no Ray): the same
model, the same fixed batch of sequences per step (FSDP2 gives each rank half of it, Megatron gives both ranks all
of it: the two tensor-parallel slices, or the two pipeline stages of megatron-core's 1F1B schedule), the same
micro-batch size. Per step it times the old-log-prob pass
(``compute_log_prob``) and the PPO update (``update_actor``); the first step is a warm-up. Prints the median times
and the Megatron/FSDP ratios.

Usage: python benchmarks/megatron_vs_fsdp.py [--model DIR] [--steps 5] [--batch 32] [--prompt-length 32]
       [--response-length 32] [--size tiny|small]

``--size small`` builds a 24M-parameter model of the tiny architecture (wider, deeper) where compute outweighs the
collectives; without ``--model`` the tiny offline model is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _batch(tokenizer, size: int, prompt_length: int, response_length: int, seed: int):
    import torch

    from verl.protocol import DataProto

    gen = torch.Generator().manual_seed(seed)
    vocab, pad = int(tokenizer.vocab_size), tokenizer.pad_token_id
    prompt = torch.randint(4, vocab, (size, prompt_length), generator=gen)
    prompt_mask = torch.ones_like(prompt)
    lead = torch.randint(0, prompt_length // 2, (size,), generator=gen)
    for row in range(size):
        prompt[row, : lead[row]], prompt_mask[row, : lead[row]] = pad, 0
    response = torch.randint(4, vocab, (size, response_length), generator=gen)
    response_mask = torch.ones_like(response)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return DataProto.from_dict(
        tensors={
            "prompts": prompt,
            "responses": response,
            "input_ids": torch.cat([prompt, response], dim=1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": torch.randn(size, response_length, generator=gen),
        },
        meta_info={"temperature": 1.0},
    )


def worker_main(args: argparse.Namespace) -> None:
    """One rank (under torchrun)."""
    import torch.distributed as dist

    from verl.trainer.config.build import build_trainer_config
    from verl.utils.config import compose_config

    world = int(os.environ["WORLD_SIZE"])
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    per_rank = args.batch if args.strategy.startswith("megatron") else args.batch // world
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.model.path={args.model}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro}",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro}",
        f"data.train_batch_size={args.batch}",
        f"trainer.n_gpus_per_node={world}",
        "trainer.device=cpu",
    ]
    if args.strategy.startswith("megatron"):
        name = "ppo_megatron_trainer"
        split = "pipeline" if args.strategy == "megatron-pp" else "tensor"
        overrides += [f"actor_rollout_ref.actor.megatron.{split}_model_parallel_size={world}"]
        overrides += ["actor_rollout_ref.actor.megatron.dtype=float32"]
        from verl.workers.megatron_workers import ActorRolloutRefWorker
    else:
        name = "ppo_trainer"
        overrides += ["actor_rollout_ref.actor.strategy=fsdp2"]
        from verl.workers.fsdp_workers import ActorRolloutRefWorker
    config = build_trainer_config(compose_config(name, overrides=overrides))
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout", total_training_steps=args.steps)
    worker.init_model()
    rank = dist.get_rank()
    times: dict[str, list[float]] = {"compute_log_prob": [], "update_actor": []}
    for step in range(args.steps + 1):
        data = _batch(worker.tokenizer, args.batch, args.prompt_length, args.response_length, seed=step)
        if not args.strategy.startswith("megatron"):
            data = data.chunk(world)[rank]
        assert len(data) == per_rank
        dist.barrier()
        start = time.perf_counter()
        out = worker.compute_log_prob(data)
        dist.barrier()
        middle = time.perf_counter()
        worker.update_actor(data.union(out))
        dist.barrier()
        end = time.perf_counter()
        if step > 0:  # the first step warms up
            times["compute_log_prob"].append(middle - start)
            times["update_actor"].append(end - middle)
    if rank == 0:
        Path(args.out).write_text(json.dumps(times))
    dist.barrier()


def _model(size: str) -> str:
    from verl.utils.testing.tiny import TinyModelSpec, build_tiny_model

    out = Path(tempfile.mkdtemp(prefix=f"megatron-bench-{size}-"))
    spec = TinyModelSpec(hidden_size=512, intermediate_size=1408, num_layers=6, num_heads=8, num_kv_heads=4)
    build_tiny_model(out, seed=0, spec=spec if size == "small" else None)
    return str(out)


def run_two_ranks(script: str, name: str, flags: list[str]) -> dict:
    """Run ``script`` on two torchrun ranks (gloo) with ``flags`` plus ``--out FILE``; returns what rank 0 wrote
    there. ``name`` labels the progress line and the error."""
    out = Path(tempfile.mkdtemp()) / f"{name}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", script, *flags, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    print(f"running {name} on 2 ranks ...", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (all ranks together)")
    parser.add_argument("--micro", type=int, default=8, help="micro-batch size per rank")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--strategy", default=None, help=argparse.SUPPRESS)  # set for the ranks
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy is not None:
        worker_main(args)
        return
    model = args.model or _model(args.size)
    results = {}
    for strategy in ("fsdp", "megatron", "megatron-pp"):
        flags = ["--strategy", strategy, "--model", model, "--steps", str(args.steps), "--batch", str(args.batch)]
        flags += ["--micro", str(args.micro), "--prompt-length", str(args.prompt_length)]
        flags += ["--response-length", str(args.response_length)]
        results[strategy] = run_two_ranks(__file__, strategy, flags)
    print(
        f"\nmodel {model}; {args.batch} sequences of {args.prompt_length}+{args.response_length} tokens per step, "
        f"median of {args.steps} steps after a warm-up, 2 ranks (FSDP2: data parallel; Megatron: tensor parallel "
        "(tp2) or pipeline parallel (pp2))"
    )
    print(f"{'stage':<18}{'fsdp2 (s)':>11}{'tp2 (s)':>10}{'pp2 (s)':>10}{'tp2/fsdp':>10}{'pp2/fsdp':>10}")
    for stage in ("compute_log_prob", "update_actor"):
        a = statistics.median(results["fsdp"][stage])
        b = statistics.median(results["megatron"][stage])
        c = statistics.median(results["megatron-pp"][stage])
        print(f"{stage:<18}{a:>11.3f}{b:>10.3f}{c:>10.3f}{b / a:>10.2f}{c / a:>10.2f}")


if __name__ == "__main__":
    main()
