"""A few GRPO steps through the real FSDP worker classes on a plain torch.distributed process group, without Ray.

The GPU machine has no package registry and Ray's wheel is too large to carry, so this drives
``ActorRolloutRefWorker`` the way a worker group would: one process per rank (``torchrun``), each calling the worker's
registered methods on its own share of the batch (the dispatch a worker group does), and the controller's maths
(rewards, GRPO advantages) in the script. The same code paths run as under ``main_ppo``: the hybrid-engine lifecycle,
the weight sync, the padding-free forward, FSDP2 sharding, the update.

    torchrun --nproc_per_node 2 tests/gpu/grpo_no_ray.py --steps 3 --rollout hf --dtype bfloat16 --out /tmp/r.json

On CPU it runs the same with gloo (``--device cpu``), which is how the suite checks it. Rank 0 prints one line per
step and writes a JSON summary: reward per step, step and stage times, peak device memory, the largest gap between
the rollout engine's log-probs and the actor's recomputation on the same tokens (the engine's weights are the
actor's), and the engine's lifecycle calls (vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model directory (default: the tiny offline model, built here)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rollout", default="hf", choices=["hf", "vllm", "sglang"])
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="mixed-precision param_dtype")
    p.add_argument(
        "--strategy",
        default="fsdp2",
        choices=["fsdp", "fsdp2", "megatron"],
        help="megatron: the Megatron workers with tensor parallelism 1 (data parallel over the ranks, as FSDP)",
    )
    p.add_argument("--remove-padding", default="true", choices=["true", "false"])
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (all ranks together)")
    p.add_argument("--n", type=int, default=4, help="responses per prompt")
    p.add_argument("--response-length", type=int, default=16)
    p.add_argument("--tp", type=int, default=1, help="rollout tensor_model_parallel_size (vllm)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--out", default=None, help="write the JSON summary here (rank 0)")
    p.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    return p.parse_args(argv)


def _digit_prompts(tokenizer, count: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Left-padded chat prompts of the quick start's task (repeat a digit) and their target digits."""
    import random

    sys.path.insert(0, str(REPO / "examples" / "quickstart"))
    from make_data import TEMPLATES

    rng = random.Random(seed)
    digits = [str(rng.randint(0, 9)) for _ in range(count)]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": rng.choice(TEMPLATES).format(d=d)}], tokenize=False, add_generation_prompt=True
        )
        for d in digits
    ]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-width:] for t in texts]
    ids = torch.full((count, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask, digits


def _quickstart_reward():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart_reward", REPO / "examples" / "quickstart" / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise SystemExit(f"{key} is not set: launch with torchrun --nproc_per_node N {__file__}")
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")

    from verl.trainer.config.build import build_trainer_config
    from verl.trainer.ppo import core_algos
    from verl.utils.config import compose_config

    if args.strategy == "megatron":
        from verl.workers.megatron_workers import ActorRolloutRefWorker
    else:
        from verl.workers.fsdp_workers import ActorRolloutRefWorker

    model = args.model
    if model is None:  # the tiny offline model, built by rank 0 and shared through the file system
        model = str(Path(tempfile.gettempdir()) / f"verl-no-ray-tiny-{os.environ['MASTER_PORT']}")
        if rank == 0 and not (Path(model) / "config.json").exists():
            from verl.utils.testing.tiny import build_tiny_model

            build_tiny_model(model, seed=0)
    prompt_width = 48
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.model.use_remove_padding={args.remove_padding}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        f"actor_rollout_ref.rollout.name={args.rollout}",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={args.tp}",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        f"data.max_prompt_length={prompt_width}",
        f"data.max_response_length={args.response_length}",
        f"data.train_batch_size={args.prompts}",
        f"trainer.n_gpus_per_node={world}",
        f"trainer.device={device}",
        *args.overrides,
    ]
    if args.strategy == "megatron":
        config_name = "ppo_megatron_trainer"
        overrides[:0] = [f"actor_rollout_ref.actor.megatron.dtype={args.dtype}"]
    else:
        config_name = "ppo_trainer"
        overrides[:0] = [
            f"actor_rollout_ref.actor.strategy={args.strategy}",
            f"+actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype={args.dtype}",
            f"+actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype={args.dtype}",
        ]
    config = build_trainer_config(compose_config(config_name, overrides=overrides))
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout_ref", total_training_steps=args.steps)
    dist.barrier()  # the worker joined the process group; rank 0 has written the model by now
    start = time.perf_counter()
    worker.init_model()
    init_s = time.perf_counter() - start
    tokenizer = worker.tokenizer
    compute_score = _quickstart_reward()

    from verl.protocol import DataProto

    share = args.prompts // world
    if share * world != args.prompts:
        raise SystemExit(f"--prompts {args.prompts} must be a multiple of the {world} ranks")
    steps, gaps = [], []
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        ids, mask, digits = _digit_prompts(tokenizer, args.prompts, prompt_width, seed=step)
        mine = slice(rank * share, (rank + 1) * share)  # the rows a worker group would send this rank
        ids, mask, digits = ids[mine], mask[mine], digits[mine]
        uid = np.array([f"s{step}-p{rank * share + i}" for i in range(share)], dtype=object)
        prompts = DataProto.from_dict(
            tensors={"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)},
            non_tensors={"uid": uid, "digit": np.array(digits, dtype=object)},
        )
        prompts = prompts.repeat(args.n, interleave=True)
        timing: dict[str, float] = {}
        t = time.perf_counter()
        out = worker.generate_sequences(prompts)
        timing["gen"] = time.perf_counter() - t
        batch = out  # the rollout output carries the prompts' non-tensor columns (uid, digit)
        responses, response_mask = batch.batch["responses"], batch.batch["response_mask"]
        scores = torch.zeros(responses.shape, dtype=torch.float32)
        lengths = response_mask.sum(-1)
        for i in range(len(batch)):
            text = tokenizer.decode(responses[i, : int(lengths[i])], skip_special_tokens=True)
            score = compute_score("quickstart/repeat_digit", text, batch.non_tensor_batch["digit"][i])
            scores[i, max(int(lengths[i]) - 1, 0)] = score
        batch.batch["token_level_rewards"] = scores
        batch.meta_info["temperature"] = float(config.actor_rollout_ref.rollout.temperature)
        t = time.perf_counter()
        batch = batch.union(worker.compute_log_prob(batch))
        batch = batch.union(worker.compute_ref_log_prob(batch))
        timing["log_probs"] = time.perf_counter() - t
        gap = (batch.batch["rollout_log_probs"] - batch.batch["old_log_probs"]).abs()[response_mask.bool()]
        gaps.append(float(gap.max()) if gap.numel() else 0.0)
        adv, ret = core_algos.compute_grpo_outcome_advantage(scores, response_mask, index=batch.non_tensor_batch["uid"])
        batch.batch["advantages"], batch.batch["returns"] = adv, ret
        t = time.perf_counter()
        metrics = worker.update_actor(batch).meta_info["metrics"]
        timing["update"] = time.perf_counter() - t
        reward = torch.tensor([float(scores.sum()), float(len(batch))], dtype=torch.float64)
        gap_t = torch.tensor([gaps[-1]], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            reward, gap_t = reward.cuda(), gap_t.cuda()
        dist.all_reduce(reward)
        dist.all_reduce(gap_t, op=dist.ReduceOp.MAX)
        row = {
            "step": step,
            "reward_mean": float(reward[0] / reward[1]),
            "engine_vs_actor_max_abs_logprob_gap": float(gap_t),
            "pg_loss": float(np.mean(metrics["actor/pg_loss"])),
            "grad_norm": float(np.mean(metrics["actor/grad_norm"])),
            "step_s": time.perf_counter() - t0,
            **{f"{k}_s": v for k, v in timing.items()},
        }
        steps.append(row)
        if rank == 0:
            print(json.dumps(row), flush=True)
    summary = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "world": world,
        "rollout": args.rollout,
        "strategy": args.strategy,
        "param_dtype": args.dtype,
        "use_remove_padding": args.remove_padding == "true",
        "init_s": init_s,
        "steps": steps,
        "peak_device_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "lifecycle": list(getattr(getattr(worker.rollout, "engine", None), "lifecycle", []) or []),
        # the hf rollout's weights between generations: the actor's own (FSDP2) or a copy released to 0 elements
        "rollout_generates_from_actor": worker.rollout_module is not None
        and worker.rollout_module is worker.actor_module_fsdp,
        "rollout_copy_elements_between_generations": None
        if worker.rollout_module is None or worker.rollout_module is worker.actor_module_fsdp
        else sum(p.numel() for p in worker.rollout_module.parameters()),
        "rollout_copy_dtype": None
        if worker.rollout_module is None or worker.rollout_module is worker.actor_module_fsdp
        else str(next(worker.rollout_module.parameters()).dtype),
    }
    if rank == 0 and args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    dist.barrier()  # the process group goes with the process: an in-process vLLM tears its groups down at exit
    return summary


if __name__ == "__main__":
    main()
