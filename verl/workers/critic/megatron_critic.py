"""The PPO critic on megatron-core: :class:`DataParallelPPOCritic` whose micro-batches run through megatron-core's
pipeline schedules, as :class:`~verl.workers.actor.megatron_actor.MegatronPPOActor` does for the actor.

The value model's last stage ends in the one-output value head; the value loss is the base class's
(``_value_loss``), and what the last stage computed is broadcast to the other stages of its pipeline.
"""

from __future__ import annotations

from typing import Any

import torch

from verl.protocol import DataProto
from verl.workers.actor.megatron_actor import _to, broadcast_from_last_stage, run_schedule
from verl.workers.critic.dp_critic import DataParallelPPOCritic

__all__ = ["MegatronPPOCritic"]


class MegatronPPOCritic(DataParallelPPOCritic):
    """verl's ``MegatronPPOCritic``; ``critic_module`` is a ``MegatronCausalLM`` with a value head."""

    def _forward_micro_batches(self, micro_batches: list[DataProto]) -> list[torch.Tensor]:
        def on_output(micro: DataProto, values: torch.Tensor) -> tuple[torch.Tensor, Any]:
            response_values = self._response_values(values, micro.batch["responses"].size(-1))
            return torch.zeros((), device=values.device), response_values

        outs = run_schedule(self.critic_module, micro_batches, on_output, forward_only=True)
        device = micro_batches[0].batch["input_ids"].device if micro_batches else torch.device("cpu")
        return _to(broadcast_from_last_stage(outs), device)

    def _backward_micro_batches(
        self, micro_batches: list[DataProto], scales: list[float]
    ) -> list[tuple[float, dict[str, float]]]:
        def on_output(item: tuple[DataProto, float], values: torch.Tensor) -> tuple[torch.Tensor, Any]:
            micro, scale = item
            vpreds = self._response_values(values, micro.batch["responses"].size(-1))
            vf_loss, metrics = self._value_loss(vpreds, micro)
            return vf_loss * scale, (vf_loss.item(), metrics)

        results = run_schedule(self.critic_module, list(zip(micro_batches, scales)), on_output, forward_only=False)
        return [tuple(r) for r in broadcast_from_last_stage(results)]
