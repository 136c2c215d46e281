"""Single-process PPO actor over a (possibly FSDP-wrapped) Hugging Face causal LM.

``DataParallelPPOActor`` does the per-rank compute of a PPO/GRPO step; the FSDP worker moves data and calls it:

* ``compute_log_prob``: no-grad forward, log p(response token) at the rollout temperature (``old_log_probs`` for
  the actor, ``ref_log_prob`` for the reference policy, which is the same class without an optimizer);
* ``update_policy``: ``ppo_epochs`` x mini-batches x micro-batches of policy loss (+ KL loss, - entropy bonus),
  gradient accumulation over micro-batches, one clipped optimizer step per mini-batch.

Batch sizes here are per rank: the caller (the FSDP worker) has already multiplied ``ppo_mini_batch_size`` by
``rollout.n`` and divided it by the data-parallel size.

Loss scaling is verl's (reference/verl_parity_facts.md section 1), on both of its paths:

* legacy workers (the default, ``trainer.use_legacy_worker_impl`` auto/enable): each micro-batch loss is a local
  mean, scaled by ``1 / gradient_accumulation`` (or rows / mini-batch rows with dynamic batch sizes);
* engine path (``use_legacy_worker_impl=disable``; the trainer tags the batch with ``global_batch_size``): the
  losses divide by the mini-batch's token count summed over ranks (or by ``global_batch_size`` sequences for the
  ``seq-*`` modes) and micro-batches are summed unscaled, so the gradient is the global mean whatever the split.

Forwards: ``use_remove_padding`` (verl's default) packs each micro-batch's real tokens into one row with
per-sequence position ids (``forward_packed``): no FLOPs on padding, and with dynamic batch sizes a micro-batch is
exactly its token budget. Without it the padded forward runs (``forward_logits``). Both give the same log-probs up to
float rounding (tested to 1e-5). With Ulysses sequence parallelism (``sp_group``) the packed row is split over the
group's ranks (``verl.utils.ulysses``); there are no fused kernels.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from verl.base_config import BaseConfig
from verl.protocol import DataProto
from verl.trainer.ppo import core_algos, rollout_corr_helper
from verl.utils.config import as_config
from verl.utils.fsdp_utils import unwrap_module
from verl.utils.hf_models import forward_accepts
from verl.utils.py_functional import append_to_dict
from verl.utils.seqlen_balancing import prepare_dynamic_batch, restore_dynamic_batch
from verl.utils.torch_functional import (
    entropy_from_logits,
    entropy_from_logits_with_chunking,
    leading_pad_columns,
    logprobs_from_logits,
    response_mask_of,
)
from verl.workers.actor.base import BasePPOActor
from verl.workers.config import FSDPActorConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DataParallelPPOActor",
    "as_actor_config",
    "check_sequence_parallel",
    "clip_grad_and_step",
    "forward_logits",
    "forward_packed",
    "global_batch_info",
    "micro_batch_scales",
    "model_inputs",
    "split_micro_batches",
]


def as_actor_config(config: Any) -> BaseConfig:
    """The typed actor config: a ``BaseConfig`` is used as is, a DictConfig or dict becomes ``FSDPActorConfig``."""
    if isinstance(config, BaseConfig):
        return config
    return as_config(config, FSDPActorConfig)


def _require_meta(data: DataProto, key: str, hint: str) -> Any:
    if key not in data.meta_info:
        raise ValueError(f"data.meta_info[{key!r}] is missing; {hint}")
    return data.meta_info[key]


def model_inputs(micro_batch: DataProto, module: nn.Module | None = None, logits_to_keep: int = 0) -> dict[str, Any]:
    """The keyword arguments of a padded forward of ``micro_batch`` (see :func:`forward_logits`): ``input_ids``,
    ``attention_mask``, ``position_ids`` without the leading columns that are padding in every row, ``use_cache``,
    the rows' vision tensors, and ``logits_to_keep`` when ``module`` takes it."""
    batch = micro_batch.batch
    extra: dict[str, Any] = {}
    mm = (micro_batch.non_tensor_batch or {}).get("multi_modal_inputs")
    if mm is not None:
        # Per-row dicts of vision tensors are concatenated along their first dim, as processors emit them.
        for key in mm[0]:
            extra[key] = torch.cat([row[key] for row in mm], dim=0).to(batch["input_ids"].device)
    attention_mask = batch["attention_mask"]
    # Vision inputs are laid out against the full prompt, so their rows keep every column.
    skip = 0 if mm is not None else leading_pad_columns(attention_mask)
    if logits_to_keep > 0 and module is not None and forward_accepts(unwrap_module(module), "logits_to_keep"):
        extra["logits_to_keep"] = int(logits_to_keep)
    return dict(
        input_ids=batch["input_ids"][..., skip:],
        attention_mask=attention_mask[..., skip:],
        position_ids=batch["position_ids"][..., skip:],
        use_cache=False,
        **extra,
    )


def forward_logits(module: nn.Module, micro_batch: DataProto, logits_to_keep: int = 0) -> torch.Tensor:
    """Run the model on a padded micro-batch and return its per-position outputs.

    Args:
        module: causal LM (or value model) called as ``module(input_ids=, attention_mask=, position_ids=,
            use_cache=False)``; its output may be a tensor, have ``.logits``, or be a tuple (first item used).
        micro_batch: rows with ``input_ids``, ``attention_mask``, ``position_ids`` ``(b, T)`` (``(b, C, T)`` for
            rope variants) and optional non-tensor ``multi_modal_inputs`` (one dict of tensors per row).
        logits_to_keep: when > 0 and the model takes transformers' ``logits_to_keep``, only the last that many
            positions go through the output head (the response's, for a policy): the same values for a fraction of
            the head's compute and memory. 0 computes every position.

    Returns:
        ``(b, T', V)`` logits (``(b, T', 1)`` or ``(b, T')`` for a value model) of the last ``T' <= T`` positions:
        leading columns that are padding in every row are not computed (``leading_pad_columns``; the outputs at
        real positions do not depend on them), and with ``logits_to_keep`` only the last ``logits_to_keep`` are
        returned, so callers index from the end, as the response is.
    """
    output = module(**model_inputs(micro_batch, module, logits_to_keep))
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def forward_packed(
    module: nn.Module, micro_batch: DataProto, response_length: int, sp_group: Any = None
) -> torch.Tensor:
    """Run the model on the micro-batch's real tokens only, packed into one row, and return its outputs at the
    ``response_length`` positions that predict the response tokens.

    The rows' real tokens (``attention_mask`` 1, any padding layout) are concatenated into ``input_ids (1, nnz)`` with
    their own ``position_ids`` (each sequence restarts at 0) and no attention mask: transformers keeps the sequences
    apart (flash-attn varlen with ``flash_attention_2``, a block-diagonal causal mask with ``sdpa``/``eager``). Only
    the needed positions go through the output head when the model takes a tensor ``logits_to_keep``.

    Args:
        module: causal LM or value model (``module(input_ids=, position_ids=, use_cache=False)``).
        micro_batch: rows with ``input_ids``, ``attention_mask``, ``position_ids`` ``(b, T)``; the response is the
            last ``response_length`` columns.
        response_length: ``R``.
        sp_group: the Ulysses sequence-parallel group (``ulysses_sequence_parallel_size > 1``; its ranks hold the
            same rows): the packed row is split into one contiguous slice per rank, attention exchanges heads for
            slices (``verl.utils.ulysses``), and the needed outputs are gathered from the slices, so every rank of
            the group returns the same values.

    Returns:
        ``(b, R, C)`` outputs (logits, or a value head's channel), position ``j`` predicting response token ``j``;
        positions whose input is padding (after a row's last token) hold zeros, as the padded path's values there
        are never read (the response mask is 0).
    """
    batch = micro_batch.batch
    if (micro_batch.non_tensor_batch or {}).get("multi_modal_inputs") is not None:
        raise ValueError("the padding-free forward does not take multi-modal inputs; set use_remove_padding=False")
    input_ids, attention_mask, position_ids = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    if position_ids.dim() != 2:
        raise ValueError(f"the padding-free forward needs (b, T) position_ids, got {tuple(position_ids.shape)}")
    from verl.utils.attention_utils import unpad_input

    b, width = input_ids.shape
    real = attention_mask.bool()
    packed_ids, _, cu_seqlens, _ = unpad_input(input_ids.unsqueeze(-1), attention_mask)
    packed_positions = position_ids[real]
    cols = torch.arange(width - response_length - 1, width - 1, device=input_ids.device)  # (R,)
    within = attention_mask.long().cumsum(-1) - 1  # (b, T): a token's index inside its sequence
    packed_index = cu_seqlens[:-1].long().unsqueeze(1) + within[:, cols]  # (b, R)
    valid = real[:, cols]  # (b, R): the input at that position is a real token
    keep = packed_index[valid]  # (K,)
    packed_ids, packed_positions = packed_ids.view(1, -1), packed_positions.view(1, -1)
    if sp_group is not None and torch.distributed.get_world_size(sp_group) > 1:
        values = _forward_packed_sp(module, packed_ids, packed_positions, keep, sp_group)
    else:
        values = _forward_rows(module, packed_ids, packed_positions, keep)
    result = values.new_zeros((b, response_length, values.size(-1)))
    result[valid] = values
    return result


def _forward_rows(
    module: nn.Module, ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, **extra: Any
) -> torch.Tensor:
    """The model's ``(len(keep), C)`` outputs at the positions ``keep`` of the packed row ``ids (1, n)``."""
    if forward_accepts(unwrap_module(module), "logits_to_keep"):
        extra["logits_to_keep"] = keep
    output = module(input_ids=ids, position_ids=positions, use_cache=False, **extra)
    if not isinstance(output, torch.Tensor):
        output = output.logits if hasattr(output, "logits") else output[0]
    values = output[0]  # (K or n, C) or (K or n,)
    if values.dim() == 1:
        values = values.unsqueeze(-1)
    return values if "logits_to_keep" in extra else values[keep]


def _forward_packed_sp(
    module: nn.Module, ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, group: Any
) -> torch.Tensor:
    """:func:`_forward_rows` with the row split over the Ulysses group ``group`` (see ``verl.utils.ulysses``)."""
    from verl.utils import ulysses

    size, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    n = ids.size(1)
    pad = -n % size
    if pad:  # a filler sequence at the end (its own positions from 0), never read
        ids = torch.cat([ids, ids.new_zeros((1, pad))], dim=1)
        positions = torch.cat([positions, torch.arange(pad, device=positions.device).view(1, -1)], dim=1)
    chunk = ids.size(1) // size
    start = rank * chunk
    counts = [int(c) for c in torch.div(keep, chunk, rounding_mode="floor").bincount(minlength=size)]
    mine = keep[(keep >= start) & (keep < start + chunk)] - start
    with ulysses.sequence_parallel(group, positions) as ctx:
        local_ids, local_positions = ids[:, start : start + chunk], positions[:, start : start + chunk]
        local = _forward_rows(module, local_ids, local_positions, mine, **{ulysses.MODEL_KWARG: ctx})
    return ulysses.gather_rows(local, counts, group)  # keep is sorted: the slices' rows, in rank order


def _ulysses_size(config: Any) -> int:
    """``ulysses_sequence_parallel_size`` of an FSDP node; 1 for nodes without the key (Megatron's)."""
    return int(config.ulysses_sequence_parallel_size) if hasattr(config, "ulysses_sequence_parallel_size") else 1


def check_sequence_parallel(config: Any, sp_group: Any, where: str) -> int:
    """The Ulysses size of ``config`` (1 without it), checked against the group the worker made."""
    size = _ulysses_size(config)
    if size == 1:
        return 1
    if sp_group is None or torch.distributed.get_world_size(sp_group) != size:
        raise ValueError(
            f"{where}.ulysses_sequence_parallel_size={size} needs its sequence-parallel process group (the FSDP "
            "workers make it: verl.utils.ulysses.ulysses_groups); pass sp_group="
        )
    remove_padding = getattr(config, "use_remove_padding", None)
    if remove_padding is None:  # the critic's node: critic.model.use_remove_padding
        remove_padding = config.model.use_remove_padding
    if not remove_padding:
        raise ValueError(
            f"{where}.ulysses_sequence_parallel_size={size} splits the padding-free packed row; set "
            "use_remove_padding=True"
        )
    return size


def split_micro_batches(
    data: DataProto, use_dynamic_bsz: bool, micro_batch_size: int | None, max_token_len: int | None
) -> tuple[list[DataProto], list[list[int]] | None]:
    """Fixed-size micro-batches (``data.split``) or token-budget ones (``prepare_dynamic_batch``).

    Returns:
        ``(micro_batches, indices)``; ``indices`` is None for fixed sizes (order is kept), else the row indices to
        pass to ``restore_dynamic_batch``.
    """
    if use_dynamic_bsz:
        if not max_token_len:
            raise ValueError("use_dynamic_bsz needs a max token length (ppo_max_token_len_per_gpu / max_token_len)")
        return prepare_dynamic_batch(data, max_token_len=int(max_token_len))
    return data.split(int(micro_batch_size or len(data))), None


def micro_batch_scales(micro_rows: list[int], mini_rows: int, use_dynamic_bsz: bool, global_norm: bool) -> list[float]:
    """What each micro-batch loss is multiplied by before ``backward`` (verl's two paths).

    * Legacy workers (``trainer.use_legacy_worker_impl`` auto/enable, the default): a micro-batch's loss is a
      local mean and is scaled by ``1 / gradient_accumulation``, or by ``rows / mini-batch rows`` with dynamic batch
      sizes (its micro-batches differ in size).
    * Engine path (``use_legacy_worker_impl=disable``, ``global_norm``): the loss already divides by the global
      token (or sequence) count of the mini-batch, so micro-batches are summed unscaled.

    Example: 4 rows in micro-batches of 1 -> ``[0.25] * 4``; dynamic micro-batches of 3 and 1 rows -> ``[0.75, 0.25]``.
    """
    if global_norm:
        return [1.0] * len(micro_rows)
    if use_dynamic_bsz:
        return [rows / mini_rows for rows in micro_rows]
    return [1.0 / len(micro_rows)] * len(micro_rows)


def global_batch_info(
    response_mask: torch.Tensor, global_batch_size: int, loss_scale_factor: float | None, group: Any = None
) -> dict:
    """``global_batch_info`` of one mini-batch on the engine path, as the policy losses read it.

    The valid-token count is summed over the data-parallel ranks (every rank calls this once per mini-batch, so the
    collective lines up); ``global_batch_size`` counts the mini-batch's sequences over all ranks. ``group``: the
    data-parallel process group when it is not the whole world (ranks of one tensor-parallel group share rows).
    """
    tokens = response_mask.sum().detach().to(torch.float64)
    dp_size = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        dp_size = torch.distributed.get_world_size(group)
        device = "cpu" if torch.distributed.get_backend(group) == "gloo" else response_mask.device
        tokens = tokens.to(device)
        torch.distributed.all_reduce(tokens, group=group)
    return {
        "dp_size": dp_size,
        "batch_num_tokens": int(tokens.item()),
        "global_batch_size": int(global_batch_size),
        "loss_scale_factor": loss_scale_factor,
    }


def clip_grad_and_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None
) -> tuple[torch.Tensor, bool]:
    """Clip gradients to ``grad_clip`` (no clipping when None/<=0), then step unless the norm is not finite.

    Returns:
        ``(grad_norm, stepped)``: the pre-clip total norm and whether ``optimizer.step()`` ran.
    """
    max_norm = float(grad_clip) if grad_clip and grad_clip > 0 else float("inf")
    if hasattr(module, "clip_grad_norm_"):  # FSDP1 wrapper: the norm must be reduced across shards
        grad_norm = module.clip_grad_norm_(max_norm=max_norm)
    else:
        params = [p for p in module.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm) if params else torch.tensor(0.0)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    grad_norm = grad_norm.detach().float()
    if not torch.isfinite(grad_norm):
        optimizer.zero_grad()
        return grad_norm, False
    optimizer.step()
    return grad_norm, True


class DataParallelPPOActor(BasePPOActor):
    """PPO actor on one rank; the same class with ``actor_optimizer=None`` is the reference policy.

    Args:
        config: typed ``actor_rollout_ref.actor`` config (``FSDPActorConfig``; a DictConfig or dict is converted).
        actor_module: the causal LM (plain, FSDP1 or FSDP2).
        actor_optimizer: its optimizer; None for a reference policy (``update_policy`` then refuses to run).
        mini_batch_size: sequences per optimizer step on this rank (the worker's ``ppo_mini_batch_size * rollout.n /
            dp``); None reads ``config.ppo_mini_batch_size`` as already per rank, as verl's actor does.
        micro_batch_size: sequences per forward/backward on this rank; None reads
            ``config.ppo_micro_batch_size_per_gpu``.
    """

    def __init__(
        self,
        config: Any,
        actor_module: nn.Module,
        actor_optimizer: torch.optim.Optimizer | None = None,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        sp_group: Any = None,
        dp_group: Any = None,
    ):
        super().__init__(as_actor_config(config))
        self.actor_module = actor_module
        self.actor_optimizer = actor_optimizer
        self.mini_batch_size = self.config.ppo_mini_batch_size if mini_batch_size is None else mini_batch_size
        self.micro_batch_size = (
            self.config.ppo_micro_batch_size_per_gpu if micro_batch_size is None else micro_batch_size
        )
        self.sp_group, self.dp_group = sp_group, dp_group
        self.sp_size = check_sequence_parallel(self.config, sp_group, "actor_rollout_ref.actor")
        self.skipped_steps = 0  # optimizer steps skipped because the gradient norm was not finite
        # {"old_log_probs", "entropys"} (rows in input order) of the last update_policy called without old_log_probs
        self.on_policy_log_probs: dict[str, torch.Tensor] | None = None

    def _entropy(self, logits: torch.Tensor) -> torch.Tensor:
        fn = entropy_from_logits_with_chunking if self.config.entropy_from_logits_with_chunking else entropy_from_logits
        if self.config.entropy_checkpointing and torch.is_grad_enabled():
            # Recompute the (b, R, V) softmax in backward instead of keeping it alive.
            return torch.utils.checkpoint.checkpoint(fn, logits, use_reentrant=False)
        return fn(logits)

    def _forward_micro_batch(
        self,
        micro_batch: DataProto,
        temperature: float,
        calculate_entropy: bool = False,
        sum_pi_squared: bool = False,
        detached_entropy: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Log-probs (and entropy, and sum of squared probabilities) of the response tokens of one micro-batch.

        ``detached_entropy`` adds ``"entropys"`` computed without a graph when ``calculate_entropy`` is off (a
        metric only, as the old-log-prob pass reports it).

        Returns:
            ``{"log_probs": (b, R)}`` plus ``"entropys"`` / ``"sum_pi_squared"`` ``(b, R)`` when asked for.
        """
        responses = micro_batch.batch["responses"]
        response_length = responses.size(-1)
        if self.config.use_remove_padding:
            logits = forward_packed(self.actor_module, micro_batch, response_length, self.sp_group)  # (b, R, V)
        else:
            logits = forward_logits(self.actor_module, micro_batch, logits_to_keep=response_length + 1)  # (b, R+1, V)
            # Position t predicts token t+1, so the response tokens are scored by the R positions before them.
            logits = logits[:, -response_length - 1 : -1, :]  # (b, R, V)
        return self._outputs_from_logits(
            logits, responses, temperature, calculate_entropy, sum_pi_squared, detached_entropy
        )

    def _outputs_from_logits(
        self,
        logits: torch.Tensor,
        responses: torch.Tensor,
        temperature: float,
        calculate_entropy: bool = False,
        sum_pi_squared: bool = False,
        detached_entropy: bool = False,
    ) -> dict[str, torch.Tensor]:
        """What :meth:`_forward_micro_batch` returns, from the ``(b, R, V)`` logits at the positions that predict
        the response tokens (before the temperature)."""
        logits = logits.div(temperature)
        out = {"log_probs": logprobs_from_logits(logits, responses)}
        if calculate_entropy:
            out["entropys"] = self._entropy(logits)
        elif detached_entropy:
            with torch.no_grad():
                out["entropys"] = self._entropy(logits.detach())
        if sum_pi_squared:
            out["sum_pi_squared"] = core_algos.compute_sum_pi_squared_from_logits(logits.detach())
        return out

    def compute_log_prob(self, data: DataProto, calculate_entropy: bool = False) -> dict[str, torch.Tensor | None]:
        """Recompute log p(response) under the current weights, without gradients.

        Args:
            data: batch with ``responses`` ``(bs, R)``, ``input_ids``, ``attention_mask``, ``position_ids``
                ``(bs, P+R)``; meta ``temperature`` (required), ``micro_batch_size``, ``use_dynamic_bsz``,
                ``max_token_len``.
            calculate_entropy: also return the per-token entropy.

        Returns:
            ``{"log_probs": (bs, R), "entropys": (bs, R) or None, "sum_pi_squared": (bs, R) or None}`` (float32,
            input row order); ``sum_pi_squared`` when ``calculate_sum_pi_squared`` is set (optimal-token baseline).
        """
        temperature = _require_meta(data, "temperature", "set it to rollout.temperature before computing log-probs")
        meta = data.meta_info
        keys = ["responses", "input_ids", "attention_mask", "position_ids"]
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        micro_batches, indices = split_micro_batches(
            data, bool(meta.get("use_dynamic_bsz")), meta.get("micro_batch_size"), meta.get("max_token_len")
        )
        want_pi2 = bool(self.config.calculate_sum_pi_squared)
        was_training = self.actor_module.training
        self.actor_module.eval()
        try:
            with torch.no_grad():
                outs = self._forward_micro_batches(micro_batches, temperature, calculate_entropy, want_pi2)
        finally:
            self.actor_module.train(was_training)
        parts: dict[str, list[torch.Tensor]] = {}
        for out in outs:
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float())
        result: dict[str, torch.Tensor | None] = {"log_probs": None, "entropys": None, "sum_pi_squared": None}
        for key, values in parts.items():
            merged = torch.cat(values, dim=0)
            result[key] = restore_dynamic_batch(merged, indices) if indices is not None else merged
        return result

    def _forward_micro_batches(
        self, micro_batches: list[DataProto], temperature: float, calculate_entropy: bool, sum_pi_squared: bool
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`_forward_micro_batch` of each micro-batch, in order (no gradients; the caller holds no_grad)."""
        return [self._forward_micro_batch(m, temperature, calculate_entropy, sum_pi_squared) for m in micro_batches]

    def _select_update_keys(self, data: DataProto) -> DataProto:
        keys = ["responses", "input_ids", "attention_mask", "position_ids", "advantages"]
        if "old_log_probs" in data.batch.keys():
            keys.append("old_log_probs")
        if "response_mask" in data.batch.keys():
            keys.append("response_mask")
        if self.config.use_kl_loss:
            if "ref_log_prob" not in data.batch.keys():
                raise ValueError("use_kl_loss=True needs batch['ref_log_prob'] (enable the reference policy)")
            keys.append("ref_log_prob")
        for optional in ("rollout_is_weights", "rollout_log_probs"):
            if optional in data.batch.keys():
                keys.append(optional)
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = response_mask_of(data.batch)
        return data

    def _micro_batch_loss(
        self,
        micro: DataProto,
        temperature: float,
        on_policy: bool,
        cfg: Any,
        keep: dict[str, list] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        """Policy loss (+ KL loss, - entropy bonus) of one micro-batch.

        ``cfg`` is this mini-batch's view of the actor config: its ``global_batch_info`` (read by the losses) is
        empty on the legacy path (micro-batch-local means) and holds the mini-batch's global counts on the engine
        path (global normalisation). With ``keep`` (on-policy only), the forward's detached log-probs and entropies
        are appended to ``keep["old_log_probs"]`` / ``keep["entropys"]``.

        Returns:
            ``(loss, metrics, parts)``: the differentiable total, per-micro metrics, and the scalar loss parts
            ``pg``, ``kl``, ``entropy`` (for the per-mini-batch sums verl reports).
        """
        calculate_entropy = cfg.entropy_coeff != 0 or cfg.calculate_entropy
        out = self._forward_micro_batch(micro, temperature, calculate_entropy, detached_entropy=keep is not None)
        return self._loss_from_outputs(out, micro, on_policy, cfg, keep)

    def _loss_from_outputs(
        self,
        out: dict[str, torch.Tensor],
        micro: DataProto,
        on_policy: bool,
        cfg: Any,
        keep: dict[str, list] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float], dict[str, float]]:
        """:meth:`_micro_batch_loss` from the micro-batch's forward outputs (``log_probs``, and ``entropys`` when
        computed: see :meth:`_outputs_from_logits`)."""
        batch = micro.batch
        response_mask = batch["response_mask"]
        agg_kwargs = {k: v for k, v in cfg.global_batch_info.items() if v is not None}
        calculate_entropy = cfg.entropy_coeff != 0 or cfg.calculate_entropy
        log_prob = out["log_probs"]
        entropy = out.get("entropys") if calculate_entropy else None
        if keep is not None:
            keep.setdefault("old_log_probs", []).append(log_prob.detach().float())
            keep.setdefault("entropys", []).append(out["entropys"].detach().float())
        # verl's legacy on-policy shortcut: with one mini-batch and one epoch the policy has not moved since the
        # rollout, so the old log-prob is the current one (detached) and the ratio is exactly 1.
        old_log_prob = log_prob.detach() if on_policy else batch["old_log_probs"]
        pg_loss, pg_metrics = core_algos.get_policy_loss_fn(cfg.policy_loss.loss_mode)(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=batch["advantages"],
            response_mask=response_mask,
            loss_agg_mode=cfg.loss_agg_mode,
            config=cfg,
            rollout_is_weights=batch.get("rollout_is_weights", None),
        )
        metrics = {k: float(v) for k, v in (pg_metrics or {}).items()}
        # As upstream's legacy actor (not its engine path): off-policy metrics per micro-batch, current policy vs the
        # rollout's; they replace the trainer's pre-update values of the same names.
        legacy = not cfg.global_batch_info
        if legacy and "rollout_log_probs" in batch.keys() and cfg.policy_loss.loss_mode != "bypass_mode":
            metrics.update(
                rollout_corr_helper.compute_rollout_corr_metrics_from_logprobs(
                    log_prob.detach(), batch["rollout_log_probs"], response_mask
                )
            )
        loss = pg_loss
        parts = {"pg": pg_loss.item(), "kl": 0.0, "entropy": 0.0}
        if entropy is not None:
            entropy_agg = core_algos.agg_loss(entropy, response_mask, cfg.loss_agg_mode, **agg_kwargs)
            metrics["actor/entropy"] = entropy_agg.item()
            parts["entropy"] = entropy_agg.item()
            if cfg.entropy_coeff != 0:
                loss = loss - cfg.entropy_coeff * entropy_agg
        if cfg.use_kl_loss:
            kld = core_algos.kl_penalty(log_prob, batch["ref_log_prob"], cfg.kl_loss_type)
            kl_loss = core_algos.agg_loss(kld, response_mask, cfg.loss_agg_mode, **agg_kwargs)
            loss = loss + cfg.kl_loss_coef * kl_loss
            parts["kl"] = kl_loss.item()
            metrics["actor/kl_coef"] = cfg.kl_loss_coef
        return loss, metrics, parts

    def _backward_micro_batches(
        self,
        micro_batches: list[DataProto],
        scales: list[float],
        temperature: float,
        on_policy: bool,
        cfg: Any,
        keep: dict[str, list] | None,
    ) -> list[tuple[float, dict[str, float], dict[str, float]]]:
        """Forward and backward of each micro-batch of one mini-batch, its loss scaled by ``scales`` (the gradients
        accumulate); returns each one's unscaled ``(loss, metrics, parts)`` as :meth:`_micro_batch_loss` gives them."""
        results = []
        for micro, scale in zip(micro_batches, scales):
            loss, micro_metrics, parts = self._micro_batch_loss(micro, temperature, on_policy, cfg, keep)
            (loss * scale).backward()
            results.append((loss.item(), micro_metrics, parts))
        return results

    def update_policy(self, data: DataProto) -> dict[str, list[float]]:
        """PPO update: ``ppo_epochs`` x mini-batches x micro-batches, one optimizer step per mini-batch.

        Args:
            data: batch with ``responses``, ``input_ids``, ``attention_mask``, ``position_ids``, ``old_log_probs``
                (may be left out for an on-policy update: they are then taken from this forward and left in
                ``self.on_policy_log_probs`` with the entropies), ``advantages`` (``(bs, R)`` float), optional ``response_mask``, ``ref_log_prob`` (needed with
                ``use_kl_loss``), ``rollout_is_weights``, ``rollout_log_probs``; meta ``temperature`` (required) and,
                on the engine path, ``global_batch_size`` (sequences per mini-batch over all ranks).

        Returns:
            Metrics as lists: per micro-batch ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``,
            ``actor/entropy``, ``actor/kl_coef``; ``actor/grad_norm`` per mini-batch. ``actor/pg_loss`` and
            ``actor/kl_loss`` as verl reports them: legacy, one value per rank summed over epochs, mini-batches and
            scaled micro-batches (``kl_loss`` 0 when off); engine path, one per mini-batch summed over its
            micro-batches (the global mini-batch loss once averaged over ranks), ``kl_loss`` only when on and
            ``actor/entropy_loss`` when ``entropy_coeff`` is not 0.
        """
        if self.actor_optimizer is None:
            raise RuntimeError("this actor has no optimizer (reference policy); update_policy cannot run")
        temperature = _require_meta(data, "temperature", "set it to rollout.temperature before update_actor")
        cfg = self.config
        global_batch_size = data.meta_info.get("global_batch_size")
        engine = global_batch_size is not None  # the trainer tags batches so when use_legacy_worker_impl=disable
        data = self._select_update_keys(data)
        mini_batches = data.split(self.mini_batch_size)
        on_policy = not engine and len(mini_batches) == 1 and cfg.ppo_epochs == 1
        # No old_log_probs: the trainer skipped recomputing them (on-policy, see RayPPOTrainer); this forward's
        # detached log-probs are those values, and are handed back through ``on_policy_log_probs``.
        keep: dict[str, list] | None = None
        self.on_policy_log_probs = None
        if "old_log_probs" not in data.batch.keys():
            if not on_policy:
                raise ValueError(
                    "batch['old_log_probs'] is missing: it may only be skipped for an on-policy update (legacy worker "
                    f"path, one mini-batch, ppo_epochs=1); here ppo_epochs={cfg.ppo_epochs}, "
                    f"{len(mini_batches)} mini-batches, engine path={engine}"
                )
            keep = {}
        metrics: dict[str, list[float]] = {}
        totals = {"pg": 0.0, "kl": 0.0}
        self.actor_module.train()
        for _ in range(cfg.ppo_epochs):
            for mini in mini_batches:
                # with Ulysses a rank holds 1/sp of each micro-batch's tokens: the token budget covers the group
                max_tokens = cfg.ppo_max_token_len_per_gpu * self.sp_size
                micro_batches, order = split_micro_batches(mini, cfg.use_dynamic_bsz, self.micro_batch_size, max_tokens)
                view = cfg  # the legacy path: no global counts, micro-batch-local means
                if engine:
                    info = global_batch_info(
                        mini.batch["response_mask"],
                        global_batch_size,
                        cfg.loss_scale_factor,
                        self.dp_group
                        if self.dp_group is not None
                        else getattr(self.actor_module, "data_parallel_group", None),
                    )
                    view = dataclasses.replace(cfg, global_batch_info=info)
                scales = micro_batch_scales([len(m) for m in micro_batches], len(mini), cfg.use_dynamic_bsz, engine)
                self.actor_optimizer.zero_grad()
                mini_sums = {"pg": 0.0, "kl": 0.0, "entropy": 0.0, "loss": 0.0}
                results = self._backward_micro_batches(micro_batches, scales, temperature, on_policy, view, keep)
                for (loss, micro_metrics, parts), scale in zip(results, scales):
                    for key in ("pg", "kl", "entropy"):
                        mini_sums[key] += parts[key] * scale
                    mini_sums["loss"] += loss * scale
                    append_to_dict(metrics, micro_metrics)
                # verl's legacy workers clip with actor.grad_clip, its engine path with actor.optim.clip_grad
                clip = cfg.optim.clip_grad if engine else cfg.grad_clip
                grad_norm, stepped = clip_grad_and_step(self.actor_module, self.actor_optimizer, clip)
                if not stepped:
                    self.skipped_steps += 1
                    logger.warning("actor grad norm is %s; optimizer step skipped", grad_norm.item())
                append_to_dict(metrics, {"actor/grad_norm": grad_norm.item()})
                if engine:
                    append_to_dict(metrics, {"actor/pg_loss": mini_sums["pg"], "actor/loss": mini_sums["loss"]})
                    if cfg.use_kl_loss:
                        append_to_dict(metrics, {"actor/kl_loss": mini_sums["kl"]})
                    if cfg.entropy_coeff != 0:
                        append_to_dict(metrics, {"actor/entropy_loss": mini_sums["entropy"]})
                else:
                    totals["pg"] += mini_sums["pg"]
                    totals["kl"] += mini_sums["kl"]
        if not engine:
            append_to_dict(metrics, {"actor/pg_loss": totals["pg"], "actor/kl_loss": totals["kl"]})
        if keep is not None:  # one mini-batch, one epoch: ``order`` is that mini-batch's micro-batch split
            merged = {key: torch.cat(values, dim=0) for key, values in keep.items()}
            if order is not None:
                merged = {key: restore_dynamic_batch(value, order) for key, value in merged.items()}
            self.on_policy_log_probs = merged
        self.actor_optimizer.zero_grad()
        return metrics
