"""LoRA against a full fine-tune on the same training workload, in one run: peak memory (RSS) and step time.

Each variant runs the real FSDP ``ActorRolloutRefWorker`` (role ``actor_rollout_ref``, GRPO with a KL loss, so the
full fine-tune builds its frozen reference model and LoRA uses the actor with its adapters disabled) on two ranks
(``torchrun``, gloo, no Ray), FSDP2, the same model and the same batches (``benchmarks/megatron_vs_fsdp.py``'s
fixed random sequences). Per step it times the old-log-prob pass, the reference pass and the PPO update; the first
step is a warm-up. Peak RSS is the largest resident set of a rank over the whole run (``getrusage``), beside the
RSS once the model, reference and optimizer are built.

Usage: python benchmarks/lora_vs_full.py [--size small|tiny] [--rank 16] [--steps 5] [--batch 32]

``--size small`` (the default) is a 24M-parameter model of the tiny architecture, where the optimizer state and the
reference copy are large enough to see; ``tiny`` is the quick-start model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from megatron_vs_fsdp import _batch, _model, run_two_ranks  # noqa: E402  (the same batches, models, launcher)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker_main(args: argparse.Namespace) -> None:
    """One rank (under torchrun)."""
    import torch.distributed as dist

    from verl.trainer.config.build import build_trainer_config
    from verl.utils.config import compose_config
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    world = int(os.environ["WORLD_SIZE"])
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.model.path={args.model}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=1e-5",
        "actor_rollout_ref.actor.use_kl_loss=True",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro}",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=1",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={args.micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={args.micro}",
        f"data.train_batch_size={args.batch}",
        f"trainer.n_gpus_per_node={world}",
        "trainer.device=cpu",
    ]
    if args.variant == "lora":
        overrides += [
            f"actor_rollout_ref.model.lora_rank={args.rank}",
            f"actor_rollout_ref.model.lora_alpha={2 * args.rank}",
        ]
    config = build_trainer_config(compose_config("ppo_trainer", overrides=overrides))
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout_ref", total_training_steps=args.steps)
    worker.init_model()
    module = worker.actor_module_fsdp
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad) * world  # FSDP2 shards: local numel
    total = sum(p.numel() for p in module.parameters()) * world
    built_rss = _rss_mb()
    rank = dist.get_rank()
    times: dict[str, list[float]] = {"compute_log_prob": [], "compute_ref_log_prob": [], "update_actor": []}
    for step in range(args.steps + 1):
        data = _batch(worker.tokenizer, args.batch, args.prompt_length, args.response_length, seed=step)
        data = data.chunk(world)[rank]
        marks = []
        for stage in times:
            dist.barrier()
            start = time.perf_counter()
            if stage == "update_actor":
                worker.update_actor(data)
            else:
                data = data.union(getattr(worker, stage)(data))
            dist.barrier()
            marks.append(time.perf_counter() - start)
        if step > 0:  # the first step warms up
            for stage, seconds in zip(times, marks, strict=True):
                times[stage].append(seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    result = {"times": times, "peak_rss_mb": peak, "built_rss_mb": built_rss, "trainable": trainable, "total": total}
    gathered = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        Path(args.out).write_text(json.dumps(gathered))
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (lora_alpha = 2 * rank)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="sequences per step (all ranks together)")
    parser.add_argument("--micro", type=int, default=8, help="micro-batch size per rank")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # set for the ranks
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        worker_main(args)
        return
    model = args.model or _model(args.size)
    results = {}
    for variant in ("full", "lora"):
        flags = ["--variant", variant, "--model", model, "--steps", str(args.steps), "--batch", str(args.batch)]
        flags += ["--micro", str(args.micro), "--prompt-length", str(args.prompt_length), "--rank", str(args.rank)]
        flags += ["--response-length", str(args.response_length)]
        results[variant] = run_two_ranks(__file__, f"the {variant} fine-tune", flags)
    full, lora = results["full"], results["lora"]
    print(
        f"\nmodel {model} ({full[0]['total'] / 1e6:.1f}M parameters; LoRA rank {args.rank} on all linear layers trains "
        f"{lora[0]['trainable'] / 1e6:.2f}M); {args.batch} sequences of {args.prompt_length}+{args.response_length} "
        f"tokens per step, median of {args.steps} steps after a warm-up, 2 FSDP2 ranks"
    )
    print(f"{'':<28}{'full':>10}{'lora':>10}{'lora/full':>11}")
    for stage in full[0]["times"]:
        a = statistics.median(full[0]["times"][stage])
        b = statistics.median(lora[0]["times"][stage])
        print(f"{stage + ' (s)':<28}{a:>10.3f}{b:>10.3f}{b / a:>11.2f}")
    for key, label in (("built_rss_mb", "RSS after building (MB)"), ("peak_rss_mb", "peak RSS (MB)")):
        a = max(r[key] for r in full)
        b = max(r[key] for r in lora)
        print(f"{label:<28}{a:>10.0f}{b:>10.0f}{b / a:>11.2f}")
    print("(RSS: the larger of the two ranks)")


if __name__ == "__main__":
    main()
