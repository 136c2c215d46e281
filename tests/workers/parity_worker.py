"""One rank of the worker parity checks (run under torchrun, without Ray, by megatron/test_megatron_workers.py
and test_ulysses.py).

``fsdp-rmpad`` is FSDP2 with the padding-free forward and Ulysses sequence parallelism of size ``tp`` (the ranks of
one sequence-parallel group get the same rows).

The real ``ActorRolloutRefWorker`` of the chosen strategy scores and trains on one fixed batch (left-padded prompts,
right-padded responses, fixed advantages) exactly as a worker group would call it: each data-parallel group gets its
share of the rows. FSDP2 runs on two ranks (data parallel 2), Megatron on four (tensor parallel 2 x data parallel 2:
both ranks of a tensor-parallel group get the same rows). Rank 0 (data-parallel rank 0 in both) writes
the log-probs before and after one PPO update and the update's metrics to a JSON file, and the same for the critic
(values before and after one value update on fixed returns).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def batch(tokenizer, prompts: int = 8, prompt_len: int = 12, response_len: int = 8):
    from verl.protocol import DataProto

    gen = torch.Generator().manual_seed(0)
    vocab = int(tokenizer.vocab_size)
    pad = tokenizer.pad_token_id
    prompt = torch.randint(4, vocab, (prompts, prompt_len), generator=gen)
    prompt_mask = torch.ones_like(prompt)
    for row, lead in enumerate([0, 3, 5, 1, 0, 7, 2, 4]):
        prompt[row, :lead], prompt_mask[row, :lead] = pad, 0
    response = torch.randint(4, vocab, (prompts, response_len), generator=gen)
    response_mask = torch.ones_like(response)
    for row, tail in enumerate([0, 2, 0, 5, 1, 3, 0, 6]):
        if tail:
            response[row, -tail:], response_mask[row, -tail:] = pad, 0
    input_ids = torch.cat([prompt, response], dim=1)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    advantages = torch.randn(prompts, response_len, generator=gen) * response_mask
    return DataProto.from_dict(
        tensors={
            "prompts": prompt,
            "responses": response,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "advantages": advantages,
        },
        meta_info={"temperature": 1.0},
    )


def main(strategy: str, model_dir: str, out: str, tp: int, pp: int = 1) -> None:
    from verl.trainer.config.build import build_trainer_config
    from verl.utils.config import compose_config

    world = int(os.environ["WORLD_SIZE"])
    os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.1",
        "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        "data.train_batch_size=8",
        "critic.ppo_micro_batch_size_per_gpu=2",
        "critic.optim.lr=1e-2",
        "critic.model.enable_gradient_checkpointing=False",
        "critic.model.use_remove_padding=False",
        f"trainer.n_gpus_per_node={world}",
        "trainer.device=cpu",
    ]
    if strategy == "megatron":
        config_name = "ppo_megatron_trainer"
        overrides += [f"actor_rollout_ref.actor.megatron.tensor_model_parallel_size={tp}"]
        overrides += [f"actor_rollout_ref.actor.megatron.pipeline_model_parallel_size={pp}"]
        overrides += ["actor_rollout_ref.actor.megatron.dtype=float32", "critic.megatron.dtype=float32"]
        overrides += [f"critic.megatron.tensor_model_parallel_size={tp}"]
        overrides += [f"critic.megatron.pipeline_model_parallel_size={pp}"]
    else:
        config_name = "ppo_trainer"
        overrides += ["actor_rollout_ref.actor.strategy=fsdp2"]
    if strategy == "fsdp-rmpad":  # the padding-free forward, with Ulysses sequence parallelism of size ``tp``
        overrides += ["actor_rollout_ref.model.use_remove_padding=True", "critic.model.use_remove_padding=True"]
        overrides += [f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={tp}"]
        overrides += [f"critic.ulysses_sequence_parallel_size={tp}"]
    config = build_trainer_config(compose_config(config_name, overrides=overrides))
    if strategy == "megatron":
        from verl.workers.megatron_workers import ActorRolloutRefWorker, CriticWorker
    else:
        from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor_rollout_ref", total_training_steps=2)
    worker.init_model()
    # the rows of this rank's data-parallel group, as a worker group's dispatch hands them out
    dp_rank = worker._dp_rank if strategy == "megatron" else dist.get_rank() // (tp * pp)
    data = batch(worker.tokenizer).chunk(world // (tp * pp))[dp_rank]
    before = worker.compute_log_prob(data)
    ref = worker.compute_ref_log_prob(data)
    data = data.union(before).union(ref)
    metrics = worker.update_actor(data).meta_info["metrics"]
    # verl's engine path (use_legacy_worker_impl=disable): the loss divides by counts over the data-parallel ranks
    engine_data = data.select(meta_info_keys=["temperature"])
    engine_data.meta_info["global_batch_size"] = len(data) * (world // (tp * pp))  # sequences over all ranks
    engine_metrics = worker.update_actor(engine_data).meta_info["metrics"]
    after = worker.compute_log_prob(
        data.select(
            batch_keys=["prompts", "responses", "input_ids", "attention_mask", "position_ids"],
            meta_info_keys=["temperature"],
        )
    )
    critic = CriticWorker(config.critic, total_training_steps=2)
    critic.init_model()
    values = critic.compute_values(data)
    returns = torch.randn(values.batch["values"].shape, generator=torch.Generator().manual_seed(3))
    critic_data = data.union(values)
    critic_data.batch["returns"] = returns * data.batch["response_mask"]
    critic_metrics = critic.update_critic(critic_data).meta_info["metrics"]
    values_after = critic.compute_values(data)
    if dist.get_rank() == 0:
        report = {
            "values": values.batch["values"].tolist(),
            "values_after": values_after.batch["values"].tolist(),
            "critic_metrics": {k: (v if isinstance(v, (int, float)) else list(v)) for k, v in critic_metrics.items()},
            "strategy": strategy,
            "world": world,
            "log_probs": before.batch["old_log_probs"].tolist(),
            "ref_log_probs": ref.batch["ref_log_prob"].tolist(),
            "after": after.batch["old_log_probs"].tolist(),
            "metrics": {k: (v if isinstance(v, (int, float)) else list(v)) for k, v in metrics.items()},
            "engine_metrics": {k: (v if isinstance(v, (int, float)) else list(v)) for k, v in engine_metrics.items()},
        }
        with open(out, "w") as f:
            json.dump(report, f)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
