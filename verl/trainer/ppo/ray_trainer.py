"""The PPO/GRPO controller: one process drives worker groups through the RL loop.

``RayPPOTrainer.fit`` reads as the algorithm. Each step, with the timer names that end up as ``timing_s/<name>``:

    gen -> reward -> old_log_prob -> ref -> values -> adv -> update_critic -> update_actor -> testing -> save_checkpoint

The workers (FSDP actor/rollout/ref, critic, reward model) live in Ray actors; the controller only moves
``DataProto`` batches between them and does the cheap, pure maths (rewards, KL penalty, advantages) itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from verl.protocol import DataProto, pad_dataproto_to_divisor, unpad_dataproto
from verl.single_controller.ray import (
    RayClassWithInitArgs,
    RayWorkerGroup,
    ResourcePoolManager,
    create_colocated_worker_cls,
)
from verl.trainer.config.algorithm import AlgoConfig, PFPPOConfig
from verl.trainer.config.build import build_trainer_config
from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.batch_selection import GroupFilter, compute_pf_ppo_reweight_data
from verl.trainer.ppo.core_algos import AdvantageEstimator, agg_loss
from verl.trainer.ppo.dataloader import ResumableDataLoader
from verl.trainer.ppo.metric_utils import (
    compute_data_metrics,
    compute_throughout_metrics,
    compute_timing_metrics,
    flatten_validation_metrics,
    process_validation_metrics,
)
from verl.trainer.ppo.reward import compute_reward
from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode, compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.utils import Role, WorkerType, need_critic, need_reference_policy, need_reward_model
from verl.utils.checkpoint.checkpoint_manager import atomic_write_text, find_latest_ckpt_path
from verl.utils.config import to_plain
from verl.utils.metric import reduce_metrics
from verl.utils.profiler import marked_timer
from verl.utils.torch_functional import masked_mean, response_mask_of

__all__ = [
    "RayPPOTrainer",
    "Role",
    "ResourcePoolManager",
    "WorkerType",
    "apply_kl_penalty",
    "compute_advantage",
    "compute_response_mask",
]

# Non-tensor keys that the rollout needs besides the prompt tensors (kept on the generation batch).
_GEN_KEEP_NON_TENSOR = (
    "raw_prompt",
    "raw_prompt_ids",
    "multi_modal_data",
    "tools_kwargs",
    "interaction_kwargs",
    "agent_name",  # the agent loop of each row (verl.experimental.agent_loop)
    "extra_info",
    "index",
    "spd_draft_ids",  # the SPD rollout scores these draft tokens against the target's
    "spd_target_ids",
)


def compute_response_mask(data: DataProto) -> torch.Tensor:
    """``response_mask (bs, R)``: the response part of the attention mask."""
    return response_mask_of(data.batch)


def apply_kl_penalty(
    data: DataProto, kl_ctrl, kl_penalty: str = AlgoConfig.kl_penalty
) -> tuple[DataProto, dict[str, float]]:
    """Subtract ``beta * KL(actor || ref)`` per token from the scores: ``token_level_rewards = scores - beta * kld``."""
    response_mask = data.batch["response_mask"]
    kld = core_algos.kl_penalty(data.batch["old_log_probs"], data.batch["ref_log_prob"], kl_penalty=kl_penalty)
    kld = kld * response_mask
    beta = kl_ctrl.value
    data.batch["token_level_rewards"] = data.batch["token_level_scores"] - beta * kld
    current_kl = torch.mean(masked_mean(kld, mask=response_mask, axis=-1)).item()
    kl_ctrl.update(current_kl=current_kl, n_steps=len(data))
    return data, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}


def compute_advantage(
    data: DataProto,
    adv_estimator,
    gamma: float = AlgoConfig.gamma,
    lam: float = AlgoConfig.lam,
    num_repeat: int = 1,
    norm_adv_by_std_in_grpo: bool = AlgoConfig.norm_adv_by_std_in_grpo,
    config=None,
) -> DataProto:
    """Fill ``advantages`` and ``returns`` (both ``(bs, R)``) using the registered estimator."""
    if "response_mask" not in data.batch.keys():
        data.batch["response_mask"] = compute_response_mask(data)
    rewards = data.batch["token_level_rewards"]
    mask = data.batch["response_mask"]
    name = adv_estimator.value if isinstance(adv_estimator, AdvantageEstimator) else adv_estimator
    if name == AdvantageEstimator.GAE.value:
        adv, ret = core_algos.compute_gae_advantage_return(rewards, data.batch["values"], mask, gamma, lam)
    elif name == AdvantageEstimator.GRPO.value:
        adv, ret = core_algos.compute_grpo_outcome_advantage(
            rewards, mask, index=data.non_tensor_batch["uid"], norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo
        )
    else:
        fn = core_algos.get_adv_estimator_fn(name)
        kwargs = {
            "token_level_rewards": rewards,
            "response_mask": mask,
            "config": config,
            "non_tensor_batch": data.non_tensor_batch,
            "attention_mask": data.batch["attention_mask"],
        }
        if "uid" in data.non_tensor_batch:
            kwargs["index"] = data.non_tensor_batch["uid"]
        for key in ("reward_baselines", "old_log_probs", "sum_pi_squared", "rollout_is_weights"):
            if key in data.batch.keys():
                kwargs[key] = data.batch[key]
        adv, ret = _call_with_supported_kwargs(fn, kwargs)
    data.batch["advantages"] = adv
    data.batch["returns"] = ret
    return data


def _call_with_supported_kwargs(fn, kwargs: dict):
    import inspect

    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return fn(**{k: v for k, v in kwargs.items() if accepts_any or k in params})


class RayPPOTrainer:
    """Drives PPO-family training over Ray worker groups (the hybrid engine: actor and rollout share workers)."""

    def __init__(
        self,
        config,
        tokenizer,
        role_worker_mapping: dict[Role, WorkerType],
        resource_pool_manager: ResourcePoolManager,
        ray_worker_group_cls: type[RayWorkerGroup] = RayWorkerGroup,
        processor=None,
        reward_fn=None,
        val_reward_fn=None,
        train_dataset=None,
        val_dataset=None,
        collate_fn=None,
        train_sampler=None,
        device_name: str | None = None,
    ):
        # The validated typed tree (a DictConfig from a recipe is built and checked here, once).
        self.config: PPOTrainerConfig = config if isinstance(config, PPOTrainerConfig) else build_trainer_config(config)
        config = self.config
        self.tokenizer = tokenizer
        self.processor = processor
        self.reward_fn = reward_fn
        self.val_reward_fn = val_reward_fn
        self.role_worker_mapping = role_worker_mapping
        self.resource_pool_manager = resource_pool_manager
        self.ray_worker_group_cls = ray_worker_group_cls
        self.device_name = device_name or config.trainer.device
        self.use_reference_policy = need_reference_policy(config) and Role.RefPolicy in role_worker_mapping
        self.use_rm = need_reward_model(config)
        self.use_critic = need_critic(config)
        self.ref_in_actor = config.actor_rollout_ref.model.lora_rank > 0
        if config.algorithm.use_kl_in_reward:
            self.kl_ctrl_in_reward = core_algos.get_kl_controller(config.algorithm.kl_ctrl)
        self.global_steps = 0
        filter_groups = config.algorithm.filter_groups
        self.group_filter = None
        if filter_groups is not None and filter_groups.enable:
            self.group_filter = GroupFilter(
                filter_groups.metric,
                config.data.train_batch_size,
                config.actor_rollout_ref.rollout.n,
                filter_groups.max_num_gen_batches,
            )
        self._create_dataloader(train_dataset, val_dataset, collate_fn, train_sampler)

    # ------------------------------------------------------------------ set-up
    def _create_dataloader(self, train_dataset, val_dataset, collate_fn, train_sampler) -> None:
        if collate_fn is None:
            from verl.utils.dataset.rl_dataset import collate_fn as default_collate

            collate_fn = default_collate
        data_cfg = self.config.data
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.train_dataloader = ResumableDataLoader(
            train_dataset,
            batch_size=data_cfg.gen_batch_size or data_cfg.train_batch_size,
            collate_fn=collate_fn,
            shuffle=data_cfg.shuffle,
            seed=ResumableDataLoader.DEFAULT_SEED if data_cfg.seed is None else data_cfg.seed,
            num_workers=data_cfg.dataloader_num_workers,
            sampler=train_sampler,
        )
        self.val_dataloader = None
        if val_dataset is not None and len(val_dataset) > 0:
            val_bs = data_cfg.val_batch_size or len(val_dataset)
            self.val_dataloader = ResumableDataLoader(
                val_dataset,
                batch_size=min(val_bs, len(val_dataset)),
                collate_fn=collate_fn,
                shuffle=data_cfg.validation_shuffle,
                drop_last=False,
                num_workers=0,
            )
        steps = len(self.train_dataloader) * self.config.trainer.total_epochs
        if self.config.trainer.total_training_steps is not None:
            steps = int(self.config.trainer.total_training_steps)
        self.total_training_steps = steps

    def init_workers(self) -> None:
        """Create the resource pools, then one colocated worker group per pool, and initialise the models."""
        self.resource_pool_manager.create_resource_pool()
        pool_to_cls: dict = defaultdict(dict)
        cfg = self.config

        def add(role: Role, cls_kwargs: dict) -> None:
            pool = self.resource_pool_manager.get_resource_pool(role)
            pool_to_cls[pool][str(role)] = RayClassWithInitArgs(cls=self.role_worker_mapping[role], **cls_kwargs)

        # Each worker gets its typed subtree; what the controller decides (the run's length, bypass-mode rollout
        # correction) goes as constructor arguments.
        arr = cfg.actor_rollout_ref
        add(Role.ActorRollout, self._worker_kwargs(Role.ActorRollout, {"config": arr, "role": "actor_rollout"}))
        if self.use_critic:
            add(Role.Critic, self._worker_kwargs(Role.Critic, {"config": cfg.critic}))
        if self.use_reference_policy and not self.ref_in_actor:
            add(Role.RefPolicy, {"config": arr, "role": "ref"})
        if self.use_rm:
            add(Role.RewardModel, {"config": cfg.reward_model})

        all_wg = {}
        for pool, class_dict in pool_to_cls.items():
            colocated = create_colocated_worker_cls(class_dict=class_dict)
            wg = self.ray_worker_group_cls(
                resource_pool=pool, ray_cls_with_init=colocated, device_name=self.device_name
            )
            all_wg.update(wg.spawn(prefix_set=class_dict.keys()))

        if self.use_critic:
            self.critic_wg = all_wg[str(Role.Critic)]
            self.critic_wg.init_model()
        if self.use_reference_policy and not self.ref_in_actor:
            self.ref_policy_wg = all_wg[str(Role.RefPolicy)]
            self.ref_policy_wg.init_model()
        if self.use_rm:
            self.rm_wg = all_wg[str(Role.RewardModel)]
            self.rm_wg.init_model()
        # the actor goes last so that the other models' memory is already accounted for
        self.actor_rollout_wg = all_wg[str(Role.ActorRollout)]
        self.actor_rollout_wg.init_model()

    def _worker_kwargs(self, role: Role, kwargs: dict) -> dict:
        """Constructor arguments of a trained role: the run's length and, for the actor, bypass-mode rollout
        correction. A worker class that does not take them (a recipe's verl-style worker) gets them the way verl hands
        them over instead: in a new view of its subtree (``optim.total_training_steps``, the actor's policy loss)."""
        cls = self.role_worker_mapping[role]
        cls = getattr(cls, "__ray_actor_class__", cls)
        corr = self.config.algorithm.rollout_correction
        extra = {"total_training_steps": self.total_training_steps}
        if role == Role.ActorRollout:
            extra["rollout_correction"] = corr if corr is not None and corr.bypass_mode else None
        params = inspect.signature(cls.__init__).parameters
        if all(name in params for name in extra):
            return {**kwargs, **extra}
        from verl.workers.config.actor import bypass_actor_view

        node = kwargs["config"]
        if role == Role.ActorRollout:
            actor = bypass_actor_view(node.actor, extra["rollout_correction"])
            actor = dataclasses.replace(
                actor, optim=dataclasses.replace(actor.optim, total_training_steps=extra["total_training_steps"])
            )
            node = dataclasses.replace(node, actor=actor)
        else:
            node = dataclasses.replace(
                node, optim=dataclasses.replace(node.optim, total_training_steps=extra["total_training_steps"])
            )
        return {**kwargs, "config": node}

    def shutdown(self) -> None:
        """Release the placement groups (Ray then ends the worker actors), so a later run in the same Ray session
        can create pools with the same names."""
        for pool in self.resource_pool_manager.resource_pool_dict.values():
            pool.release()

    # ------------------------------------------------------------------ one step's pieces
    def _get_gen_batch(self, batch: DataProto) -> DataProto:
        """Move the prompt tensors out of ``batch`` into a generation batch (the rollout returns them extended)."""
        tensor_keys = [k for k in ("input_ids", "attention_mask", "position_ids") if k in batch.batch.keys()]
        gen = batch.pop(batch_keys=tensor_keys)
        for key in _GEN_KEEP_NON_TENSOR:
            if key in batch.non_tensor_batch:
                gen.non_tensor_batch[key] = batch.non_tensor_batch[key]
        gen.meta_info.update(batch.meta_info)
        return gen

    def _balance_batch(self, batch: DataProto, metrics: dict, logging_prefix: str = "global_seqlen") -> None:
        """Reorder rows so every data-parallel rank gets about the same number of tokens (groups stay intact)."""
        from verl.utils.seqlen_balancing import get_seqlen_balanced_partitions

        world_size = self.actor_rollout_wg.world_size
        seqlens = batch.batch["attention_mask"].sum(-1).tolist()
        if len(seqlens) % world_size:
            return
        partitions = get_seqlen_balanced_partitions(seqlens, k_partitions=world_size, equal_size=True)
        order = torch.tensor([i for part in partitions for i in sorted(part)])
        batch.reorder(order)
        per_rank = [sum(seqlens[i] for i in part) for part in partitions]
        metrics[f"{logging_prefix}/min"] = min(per_rank)
        metrics[f"{logging_prefix}/max"] = max(per_rank)
        metrics[f"{logging_prefix}/minmax_diff"] = max(per_rank) - min(per_rank)
        metrics[f"{logging_prefix}/mean"] = float(np.mean(per_rank))

    def _compute_old_log_prob(self, batch: DataProto, metrics: dict) -> DataProto:
        out = self.actor_rollout_wg.compute_log_prob(batch)
        out.meta_info.pop("metrics", None)
        return self._take_old_log_probs(batch, out, metrics)

    def _take_old_log_probs(self, batch: DataProto, out: DataProto, metrics: dict) -> DataProto:
        """Merge ``old_log_probs`` (and friends) into ``batch``; the entropies become ``actor/entropy``."""
        if "entropys" in out.batch.keys():
            entropys = out.batch.pop("entropys")
            actor = self.config.actor_rollout_ref.actor
            metrics["actor/entropy"] = agg_loss(
                entropys, batch.batch["response_mask"], actor.loss_agg_mode, loss_scale_factor=actor.loss_scale_factor
            ).item()
        return batch.union(out)

    def _old_log_prob_from_update(self, batch: DataProto) -> bool:
        """Whether this step's old-log-prob pass can be left to the actor update (``skip_on_policy_old_log_prob``).

        The update is on-policy (the legacy worker path, one mini-batch, one epoch): the actor then uses its own
        detached log-probs as the old ones (verl's shortcut) and the ratio is 1 whatever the pass computed. The
        pass is still run when anything before the update reads ``old_log_probs``: KL in the reward, rollout
        correction or rollout log-prob metrics (``rollout_log_probs``), the optimal-token baselines.
        """
        cfg = self.config
        actor = cfg.actor_rollout_ref.actor
        if not actor.skip_on_policy_old_log_prob or self.config.trainer.critic_warmup > self.global_steps:
            return False
        if cfg.trainer.use_legacy_worker_impl == "disable" or actor.ppo_epochs != 1:
            return False
        if len(batch) > int(actor.ppo_mini_batch_size) * int(cfg.actor_rollout_ref.rollout.n):
            return False
        if cfg.algorithm.use_kl_in_reward or "rollout_log_probs" in batch.batch.keys():
            return False
        optimal_token = str(cfg.algorithm.adv_estimator) in ("optimal_token_baseline", "tir_optimal_token_baseline")
        if optimal_token or actor.calculate_sum_pi_squared:
            return False
        # Only this package's actor worker hands the log-probs back from update_actor; a user-registered worker
        # class gets the pass as verl would run it.
        from verl.workers.fsdp_workers import ActorRolloutRefWorker

        worker_cls = self.role_worker_mapping.get(Role.ActorRollout)
        worker_cls = getattr(worker_cls, "__ray_actor_class__", worker_cls)
        return isinstance(worker_cls, type) and issubclass(worker_cls, ActorRolloutRefWorker)

    def _compute_ref_log_prob(self, batch: DataProto) -> DataProto:
        if self.ref_in_actor:
            batch.meta_info["is_lora"] = True
            out = self.actor_rollout_wg.compute_log_prob(batch)
            batch.meta_info.pop("is_lora")
        else:
            out = self.ref_policy_wg.compute_ref_log_prob(batch)
        out.meta_info.pop("metrics", None)
        return batch.union(out)

    def _advantage_stage(self, batch: DataProto, metrics: dict) -> DataProto:
        """KL-in-reward -> rollout correction -> advantages (+ gdpo metrics) -> PF-PPO resampling."""
        algo = self.config.algorithm
        if algo.use_kl_in_reward:
            batch, kl_metrics = apply_kl_penalty(batch, self.kl_ctrl_in_reward, kl_penalty=algo.kl_penalty)
            metrics.update(kl_metrics)
        else:
            batch.batch["token_level_rewards"] = batch.batch["token_level_scores"]
        rollout_corr = algo.rollout_correction
        if rollout_corr is not None and not rollout_corr.bypass_mode and "rollout_log_probs" in batch.batch:
            # Decoupled mode: IS weights and the rejection-sampled response_mask, seen by advantages and updates.
            batch, corr_metrics = compute_rollout_correction_and_add_to_batch(batch, rollout_corr)
            metrics.update(corr_metrics)
        batch = compute_advantage(
            batch,
            adv_estimator=algo.adv_estimator,
            gamma=algo.gamma,
            lam=algo.lam,
            num_repeat=self.config.actor_rollout_ref.rollout.n,
            norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
            config=algo,
        )
        if algo.adv_estimator == AdvantageEstimator.GDPO.value:
            for key in algo.gdpo_reward_keys or []:
                values = np.asarray(batch.non_tensor_batch[key], dtype=np.float64)
                for stat, fn in (("mean", np.mean), ("std", np.std), ("max", np.max), ("min", np.min)):
                    metrics[f"gdpo/{key}/{stat}"] = float(fn(values))
        if algo.use_pf_ppo and algo.adv_estimator == AdvantageEstimator.GAE.value:
            pf = algo.pf_ppo if algo.pf_ppo is not None else PFPPOConfig()
            batch = compute_pf_ppo_reweight_data(batch, pf.reweight_method, pf.weight_pow)
        return batch

    def _tag_global_batch_size(self, batch: DataProto, sequences_per_mini_batch: int) -> None:
        """Engine path (``trainer.use_legacy_worker_impl=disable``): tell the workers the global mini-batch size, so
        the losses normalise by global counts; the legacy path (default) leaves the batch untagged."""
        if self.config.trainer.use_legacy_worker_impl == "disable":
            batch.meta_info["global_batch_size"] = int(sequences_per_mini_batch)
        else:
            batch.meta_info.pop("global_batch_size", None)

    def _generate(self, batch: DataProto, timing_raw: dict) -> tuple[DataProto, DataProto]:
        """Repeat each prompt ``rollout.n`` times and generate; returns (repeated batch, generation output)."""
        n = self.config.actor_rollout_ref.rollout.n
        batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))], dtype=object)
        gen_batch = self._get_gen_batch(batch)
        gen_batch.meta_info["global_steps"] = self.global_steps
        gen_batch = gen_batch.repeat(repeat_times=n, interleave=True)
        with marked_timer("gen", timing_raw):
            gen_out = self.actor_rollout_wg.generate_sequences(gen_batch)
            timing_raw.update(gen_out.meta_info.pop("timing", {}) or {})
        if self.config.algorithm.adv_estimator == AdvantageEstimator.REMAX.value:
            with marked_timer("gen_max", timing_raw):
                greedy = gen_batch.select(deepcopy=False)
                greedy.meta_info["do_sample"] = False
                greedy_out = self.actor_rollout_wg.generate_sequences(greedy)
                greedy_out.meta_info.pop("timing", None)
                probe = batch.repeat(repeat_times=n, interleave=True).union(greedy_out)
                baseline, _ = compute_reward(probe, self.reward_fn)
                gen_out.batch["reward_baselines"] = baseline.sum(dim=-1)
        for key in _GEN_KEEP_NON_TENSOR:
            gen_out.non_tensor_batch.pop(key, None)
        return batch.repeat(repeat_times=n, interleave=True), gen_out

    def _rollout(self, batch: DataProto, timing_raw: dict) -> DataProto:
        """gen -> reward: the repeated batch with responses, ``token_level_scores`` and the reward's extra columns."""
        batch, gen_out = self._generate(batch, timing_raw)
        batch = batch.union(gen_out)
        if "response_mask" not in batch.batch.keys():
            batch.batch["response_mask"] = compute_response_mask(batch)
        with marked_timer("reward", timing_raw):
            if self.use_rm:
                batch = batch.union(self.rm_wg.compute_rm_score(batch))
            reward_tensor, reward_extra = compute_reward(batch, self.reward_fn)
        batch.batch["token_level_scores"] = reward_tensor
        for key, values in (reward_extra or {}).items():
            if len(values) == len(batch):
                batch.non_tensor_batch[key] = np.array(values, dtype=object)
        return batch

    def _train_step(self, batch: DataProto, metrics: dict, timing_raw: dict) -> DataProto:
        """old_log_prob -> ref -> values -> adv -> update_critic -> update_actor on a scored batch."""
        if self.config.trainer.balance_batch:
            self._balance_batch(batch, metrics)
        batch.meta_info["global_token_num"] = torch.sum(batch.batch["attention_mask"], dim=-1).tolist()
        rollout_corr = self.config.algorithm.rollout_correction
        old_from_update = False
        if rollout_corr is not None and rollout_corr.bypass_mode:
            batch = apply_bypass_mode(batch, rollout_corr)  # old_log_probs := rollout_log_probs, no recompute
        elif self._old_log_prob_from_update(batch):
            old_from_update = True  # the update's forward supplies them (see _old_log_prob_from_update)
        else:
            with marked_timer("old_log_prob", timing_raw):
                batch = self._compute_old_log_prob(batch, metrics)
        if self.use_reference_policy:
            with marked_timer(str(Role.RefPolicy), timing_raw):
                batch = self._compute_ref_log_prob(batch)
        if self.use_critic:
            with marked_timer("values", timing_raw):
                batch = batch.union(self.critic_wg.compute_values(batch))
        with marked_timer("adv", timing_raw):
            batch = self._advantage_stage(batch, metrics)
        n = self.config.actor_rollout_ref.rollout.n
        if self.use_critic:
            with marked_timer("update_critic", timing_raw):
                self._tag_global_batch_size(batch, self.config.critic.ppo_mini_batch_size * n)
                out = self.critic_wg.update_critic(batch)
            metrics.update(reduce_metrics(out.meta_info["metrics"]))
        if self.config.trainer.critic_warmup <= self.global_steps:
            with marked_timer("update_actor", timing_raw):
                batch.meta_info["multi_turn"] = self.config.actor_rollout_ref.rollout.multi_turn.enable
                batch.meta_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
                self._tag_global_batch_size(batch, self.config.actor_rollout_ref.actor.ppo_mini_batch_size * n)
                out = self.actor_rollout_wg.update_actor(batch)
            update_metrics = out.meta_info.pop("metrics")
            if old_from_update:
                batch = self._take_old_log_probs(batch, out, metrics)
            metrics.update(reduce_metrics(update_metrics))
        if self.config.trainer.rollout_data_dir:
            self._dump_generations(batch, self.config.trainer.rollout_data_dir)
        return batch

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train for ``total_training_steps``; returns the last step's metrics."""
        from verl.utils.tracking import Tracking

        cfg = self.config
        logger = Tracking(
            project_name=cfg.trainer.project_name,
            experiment_name=cfg.trainer.experiment_name,
            default_backend=cfg.trainer.logger,
            config=to_plain(cfg),
        )
        self.global_steps = 0
        self._load_checkpoint()
        last_metrics: dict[str, float] = {}
        if self.val_reward_fn is not None and cfg.trainer.val_before_train:
            val_metrics = self._validate()
            logger.log(data=val_metrics, step=self.global_steps)
            if cfg.trainer.val_only:
                logger.finish()
                return val_metrics
        progress = _progress_bar(self.total_training_steps, self.global_steps, cfg.trainer.progress_bar)
        self.global_steps += 1
        while self.global_steps <= self.total_training_steps:
            for batch_dict in self.train_dataloader:
                metrics, timing_raw = {}, {}
                is_last_step = self.global_steps >= self.total_training_steps
                with marked_timer("step", timing_raw):
                    batch = self._rollout(DataProto.from_single_dict(batch_dict), timing_raw)
                    if self.group_filter is not None:  # DAPO dynamic sampling: may need more generation batches
                        batch = self.group_filter.add(batch)
                        if batch is None:
                            continue
                        metrics["train/num_gen_batches"] = self.group_filter.num_gen_batches
                        self.group_filter.reset()
                    batch = self._train_step(batch, metrics, timing_raw)
                    metrics.update(self._maybe_validate(is_last_step, timing_raw))
                    if self._should_save(is_last_step):
                        with marked_timer("save_checkpoint", timing_raw):
                            self._save_checkpoint()
                metrics.update(
                    {"training/global_step": self.global_steps, "training/epoch": self.train_dataloader.epoch}
                )
                metrics.update(compute_data_metrics(batch=batch, use_critic=self.use_critic))
                metrics.update(compute_timing_metrics(batch=batch, timing_raw=timing_raw))
                metrics.update(
                    compute_throughout_metrics(batch, timing_raw, n_gpus=self.resource_pool_manager.get_n_gpus())
                )
                logger.log(data=metrics, step=self.global_steps)
                last_metrics = metrics
                progress.update(1)
                progress.set_postfix(score=f"{metrics.get('critic/score/mean', float('nan')):.3f}", refresh=False)
                if is_last_step:
                    break
                self.global_steps += 1
            if is_last_step:
                break
        progress.close()
        self._finish(logger)
        return last_metrics

    def _finish(self, logger) -> None:
        logger.finish()
        self._plot_reward_curve()

    def _plot_reward_curve(self) -> None:
        """Write ``reward_curve.png`` beside the metrics JSONL when the file logger ran."""
        jsonl = _file_logger_path(self.config)
        if jsonl is None or not jsonl.exists():
            return
        try:
            from verl.utils.plotting import plot_metrics

            out = jsonl.with_suffix(".reward_curve.png")
            plot_metrics(str(jsonl), str(out), keys=("critic/score/mean",), title=self.config.trainer.experiment_name)
            print(f"reward curve written to {out}")
        except Exception as exc:  # a plotting problem must never fail a finished training run
            print(f"could not plot the reward curve: {exc}")

    def _maybe_validate(self, is_last_step: bool, timing_raw: dict) -> dict:
        freq = self.config.trainer.test_freq
        if self.val_reward_fn is None or freq <= 0 or not (is_last_step or self.global_steps % freq == 0):
            return {}
        with marked_timer("testing", timing_raw):
            return self._validate()

    def _should_save(self, is_last_step: bool) -> bool:
        freq = self.config.trainer.save_freq
        return freq > 0 and (is_last_step or self.global_steps % freq == 0)

    # ------------------------------------------------------------------ validation
    def _validate(self) -> dict[str, float]:
        if self.val_dataloader is None:
            return {}
        cfg = self.config
        val_kwargs = cfg.actor_rollout_ref.rollout.val_kwargs
        data_sources, uids, scores, extra = [], [], [], defaultdict(list)
        samples = []
        dump_dir = cfg.trainer.validation_data_dir  # every validation generation, as JSONL per step
        for batch_dict in self.val_dataloader:
            batch = DataProto.from_single_dict(batch_dict)
            batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(len(batch))], dtype=object)
            batch = batch.repeat(repeat_times=val_kwargs.n, interleave=True)
            gen = self._get_gen_batch(batch)
            gen.meta_info.update(
                {
                    "eos_token_id": self.tokenizer.eos_token_id,
                    "pad_token_id": self.tokenizer.pad_token_id,
                    "recompute_log_prob": False,
                    "do_sample": val_kwargs.do_sample,
                    "validate": True,
                    "global_steps": self.global_steps,
                }
            )
            padded, pad_size = pad_dataproto_to_divisor(gen, self.actor_rollout_wg.world_size)
            out = unpad_dataproto(self.actor_rollout_wg.generate_sequences(padded), pad_size=pad_size)
            out.meta_info.pop("timing", None)
            for key in _GEN_KEEP_NON_TENSOR:
                out.non_tensor_batch.pop(key, None)
            batch = batch.union(out)
            result = self.val_reward_fn(batch, return_dict=True)
            seq_scores = result["reward_tensor"].sum(-1).tolist()
            scores.extend(seq_scores)
            for key, values in result.get("reward_extra_info", {}).items():
                extra[key].extend(values)
            data_sources.extend(batch.non_tensor_batch.get("data_source", ["unknown"] * len(batch)).tolist())
            uids.extend(batch.non_tensor_batch["uid"].tolist())
            if dump_dir or len(samples) < cfg.trainer.log_val_generations:
                samples.extend(self._decode_samples(batch, seq_scores))
        for s in samples[: cfg.trainer.log_val_generations]:
            print(f"[val sample] score={s['score']:.3f} | {s['output'][:200]!r}")
        if dump_dir:
            _write_jsonl(Path(dump_dir) / f"{self.global_steps}.jsonl", samples, self.global_steps)
        infos = {"reward": scores, **{k: v for k, v in extra.items() if len(v) == len(scores)}}
        return flatten_validation_metrics(process_validation_metrics(data_sources, uids, infos))

    def _decode_samples(self, batch: DataProto, scores: list[float]) -> list[dict]:
        """``{"input", "output", "score"}`` per row: the prompt and the response as text (special tokens dropped)."""
        responses = batch.batch["responses"]
        mask = response_mask_of(batch.batch)
        texts = [self.tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(responses, mask)]
        prompt_len = batch.batch["input_ids"].shape[1] - responses.shape[1]
        prompt_ids, prompt_mask = (
            batch.batch["input_ids"][:, :prompt_len],
            batch.batch["attention_mask"][:, :prompt_len],
        )
        inputs = [self.tokenizer.decode(p[m.bool()], skip_special_tokens=True) for p, m in zip(prompt_ids, prompt_mask)]
        return [{"input": i, "output": t, "score": s} for i, t, s in zip(inputs, texts, scores)]

    def _dump_generations(self, batch: DataProto, out_dir: str) -> None:
        scores = batch.batch["token_level_scores"].sum(-1).tolist()
        _write_jsonl(
            Path(out_dir) / f"{self.global_steps}.jsonl", self._decode_samples(batch, scores), self.global_steps
        )

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> None:
        """Write ``global_step_N/{actor,critic,data.pt}``, then point the tracker file at it.

        The tracker is replaced atomically and only after every part is on disk, so a run killed mid-save resumes
        from the previous complete checkpoint.
        """
        root = Path(self.config.trainer.default_local_dir)
        step_dir = root / f"global_step_{self.global_steps}"
        if step_dir.exists():  # a leftover from a save that was killed before its tracker update
            shutil.rmtree(step_dir)
        # The trainer owns the global_step_N layout and rotates whole step directories itself, so the workers are
        # not asked to rotate their own sub-directories as well (max_ckpt_to_keep=None).
        self.actor_rollout_wg.save_checkpoint(str(step_dir / "actor"), None, self.global_steps, max_ckpt_to_keep=None)
        if self.use_critic:
            self.critic_wg.save_checkpoint(str(step_dir / "critic"), None, self.global_steps, max_ckpt_to_keep=None)
        torch.save(self.train_dataloader.state_dict(), step_dir / "data.pt")
        atomic_write_text(root / "latest_checkpointed_iteration.txt", str(self.global_steps))
        trainer_cfg = self.config.trainer
        keep = [k for k in (trainer_cfg.max_actor_ckpt_to_keep, trainer_cfg.max_critic_ckpt_to_keep) if k]
        rotate_checkpoints(root, max(keep) if keep else None)

    def _load_checkpoint(self) -> int:
        mode = self.config.trainer.resume_mode
        if mode == "disable":
            return 0
        root = Path(self.config.trainer.default_local_dir)
        if mode == "auto":
            path = find_latest_ckpt_path(str(root))
            if path is None:
                print("no checkpoint found: training from scratch")
                return 0
        elif mode == "resume_path":
            path = self.config.trainer.resume_from_path
            if not path or "global_step_" not in str(path):
                raise ValueError(
                    f"trainer.resume_mode=resume_path needs trainer.resume_from_path pointing at a global_step_N "
                    f"directory, got {path!r}"
                )
            if not Path(path).is_dir():
                raise FileNotFoundError(f"trainer.resume_from_path={path} does not exist")
        else:
            raise ValueError(f"trainer.resume_mode must be auto, disable or resume_path, got {mode!r}")
        path = Path(path)
        self.global_steps = int(path.name.split("global_step_")[-1])
        print(f"resuming from {path} (step {self.global_steps})")
        delete_after = self.config.trainer.del_local_ckpt_after_load
        self.actor_rollout_wg.load_checkpoint(str(path / "actor"), del_local_after_load=delete_after)
        if self.use_critic:
            self.critic_wg.load_checkpoint(str(path / "critic"), del_local_after_load=delete_after)
        data_state = path / "data.pt"
        if data_state.exists():
            self.train_dataloader.load_state_dict(torch.load(data_state, weights_only=False))
        return self.global_steps


def _write_jsonl(path: Path, samples: list[dict], step: int) -> None:
    os.makedirs(path.parent, exist_ok=True)
    with open(path, "w") as f:
        for sample in samples:
            f.write(json.dumps({**sample, "step": step}) + "\n")


def rotate_checkpoints(root: Path, keep: int | None) -> list[int]:
    """Delete all but the newest ``keep`` ``global_step_N`` directories under ``root``; returns the deleted steps."""
    if not keep or keep <= 0:
        return []
    steps = sorted(int(p.name[len("global_step_") :]) for p in root.glob("global_step_*") if p.name[12:].isdigit())
    for step in steps[:-keep]:
        shutil.rmtree(root / f"global_step_{step}", ignore_errors=True)
    return steps[:-keep]


def _file_logger_path(config) -> Path | None:
    backends = config.trainer.logger
    backends = [backends] if isinstance(backends, str) else list(backends)
    if "file" not in backends:
        return None
    path = os.environ.get("VERL_FILE_LOGGER_PATH")
    if path:
        return Path(path)
    from verl.utils import tracking

    root = os.environ.get("VERL_FILE_LOGGER_ROOT") or getattr(tracking, "DEFAULT_FILE_LOGGER_ROOT", "outputs")
    return Path(root) / config.trainer.project_name / f"{config.trainer.experiment_name}.jsonl"


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm draws the bar only on a terminal (a log file gets the step lines, not carriage returns)
    return tqdm(
        total=total, initial=initial, desc="Training Progress", disable=None if enabled else True, dynamic_ncols=True
    )
