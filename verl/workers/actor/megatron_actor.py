"""The PPO actor on megatron-core, its micro-batches run by megatron-core's pipeline schedules.

``MegatronPPOActor`` is :class:`DataParallelPPOActor` with one thing changed: each mini-batch's micro-batches (and the
no-grad passes of ``compute_log_prob``) go through ``megatron.core.pipeline_parallel.get_forward_backward_func()``:
the plain loop for one pipeline stage, the 1F1B schedule (``forward_backward_pipelining_without_interleaving``) for
several. A stage runs its slice of the layers; the last one turns its logits into log-probs and the loss with the
base class's own functions (``_outputs_from_logits`` and ``_loss_from_outputs``), so the maths is the FSDP path's.

What the last stage computed (log-probs, entropies, the loss parts and metrics of each micro-batch) is broadcast to
the other stages of its pipeline, so every rank returns the same result and the workers need no per-stage case.

Scaling: a schedule divides each micro-batch's loss by the number of micro-batches before its backward (its legacy
two-value loss form). The loss handed to it is multiplied by that number, so the gradient is the sum of the scaled
micro-batch losses, exactly as the base class accumulates it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.workers.actor.dp_actor import DataParallelPPOActor, model_inputs

__all__ = ["MegatronPPOActor", "run_schedule"]

logger = logging.getLogger(__name__)


def run_schedule(module: Any, micro_batches: list[Any], on_logits: Any, forward_only: bool) -> list[Any]:
    """Run ``micro_batches`` (each a ``DataProto``, or a ``(DataProto, extra)`` pair) through megatron-core's
    schedule for this pipeline layout, on ``module`` (a :class:`~verl.models.mcore.model.MegatronCausalLM`).

    ``on_logits(item, logits)`` runs on the last stage for each item, with the HF-layout ``(b, T', V)`` logits of the
    padded forward (``model_inputs``); it returns ``(loss, payload)``. Returns the payloads in order on the last
    stage, and an empty list on the others. With ``forward_only`` the losses are not used.
    """
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from verl.models.mcore.cpu_patches import cuda_factories_on_cpu

    if not micro_batches:
        return []
    gpt = module.gpt
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        # micro-batches differ in rows (dynamic batch sizes) and columns (leading padding is cut): stages send the
        # shape of each activation before the activation
        gpt.config.variable_seq_lengths = True
    count = len(micro_batches)

    def forward_step(data_iterator, model):
        item = next(data_iterator)
        micro = item[0] if isinstance(item, tuple) else item
        inputs = model_inputs(micro)
        output, finish = module.stage_forward(inputs["input_ids"], inputs["attention_mask"])

        def loss_func(stage_output):
            loss, payload = on_logits(item, finish(stage_output))
            # the schedule divides by the number of micro-batches (its two-value form): undo it
            return loss * count, payload

        return output, loss_func

    first = micro_batches[0][0] if isinstance(micro_batches[0], tuple) else micro_batches[0]
    shape = model_inputs(first)["input_ids"].shape
    with cuda_factories_on_cpu():
        return list(
            get_forward_backward_func()(
                forward_step_func=forward_step,
                data_iterator=iter(micro_batches),
                model=[gpt],
                num_microbatches=count,
                seq_length=int(shape[1]),
                micro_batch_size=int(shape[0]),
                forward_only=forward_only,
            )
        )


def broadcast_from_last_stage(value: Any) -> Any:
    """``value`` of the last pipeline stage, on every stage of this rank's pipeline (tensors come back on the device
    they were sent from; identity with one stage)."""
    from megatron.core import parallel_state

    if parallel_state.get_pipeline_model_parallel_world_size() == 1:
        return value
    box = [_to_cpu(value)]
    dist.broadcast_object_list(
        box,
        src=parallel_state.get_pipeline_model_parallel_last_rank(),
        group=parallel_state.get_pipeline_model_parallel_group(),
    )
    return box[0]


def _to_cpu(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _to(value: Any, device: torch.device) -> Any:
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


class MegatronPPOActor(DataParallelPPOActor):
    """verl's ``MegatronPPOActor``: :class:`DataParallelPPOActor` whose micro-batches run through megatron-core's
    pipeline schedules (see the module docstring). ``actor_module`` is a ``MegatronCausalLM``."""

    def _forward_micro_batches(
        self, micro_batches: list[DataProto], temperature: float, calculate_entropy: bool, sum_pi_squared: bool
    ) -> list[dict[str, torch.Tensor]]:
        def on_logits(micro: DataProto, logits: torch.Tensor):
            responses = micro.batch["responses"]
            response_logits = logits[:, -responses.size(-1) - 1 : -1, :]
            out = self._outputs_from_logits(response_logits, responses, temperature, calculate_entropy, sum_pi_squared)
            return torch.zeros((), device=logits.device), {k: v.float() for k, v in out.items()}

        outs = run_schedule(self.actor_module, micro_batches, on_logits, forward_only=True)
        device = micro_batches[0].batch["input_ids"].device if micro_batches else torch.device("cpu")
        return _to(broadcast_from_last_stage(outs), device)

    def _backward_micro_batches(
        self,
        micro_batches: list[DataProto],
        scales: list[float],
        temperature: float,
        on_policy: bool,
        cfg: Any,
        keep: dict[str, list] | None,
    ) -> list[tuple[float, dict[str, float], dict[str, float]]]:
        calculate_entropy = cfg.entropy_coeff != 0 or cfg.calculate_entropy
        kept: dict[str, list] | None = {} if keep is not None else None

        def on_logits(item: tuple[DataProto, float], logits: torch.Tensor):
            micro, scale = item
            responses = micro.batch["responses"]
            response_logits = logits[:, -responses.size(-1) - 1 : -1, :]
            out = self._outputs_from_logits(
                response_logits, responses, temperature, calculate_entropy, detached_entropy=kept is not None
            )
            loss, metrics, parts = self._loss_from_outputs(out, micro, on_policy, cfg, kept)
            return loss * scale, (loss.item(), metrics, parts)

        results = run_schedule(self.actor_module, list(zip(micro_batches, scales)), on_logits, forward_only=False)
        results, kept = broadcast_from_last_stage((results, kept))
        if keep is not None:
            device = micro_batches[0].batch["input_ids"].device
            for key, values in kept.items():
                keep.setdefault(key, []).extend(_to(values, device))
        return [tuple(r) for r in results]
