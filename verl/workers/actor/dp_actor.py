"""Single-process PPO actor over a (possibly FSDP-wrapped) Hugging Face causal LM.

``DataParallelPPOActor`` does the per-rank compute of a PPO/GRPO step; the FSDP worker moves data and calls it:

* ``compute_log_prob``: no-grad forward, log p(response token) at the rollout temperature (``old_log_probs`` for
  the actor, ``ref_log_prob`` for the reference policy, which is the same class without an optimizer);
* ``update_policy``: ``ppo_epochs`` x mini-batches x micro-batches of policy loss (+ KL loss, - entropy bonus),
  gradient accumulation over micro-batches, one clipped optimizer step per mini-batch.

Batch sizes here are per rank: the caller (the FSDP worker) has already multiplied ``ppo_mini_batch_size`` by
``rollout.n`` and divided it by the data-parallel size.

Deviations from upstream, on purpose:

* Only the padded forward exists. ``use_remove_padding`` is accepted and ignored (same numbers, more FLOPs); there
  is no Ulysses sequence parallelism and no fused kernels.
* Micro-batch losses are weighted by their share of the mini-batch (tokens for ``token-mean``, rows for the
  ``seq-*`` modes), so the accumulated gradient equals the mini-batch loss's gradient whatever the micro-batch size.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
from verl.utils.py_functional import append_to_dict, cfg_get
from verl.utils.seqlen_balancing import prepare_dynamic_batch, restore_dynamic_batch
from verl.utils.torch_functional import entropy_from_logits, entropy_from_logits_with_chunking, logprobs_from_logits
from verl.workers.actor.base import BasePPOActor

logger = logging.getLogger(__name__)

__all__ = [
    "DataParallelPPOActor",
    "cfg_get",
    "forward_logits",
    "split_micro_batches",
    "micro_batch_weight",
    "clip_grad_and_step",
]


def _require_meta(data: DataProto, key: str, hint: str) -> Any:
    if key not in data.meta_info:
        raise ValueError(f"data.meta_info[{key!r}] is missing; {hint}")
    return data.meta_info[key]


def forward_logits(module: nn.Module, micro_batch: DataProto) -> torch.Tensor:
    """Run the model on a padded micro-batch and return its per-position outputs.

    Args:
        module: causal LM (or value model) called as ``module(input_ids=, attention_mask=, position_ids=,
            use_cache=False)``; its output may be a tensor, have ``.logits``, or be a tuple (first item used).
        micro_batch: rows with ``input_ids``, ``attention_mask``, ``position_ids`` ``(b, T)`` (``(b, C, T)`` for
            rope variants) and optional non-tensor ``multi_modal_inputs`` (one dict of tensors per row).

    Returns:
        ``(b, T, V)`` logits (``(b, T, 1)`` or ``(b, T)`` for a value model).
    """
    batch = micro_batch.batch
    extra: dict[str, torch.Tensor] = {}
    mm = (micro_batch.non_tensor_batch or {}).get("multi_modal_inputs")
    if mm is not None:
        # Per-row dicts of vision tensors are concatenated along their first dim, as processors emit them.
        for key in mm[0]:
            extra[key] = torch.cat([row[key] for row in mm], dim=0).to(batch["input_ids"].device)
    output = module(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        **extra,
    )
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


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


def micro_batch_weight(micro_mask: torch.Tensor, mini_mask: torch.Tensor, loss_agg_mode: str) -> float:
    """Share of a micro-batch in its mini-batch loss: valid tokens for ``token-mean``, non-empty rows otherwise.

    Example: token-mean, micro-batch with 3 response tokens of a 12-token mini-batch -> 0.25; summing
    ``0.25 * mean_over_micro`` over micro-batches gives the mean over the whole mini-batch. The ``seq-*`` modes
    average over sequences with at least one valid token, so those are what is counted there.
    """
    if loss_agg_mode == "token-mean":
        return float(micro_mask.sum()) / max(float(mini_mask.sum()), 1.0)
    micro_rows = float((micro_mask.sum(dim=-1) > 0).sum())
    return micro_rows / max(float((mini_mask.sum(dim=-1) > 0).sum()), 1.0)


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
        config: ``actor_rollout_ref.actor`` (or ``.ref``) subtree. Keys read: ``ppo_mini_batch_size`` (per rank,
            already x n), ``ppo_micro_batch_size_per_gpu``, ``use_dynamic_bsz``, ``ppo_max_token_len_per_gpu``,
            ``ppo_epochs``, ``clip_ratio*``, ``policy_loss.loss_mode``, ``loss_agg_mode``, ``entropy_coeff``,
            ``calculate_entropy``, ``use_kl_loss``, ``kl_loss_coef``, ``kl_loss_type``, ``grad_clip``,
            ``entropy_from_logits_with_chunking``, ``entropy_checkpointing``.
        actor_module: the causal LM (plain, FSDP1 or FSDP2).
        actor_optimizer: its optimizer; None for a reference policy (``update_policy`` then refuses to run).
    """

    def __init__(self, config: Any, actor_module: nn.Module, actor_optimizer: torch.optim.Optimizer | None = None):
        super().__init__(config)
        self.actor_module = actor_module
        self.actor_optimizer = actor_optimizer
        if int(cfg_get(config, "ulysses_sequence_parallel_size", 1)) > 1:
            raise ValueError("ulysses_sequence_parallel_size > 1 is not supported; set it to 1")
        if cfg_get(config, "use_remove_padding", False):
            logger.info("use_remove_padding is ignored: this actor always runs the padded forward (same results)")
        self.skipped_steps = 0  # optimizer steps skipped because the gradient norm was not finite

    def _entropy(self, logits: torch.Tensor) -> torch.Tensor:
        fn = entropy_from_logits_with_chunking if cfg_get(self.config, "entropy_from_logits_with_chunking") else None
        fn = fn or entropy_from_logits
        if cfg_get(self.config, "entropy_checkpointing") and torch.is_grad_enabled():
            # Recompute the (b, R, V) softmax in backward instead of keeping it alive.
            return torch.utils.checkpoint.checkpoint(fn, logits, use_reentrant=False)
        return fn(logits)

    def _forward_micro_batch(
        self, micro_batch: DataProto, temperature: float, calculate_entropy: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Log-probs (and entropy) of the response tokens of one micro-batch.

        Returns:
            ``(entropy, log_probs)``, each ``(b, R)``; entropy is None unless asked for.
        """
        responses = micro_batch.batch["responses"]
        response_length = responses.size(-1)
        logits = forward_logits(self.actor_module, micro_batch)  # (b, T, V)
        # Position t predicts token t+1, so the response tokens are scored by the R positions before them.
        logits = logits[:, -response_length - 1 : -1, :].div(temperature)  # (b, R, V)
        log_probs = logprobs_from_logits(logits, responses)
        entropy = self._entropy(logits) if calculate_entropy else None
        return entropy, log_probs

    def compute_log_prob(self, data: DataProto, calculate_entropy: bool = False) -> dict[str, torch.Tensor | None]:
        """Recompute log p(response) under the current weights, without gradients.

        Args:
            data: batch with ``responses`` ``(bs, R)``, ``input_ids``, ``attention_mask``, ``position_ids``
                ``(bs, P+R)``; meta ``temperature`` (required), ``micro_batch_size``, ``use_dynamic_bsz``,
                ``max_token_len``.
            calculate_entropy: also return the per-token entropy.

        Returns:
            ``{"log_probs": (bs, R) float32, "entropys": (bs, R) float32 or None}`` in the input row order.
        """
        temperature = _require_meta(data, "temperature", "set it to rollout.temperature before computing log-probs")
        meta = data.meta_info
        keys = ["responses", "input_ids", "attention_mask", "position_ids"]
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        micro_batches, indices = split_micro_batches(
            data, bool(meta.get("use_dynamic_bsz", False)), meta.get("micro_batch_size"), meta.get("max_token_len")
        )
        was_training = self.actor_module.training
        self.actor_module.eval()
        log_probs, entropys = [], []
        try:
            with torch.no_grad():
                for micro in micro_batches:
                    entropy, lp = self._forward_micro_batch(micro, temperature, calculate_entropy)
                    log_probs.append(lp.float())
                    if calculate_entropy:
                        entropys.append(entropy.float())
        finally:
            self.actor_module.train(was_training)
        log_probs_t = torch.cat(log_probs, dim=0)
        entropys_t = torch.cat(entropys, dim=0) if calculate_entropy else None
        if indices is not None:
            log_probs_t = restore_dynamic_batch(log_probs_t, indices)
            entropys_t = restore_dynamic_batch(entropys_t, indices) if entropys_t is not None else None
        return {"log_probs": log_probs_t, "entropys": entropys_t}

    def _select_update_keys(self, data: DataProto) -> DataProto:
        keys = ["responses", "input_ids", "attention_mask", "position_ids", "old_log_probs", "advantages"]
        if "response_mask" in data.batch.keys():
            keys.append("response_mask")
        if cfg_get(self.config, "use_kl_loss", False):
            if "ref_log_prob" not in data.batch.keys():
                raise ValueError("use_kl_loss=True needs batch['ref_log_prob'] (enable the reference policy)")
            keys.append("ref_log_prob")
        for optional in ("rollout_is_weights", "rollout_log_probs"):
            if optional in data.batch.keys():
                keys.append(optional)
        nt_keys = ["multi_modal_inputs"] if "multi_modal_inputs" in (data.non_tensor_batch or {}) else []
        data = data.select(batch_keys=keys, non_tensor_batch_keys=nt_keys)
        if "response_mask" not in data.batch.keys():
            response_length = data.batch["responses"].size(-1)
            data.batch["response_mask"] = data.batch["attention_mask"][:, -response_length:]
        return data

    def _micro_batch_loss(
        self, micro: DataProto, temperature: float, on_policy: bool
    ) -> tuple[torch.Tensor, dict[str, float], float, float]:
        """Policy loss (+ KL loss, - entropy bonus) of one micro-batch.

        Returns:
            ``(loss, metrics, pg_loss, kl_loss)``: the differentiable total, per-micro metrics, and the two scalar
            loss parts (for accumulation into per-mini-batch values).
        """
        cfg = self.config
        batch = micro.batch
        response_mask = batch["response_mask"]
        loss_agg_mode = cfg_get(cfg, "loss_agg_mode", "token-mean")
        entropy_coeff = float(cfg_get(cfg, "entropy_coeff", 0.0))
        calculate_entropy = entropy_coeff != 0 or bool(cfg_get(cfg, "calculate_entropy", False))
        entropy, log_prob = self._forward_micro_batch(micro, temperature, calculate_entropy)
        # On-policy (one mini-batch, one epoch): the current policy IS the old one; detaching avoids recompute drift.
        old_log_prob = log_prob.detach() if on_policy else batch["old_log_probs"]
        loss_mode = cfg_get(cfg_get(cfg, "policy_loss"), "loss_mode", "vanilla")
        pg_loss, pg_metrics = get_policy_loss_fn(loss_mode)(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=batch["advantages"],
            response_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            config=cfg,
            rollout_is_weights=batch.get("rollout_is_weights", None),
        )
        metrics = {k: float(v) for k, v in (pg_metrics or {}).items()}
        loss = pg_loss
        if entropy is not None:
            entropy_agg = agg_loss(loss_mat=entropy, loss_mask=response_mask, loss_agg_mode=loss_agg_mode)
            metrics["actor/entropy"] = entropy_agg.item()
            if entropy_coeff != 0:
                loss = loss - entropy_coeff * entropy_agg
        kl_value = 0.0
        if cfg_get(cfg, "use_kl_loss", False):
            kl_type = cfg_get(cfg, "kl_loss_type", "low_var_kl")
            kld = kl_penalty(logprob=log_prob, ref_logprob=batch["ref_log_prob"], kl_penalty=kl_type)
            kl_loss = agg_loss(loss_mat=kld, loss_mask=response_mask, loss_agg_mode=loss_agg_mode)
            kl_coef = float(cfg_get(cfg, "kl_loss_coef", 0.001))
            loss = loss + kl_coef * kl_loss
            kl_value = kl_loss.item()
            metrics["actor/kl_coef"] = kl_coef
        return loss, metrics, pg_loss.item(), kl_value

    def update_policy(self, data: DataProto) -> dict[str, list[float]]:
        """PPO update: ``ppo_epochs`` x mini-batches x micro-batches, one optimizer step per mini-batch.

        Args:
            data: batch with ``responses``, ``input_ids``, ``attention_mask``, ``position_ids``, ``old_log_probs``,
                ``advantages`` (``(bs, R)`` float), optional ``response_mask``, ``ref_log_prob`` (needed with
                ``use_kl_loss``), ``rollout_is_weights``; meta ``temperature`` (required).

        Returns:
            Metrics as lists: per micro-batch ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``,
            ``actor/entropy``, ``actor/kl_coef``; per mini-batch ``actor/pg_loss``, ``actor/kl_loss`` (the
            mini-batch loss, accumulated over its micro-batches) and ``actor/grad_norm``.
        """
        if self.actor_optimizer is None:
            raise RuntimeError("this actor has no optimizer (reference policy); update_policy cannot run")
        temperature = _require_meta(data, "temperature", "set it to rollout.temperature before update_actor")
        cfg = self.config
        data = self._select_update_keys(data)
        mini_batches = data.split(int(cfg_get(cfg, "ppo_mini_batch_size", len(data))))
        ppo_epochs = int(cfg_get(cfg, "ppo_epochs", 1))
        on_policy = len(mini_batches) == 1 and ppo_epochs == 1
        use_dynamic_bsz = bool(cfg_get(cfg, "use_dynamic_bsz", False))
        loss_agg_mode = cfg_get(cfg, "loss_agg_mode", "token-mean")
        metrics: dict[str, list[float]] = {}
        self.actor_module.train()
        for _ in range(ppo_epochs):
            for mini in mini_batches:
                micro_batches, _ = split_micro_batches(
                    mini,
                    use_dynamic_bsz,
                    cfg_get(cfg, "ppo_micro_batch_size_per_gpu"),
                    cfg_get(cfg, "ppo_max_token_len_per_gpu"),
                )
                self.actor_optimizer.zero_grad()
                pg_total, kl_total = 0.0, 0.0
                for micro in micro_batches:
                    loss, micro_metrics, pg_value, kl_value = self._micro_batch_loss(micro, temperature, on_policy)
                    weight = micro_batch_weight(
                        micro.batch["response_mask"], mini.batch["response_mask"], loss_agg_mode
                    )
                    (loss * weight).backward()
                    pg_total += pg_value * weight
                    kl_total += kl_value * weight
                    append_to_dict(metrics, micro_metrics)
                grad_norm, stepped = clip_grad_and_step(
                    self.actor_module, self.actor_optimizer, cfg_get(cfg, "grad_clip")
                )
                if not stepped:
                    self.skipped_steps += 1
                    logger.warning("actor grad norm is %s; optimizer step skipped", grad_norm.item())
                append_to_dict(metrics, {"actor/pg_loss": pg_total, "actor/grad_norm": grad_norm.item()})
                if cfg_get(cfg, "use_kl_loss", False):
                    append_to_dict(metrics, {"actor/kl_loss": kl_total})
        self.actor_optimizer.zero_grad()
        return metrics
