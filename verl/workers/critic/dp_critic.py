"""Single-process PPO critic: a causal-LM backbone with a one-output value head.

``compute_values`` predicts V(s_t) for every response token (the value read at position t scores the state before
response token t+1, hence the same ``[:, -R-1:-1]`` slice as the actor's logits). ``update_critic`` regresses the
predictions onto GAE returns with the clipped value loss, using the same mini/micro-batch loop and gradient
accumulation as the actor. Batch sizes are per rank: the worker passes them as arguments (or the config holds
per-rank values, as verl's critic expects).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from verl.base_config import BaseConfig
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import compute_value_loss
from verl.utils.config import as_config
from verl.utils.py_functional import append_to_dict
from verl.utils.seqlen_balancing import restore_dynamic_batch
from verl.utils.torch_functional import masked_mean, response_mask_of
from verl.workers.actor.dp_actor import (
    check_sequence_parallel,
    clip_grad_and_step,
    forward_logits,
    forward_packed,
    micro_batch_scales,
    split_micro_batches,
)
from verl.workers.config import FSDPCriticConfig
from verl.workers.critic.base import BasePPOCritic

logger = logging.getLogger(__name__)

__all__ = ["DataParallelPPOCritic", "as_critic_config"]


def as_critic_config(config: Any) -> BaseConfig:
    """The typed critic config: a ``BaseConfig`` is used as is, a DictConfig or dict becomes ``FSDPCriticConfig``."""
    if isinstance(config, BaseConfig):
        return config
    return as_config(config, FSDPCriticConfig)


def _response_mask(batch) -> torch.Tensor:
    return batch["response_mask"] if "response_mask" in batch.keys() else response_mask_of(batch)


class DataParallelPPOCritic(BasePPOCritic):
    """Value model on one rank.

    Args:
        config: typed ``critic`` config (``FSDPCriticConfig``; a DictConfig or dict is converted).
        critic_module: model whose forward returns ``(b, T, 1)`` values (as ``.logits`` or a tensor), e.g. a
            token-classification model with ``num_labels=1``.
        critic_optimizer: its optimizer.
        mini_batch_size: sequences per optimizer step on this rank; None reads ``config.ppo_mini_batch_size``
            as already per rank.
        micro_batch_size: sequences per forward/backward on this rank; None reads
            ``config.ppo_micro_batch_size_per_gpu``.
    """

    def __init__(
        self,
        config: Any,
        critic_module: nn.Module,
        critic_optimizer: torch.optim.Optimizer | None,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        sp_group: Any = None,
        dp_group: Any = None,
    ):
        super().__init__(as_critic_config(config))
        self.critic_module = critic_module
        self.critic_optimizer = critic_optimizer
        self.mini_batch_size = self.config.ppo_mini_batch_size if mini_batch_size is None else mini_batch_size
        self.micro_batch_size = (
            self.config.ppo_micro_batch_size_per_gpu if micro_batch_size is None else micro_batch_size
        )
        self.sp_group, self.dp_group = sp_group, dp_group
        self.sp_size = check_sequence_parallel(self.config, sp_group, "critic")
        self.skipped_steps = 0
        # critic.model.use_remove_padding (null until the tree is built: v0.7's false, v0.9's true)
        self.use_remove_padding = bool(self.config.model.use_remove_padding)

    def _forward_micro_batch(self, micro_batch: DataProto) -> torch.Tensor:
        """Values ``(b, R)`` of the response positions (unmasked)."""
        response_length = micro_batch.batch["responses"].size(-1)
        if self.use_remove_padding:
            values = forward_packed(self.critic_module, micro_batch, response_length, self.sp_group)  # (b, R, 1)
            if values.size(-1) != 1:
                raise ValueError(f"critic output has {values.size(-1)} channels per token; a value head needs 1")
            return values.squeeze(-1).float()
        return self._response_values(forward_logits(self.critic_module, micro_batch), response_length)

    @staticmethod
    def _response_values(values: torch.Tensor, response_length: int) -> torch.Tensor:
        """``(b, R)`` values at the positions that predict the response, from a padded forward's ``(b, T', 1)``
        (or ``(b, T')``) outputs."""
        if values.dim() == 3:
            if values.size(-1) != 1:
                raise ValueError(f"critic output has {values.size(-1)} channels per token; a value head needs 1")
            values = values.squeeze(-1)
        return values[:, -response_length - 1 : -1].float()

    def compute_values(self, data: DataProto) -> torch.Tensor:
        """Predict values without gradients.

        Args:
            data: batch with ``responses`` ``(bs, R)``, ``input_ids``, ``attention_mask``, ``position_ids``
                ``(bs, P+R)``, optional ``response_mask``; meta ``micro_batch_size``, ``use_dynamic_bsz``,
                ``max_token_len``.

        Returns:
            ``(bs, R)`` float32 values, zero outside the response mask, in the input row order.
        """
        meta = data.meta_info
        keys = ["responses", "input_ids", "attention_mask", "position_ids"]
        if "response_mask" in data.batch.keys():
            keys.append("response_mask")
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        micro_batches, indices = split_micro_batches(
            data, bool(meta.get("use_dynamic_bsz")), meta.get("micro_batch_size"), meta.get("max_token_len")
        )
        was_training = self.critic_module.training
        self.critic_module.eval()
        try:
            with torch.no_grad():
                values = torch.cat(self._forward_micro_batches(micro_batches), dim=0)
        finally:
            self.critic_module.train(was_training)
        if indices is not None:
            values = restore_dynamic_batch(values, indices)
        return values * _response_mask(data.batch).to(values.dtype)

    def _forward_micro_batches(self, micro_batches: list[DataProto]) -> list[torch.Tensor]:
        """:meth:`_forward_micro_batch` of each micro-batch, in order (the caller holds no_grad)."""
        return [self._forward_micro_batch(m) for m in micro_batches]

    def _value_loss(self, vpreds: torch.Tensor, micro: DataProto) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped value loss of one micro-batch's predictions ``(b, R)``, and its per-micro metrics."""
        batch, cfg = micro.batch, self.config
        mask = batch["response_mask"]
        vf_loss, vf_clipfrac = compute_value_loss(
            vpreds=vpreds,
            returns=batch["returns"],
            values=batch["values"],
            response_mask=mask,
            cliprange_value=cfg.cliprange_value,
            loss_agg_mode=cfg.loss_agg_mode,
            loss_scale_factor=cfg.loss_scale_factor,
        )
        metrics = {
            "critic/vf_clipfrac": float(vf_clipfrac),
            "critic/vpred_mean": masked_mean(vpreds.detach(), mask).item(),
        }
        return vf_loss, metrics

    def _backward_micro_batches(
        self, micro_batches: list[DataProto], scales: list[float]
    ) -> list[tuple[float, dict[str, float]]]:
        """Forward and backward of each micro-batch of one mini-batch, its loss scaled by ``scales``; returns each
        one's unscaled value loss and metrics."""
        results = []
        for micro, scale in zip(micro_batches, scales):
            vf_loss, micro_metrics = self._value_loss(self._forward_micro_batch(micro), micro)
            (vf_loss * scale).backward()
            results.append((vf_loss.item(), micro_metrics))
        return results

    def update_critic(self, data: DataProto) -> dict[str, list[float]]:
        """Clipped value-loss regression onto ``returns``; one optimizer step per mini-batch.

        Micro-batch losses are local means scaled as the actor's (``micro_batch_scales``): by 1/gradient
        accumulation on the legacy path; unscaled on the engine path (meta ``global_batch_size`` present), where,
        as upstream's engine critic does, the gradient is the sum of the micro-batch means.

        Args:
            data: batch with ``responses``, ``input_ids``, ``attention_mask``, ``position_ids``, ``values`` (old
                predictions) and ``returns`` ``(bs, R)``, optional ``response_mask``.

        Returns:
            Metrics as lists: per micro-batch ``critic/vf_clipfrac``, ``critic/vpred_mean``; per mini-batch
            ``critic/grad_norm``; ``critic/vf_loss`` as verl reports it (legacy: one value per rank, the scaled sum
            over epochs, mini- and micro-batches; engine path: one value per micro-batch).
        """
        if self.critic_optimizer is None:
            raise RuntimeError("this critic has no optimizer; update_critic cannot run")
        cfg = self.config
        engine = data.meta_info.get("global_batch_size") is not None
        keys = ["responses", "input_ids", "attention_mask", "position_ids", "values", "returns"]
        if "response_mask" in data.batch.keys():
            keys.append("response_mask")
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = _response_mask(data.batch)
        metrics: dict[str, list[float]] = {}
        vf_total = 0.0
        self.critic_module.train()
        for _ in range(cfg.ppo_epochs):
            for mini in data.split(self.mini_batch_size):
                max_tokens = cfg.ppo_max_token_len_per_gpu * self.sp_size  # a group's budget under Ulysses
                micro_batches, _ = split_micro_batches(mini, cfg.use_dynamic_bsz, self.micro_batch_size, max_tokens)
                scales = micro_batch_scales([len(m) for m in micro_batches], len(mini), cfg.use_dynamic_bsz, engine)
                self.critic_optimizer.zero_grad()
                for (vf_loss, micro_metrics), scale in zip(self._backward_micro_batches(micro_batches, scales), scales):
                    vf_total += vf_loss * scale
                    if engine:
                        micro_metrics["critic/vf_loss"] = vf_loss
                    append_to_dict(metrics, micro_metrics)
                clip = cfg.optim.clip_grad if engine else cfg.grad_clip  # as the actor: engine path reads optim
                grad_norm, stepped = clip_grad_and_step(self.critic_module, self.critic_optimizer, clip)
                if not stepped:
                    self.skipped_steps += 1
                    logger.warning("critic grad norm is %s; optimizer step skipped", grad_norm.item())
                append_to_dict(metrics, {"critic/grad_norm": grad_norm.item()})
        if not engine:
            append_to_dict(metrics, {"critic/vf_loss": vf_total})
        self.critic_optimizer.zero_grad()
        return metrics
