"""FSDP workers of the value models: :class:`CriticWorker` (a value model trained by ``DataParallelPPOCritic``) and
:class:`RewardModelWorker` (a sequence-classification reward model scoring finished responses). Both are exported
from ``verl.workers.fsdp_workers`` too, under verl's module path."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from verl.protocol import DataProto
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import hf_models as hf
from verl.utils.batch_sizes import critic_rank_batch_sizes, per_rank_micro_batch
from verl.utils.config import as_config
from verl.utils.device import get_device_name
from verl.utils.import_utils import import_external_libs
from verl.utils.torch_functional import response_mask_of
from verl.workers.config import (
    ActorRolloutRefConfig,
    CriticConfig,
    FSDPCriticConfig,
    RewardModelConfig,
)
from verl.workers.fsdp_base import (
    _build_sharded,
    _current_lr,
    _FSDPWorkerBase,
    _log_offload_on_cpu,
    _memory_metrics,
    _Offload,
)

logger = logging.getLogger(__name__)

__all__ = ["CriticWorker", "RewardModelWorker"]

# ------------------------------------------------------------------------------------------ critic


class CriticWorker(_FSDPWorkerBase):
    """Value-model training for one rank.

    Args:
        config: the ``critic`` subtree (``CriticConfig``; a DictConfig is converted).
        total_training_steps: the run's length for the LR schedule; None reads ``critic.optim.total_training_steps``.
    """

    def __init__(self, config: Any, total_training_steps: int | None = None, **kwargs: Any):
        super().__init__()
        config = config if isinstance(config, CriticConfig) else as_config(config, FSDPCriticConfig)
        self._sp = self._check_sp_divides(
            config.ulysses_sequence_parallel_size, "critic.ulysses_sequence_parallel_size"
        )
        self._batch = critic_rank_batch_sizes(config, self.world_size // self._sp)
        self._total_training_steps = total_training_steps
        self._setup(config, ("critic",), config.model.fsdp_config.seed, timeout_s=config.nccl_timeout)
        self.critic = self.critic_module_fsdp = self.critic_optimizer = None
        self.critic_lr_scheduler = self.checkpoint_manager = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        """Build the value model (backbone from ``critic.model.path`` + fresh 1-output head), optimizer, scheduler."""
        from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
        from verl.utils.tokenizer import hf_tokenizer
        from verl.workers.critic.dp_critic import DataParallelPPOCritic

        cfg, model_cfg = self.config, self.config.model
        import_external_libs(model_cfg.external_lib, "critic.model.external_lib")
        fsdp_config = model_cfg.fsdp_config
        _log_offload_on_cpu(fsdp_config, "critic")
        local_path = hf.resolve_model_path(model_cfg.path, "critic.model.path")
        tok_path = model_cfg.tokenizer_path or local_path
        if tok_path != local_path:
            tok_path = hf.resolve_model_path(tok_path, "critic.model.tokenizer_path")
        self.tokenizer = hf_tokenizer(tok_path, trust_remote_code=model_cfg.trust_remote_code)
        module = hf.build_value_model(
            local_path,
            dtype=fsdp_config.model_dtype,
            override_config=model_cfg.override_config,
            trust_remote_code=model_cfg.trust_remote_code,
            seed=fsdp_config.seed,
        )
        if self._sp > 1:
            from verl.utils.ulysses import check_heads, enable_ulysses

            check_heads(module.config, self._sp, "critic.ulysses_sequence_parallel_size")
            enable_ulysses(module)
        if model_cfg.enable_gradient_checkpointing:
            hf.enable_gradient_checkpointing(module)
        self.critic_module_fsdp = _build_sharded(module, cfg.strategy, fsdp_config, self._mesh(fsdp_config))
        self.critic_optimizer = hf.build_optimizer(self.critic_module_fsdp.parameters(), cfg.optim)
        self.critic_lr_scheduler = hf.build_lr_scheduler(self.critic_optimizer, cfg.optim, self._total_training_steps)
        sp_group, dp_group = self._ulysses_groups(self._sp)
        self.critic = DataParallelPPOCritic(
            cfg,
            self.critic_module_fsdp,
            self.critic_optimizer,
            mini_batch_size=self._batch.mini,
            micro_batch_size=self._batch.micro,
            sp_group=sp_group,
            dp_group=dp_group,
        )
        self.checkpoint_manager = FSDPCheckpointManager(
            model=self.critic_module_fsdp,
            optimizer=self.critic_optimizer,
            lr_scheduler=self.critic_lr_scheduler,
            processing_class=self.tokenizer,
            checkpoint_config=cfg.checkpoint,
        )
        self._offload = _Offload(self.critic_module_fsdp, self.critic_optimizer, fsdp_config)
        self._offload.__exit__(None, None, None)
        self._seed_rngs()

    def _mesh_sp(self, mesh_name: str) -> int:
        return self._sp

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="critic"))
    def compute_values(self, data: DataProto) -> DataProto:
        """``values`` ``(bs, R)`` for this rank's rows."""
        data = data.to(get_device_name())
        data.meta_info["micro_batch_size"] = self._batch.log_prob_micro
        data.meta_info["max_token_len"] = self.config.forward_max_token_len_per_gpu * self._sp
        data.meta_info["use_dynamic_bsz"] = self.config.use_dynamic_bsz
        with self._offload:
            values = self.critic.compute_values(data)
        return DataProto.from_dict(tensors={"values": values}).to("cpu")

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="critic"))
    def update_critic(self, data: DataProto) -> DataProto:
        """One value-regression update; returns ``meta_info["metrics"]`` (``critic/*``, ``perf/*``)."""
        data = data.to(get_device_name())
        with self._offload:
            start = time.perf_counter()
            metrics = dict(self.critic.update_critic(data))
            metrics["perf/update_critic_s"] = time.perf_counter() - start
            metrics["critic/lr"] = _current_lr(self.critic_lr_scheduler)
            self.critic_lr_scheduler.step()
        metrics.update(_memory_metrics())
        return DataProto(meta_info={"metrics": metrics})

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(
        self, local_path: str, hdfs_path: str | None = None, global_step: int = 0, max_ckpt_to_keep: int | None = None
    ) -> None:
        """Save the critic's shards, optimizer, scheduler and RNG."""
        with self._offload:
            self.checkpoint_manager.save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path: str, hdfs_path: str | None = None, del_local_after_load: bool = True):
        """Restore the critic from ``local_path``."""
        with self._offload:
            self.checkpoint_manager.load_checkpoint(local_path, hdfs_path, del_local_after_load)


# ------------------------------------------------------------------------------------------ reward model


class RewardModelWorker(_FSDPWorkerBase):
    """Scores finished responses with a sequence-classification reward model.

    Args:
        config: the ``reward_model`` subtree (``RewardModelConfig``; a DictConfig is converted).
    """

    def __init__(self, config: Any, **kwargs: Any):
        super().__init__()
        config = as_config(config, RewardModelConfig)
        self._micro = per_rank_micro_batch(
            "reward_model",
            "micro_batch_size",
            config.micro_batch_size,
            config.micro_batch_size_per_gpu,
            self.world_size,
            required=False,
        )
        self._setup(config, ("reward",), config.model.fsdp_config.seed, timeout_s=ActorRolloutRefConfig.nccl_timeout)
        self.reward_module = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        """Load the reward model (FSDP-sharded, inference only) and decide whether inputs must be re-tokenised."""
        from verl.utils.tokenizer import hf_tokenizer

        model_cfg = self.config.model
        fsdp_config = model_cfg.fsdp_config
        remote = model_cfg.trust_remote_code
        local_path = hf.resolve_model_path(model_cfg.path, "reward_model.model.path")
        self.rm_tokenizer = hf_tokenizer(local_path, trust_remote_code=remote)
        self.input_tokenizer = None
        if model_cfg.input_tokenizer:
            in_path = hf.resolve_model_path(model_cfg.input_tokenizer, "reward_model.model.input_tokenizer")
            input_tokenizer = hf_tokenizer(in_path, trust_remote_code=remote)
            if not _same_tokenizer(input_tokenizer, self.rm_tokenizer):
                self.input_tokenizer = input_tokenizer
        module = hf.build_reward_model(local_path, dtype=fsdp_config.model_dtype, trust_remote_code=remote)
        module.requires_grad_(False)
        self.reward_module = _build_sharded(module, self.config.strategy, fsdp_config, self._mesh(fsdp_config))
        self._seed_rngs()

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="reward"))
    def compute_rm_score(self, data: DataProto) -> DataProto:
        """``rm_scores`` ``(bs, R)``: the reward model's score at each response's last valid token, 0 elsewhere."""
        from verl.utils.seqlen_balancing import restore_dynamic_batch
        from verl.workers.actor.dp_actor import split_micro_batches

        data = data.to(get_device_name())
        rm_data = self._retokenize(data) if self.input_tokenizer is not None else data
        rm_data = rm_data.select(batch_keys=["input_ids", "attention_mask", "position_ids"])
        micro_batches, indices = split_micro_batches(
            rm_data, self.config.use_dynamic_bsz, self._micro, self.config.forward_max_token_len_per_gpu
        )
        self.reward_module.eval()
        with torch.no_grad():
            scores = torch.cat([self._last_token_score(mb) for mb in micro_batches])
        if indices is not None:
            scores = restore_dynamic_batch(scores, indices)
        return DataProto.from_dict(tensors={"rm_scores": _place_at_last_token(scores, data)}).to("cpu")

    def _last_token_score(self, micro: DataProto) -> torch.Tensor:
        batch = micro.batch
        token_scores = self.reward_module(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        )  # (b, T)
        mask = batch["attention_mask"]
        positions = torch.arange(mask.size(-1), device=mask.device)
        last = (mask * positions).argmax(dim=-1)  # index of the last attended token, whatever the padding side
        return token_scores.float().gather(1, last.unsqueeze(-1)).squeeze(-1)  # (b,)

    def _retokenize(self, data: DataProto) -> DataProto:
        """Decode with the policy's tokenizer, re-apply the RM's chat template and tokenizer (right-padded)."""
        batch = data.batch
        response_length = batch["responses"].size(-1)
        prompt_mask = batch["attention_mask"][:, :-response_length]
        response_mask = response_mask_of(batch)
        raw_prompts = (data.non_tensor_batch or {}).get("raw_prompt")
        texts = []
        for i in range(len(data)):
            response_ids = batch["responses"][i][response_mask[i].bool()]
            response = self.input_tokenizer.decode(response_ids.tolist(), skip_special_tokens=True)
            if raw_prompts is not None:
                chat = [dict(m) for m in list(raw_prompts[i])]
            else:
                prompt_ids = batch["input_ids"][i, :-response_length][prompt_mask[i].bool()]
                chat = [
                    {
                        "role": "user",
                        "content": self.input_tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=True),
                    }
                ]
            chat.append({"role": "assistant", "content": response})
            if getattr(self.rm_tokenizer, "chat_template", None):
                texts.append(self.rm_tokenizer.apply_chat_template(chat, tokenize=False))
            else:
                texts.append("\n".join(m["content"] for m in chat))
        max_length = self.config.max_length  # None: keep the whole conversation
        self.rm_tokenizer.padding_side = "right"
        enc = self.rm_tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=int(max_length) if max_length is not None else None,
            add_special_tokens=False,
        )
        mask = enc["attention_mask"].to(batch["input_ids"].device)
        position_ids = torch.clip(torch.cumsum(mask, dim=-1) - 1, min=0)
        tensors = {"input_ids": enc["input_ids"].to(mask.device), "attention_mask": mask, "position_ids": position_ids}
        return DataProto.from_dict(tensors=tensors)


def _same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab() and getattr(a, "chat_template", None) == getattr(b, "chat_template", None)


def _place_at_last_token(scores: torch.Tensor, data: DataProto) -> torch.Tensor:
    """Scatter one score per row into ``(bs, R)`` at the last valid response token (row of zeros if empty)."""
    response_mask = response_mask_of(data.batch)
    lengths = response_mask.sum(dim=-1)
    out = torch.zeros(response_mask.shape, dtype=torch.float32, device=scores.device)
    rows = torch.nonzero(lengths > 0).squeeze(-1)
    out[rows, lengths[rows] - 1] = scores[rows].float()
    return out
