"""Rollout correction: importance weights and rejection sampling between the rollout and training policies.

The rollout engine (vLLM, SGLang, ...) samples from pi_rollout, which differs numerically from the trainer's
pi_train (kernels, precision, stale weights). With ``lambda = log pi_train - log pi_rollout`` per token, this module
offers two remedies, configured by ``algorithm.rollout_correction`` (:class:`RolloutCorrectionConfig`):

* **Importance sampling** (``rollout_is``): token weights ``exp(lambda_t)`` or sequence weights
  ``exp(sum_t lambda_t)``, truncated above at ``rollout_is_threshold`` and optionally rescaled to mean 1.
* **Rejection sampling** (``rollout_rs``): drop tokens or whole rows whose divergence statistic (k1 = -lambda,
  k2 = lambda^2 / 2, k3 = e^lambda - 1 - lambda; summed, averaged or maxed over the row for ``seq_*`` options)
  leaves its bounds. The result is a new ``response_mask``.

Two ways to use it:

* **Decoupled** (3 policies): the driver calls :func:`compute_rollout_correction_and_add_to_batch` once per step,
  after ``old_log_probs`` is recomputed; it overwrites ``response_mask`` and adds ``rollout_is_weights``.
* **Bypass** (2 policies): :func:`apply_bypass_mode` sets ``old_log_probs := rollout_log_probs`` and the actor uses
  the ``bypass_mode`` policy loss, which recomputes the weights and the mask per micro-batch from the current
  log-probs (``loss_type`` ``ppo_clip`` or ``reinforce``).

Every metric is prefixed ``rollout_corr/``. Choices this module makes where the reference leaves room: the IS
weights are computed on the incoming mask (rejected tokens keep their weight but leave the mask); IS summary metrics
range over valid tokens (token level) or non-empty rows (sequence level), the same sets the batch normalisation
averages over; ``rollout_is_batch_norm_factor`` is the mean that was divided out.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from verl.trainer.config.algorithm import ROLLOUT_RS_OPTIONS, RolloutCorrectionConfig, parse_rollout_rs
from verl.trainer.ppo.core import (
    _agg_kwargs,
    actor_config,
    agg_loss,
    compute_policy_loss_vanilla,
    register_policy_loss,
)
from verl.utils import torch_functional as verl_F
from verl.utils.config import as_config
from verl.workers.config.actor import ActorConfig

if TYPE_CHECKING:  # verl.protocol pulls in tensordict, which core_algos (importing this module) must not
    from verl.protocol import DataProto

# verl's name of the option list.
SUPPORTED_ROLLOUT_RS_OPTIONS = ROLLOUT_RS_OPTIONS

__all__ = [
    "ROLLOUT_RS_OPTIONS",
    "SUPPORTED_ROLLOUT_RS_OPTIONS",
    "compute_offpolicy_metrics",
    "apply_bypass_mode",
    "compute_policy_loss_bypass_mode",
    "compute_rollout_correction_and_add_to_batch",
    "compute_rollout_correction_and_rejection_mask",
    "compute_rollout_corr_metrics_from_logprobs",
    "compute_rollout_is_weights",
    "compute_rollout_rejection_mask",
    "parse_rollout_rs",
]

SAFETY_BOUND = 20.0
"""Log-ratios (and sequence log-ratio sums) are clamped to +-20 before exp() so a stale policy cannot overflow."""

_PREFIX = "rollout_corr/"


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------------


def _floats(metrics: dict[str, torch.Tensor | float], prefix: str = _PREFIX) -> dict[str, float]:
    """Tensors -> floats with one device sync, keys prefixed ``rollout_corr/``."""
    keys = list(metrics)
    values = [torch.as_tensor(metrics[k], dtype=torch.float64).detach().cpu() for k in keys]
    return {prefix + k: v for k, v in zip(keys, torch.stack(values).tolist())} if keys else {}


def _summary(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mean, population std, max, min)`` of a 1-D tensor; all zeros when it is empty."""
    if values.numel() == 0:
        zero = values.new_zeros(())
        return zero, zero, zero, zero
    mean = values.mean()
    std = (values - mean).square().mean().sqrt()
    return mean, std, values.max(), values.min()


def _global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a 1-D tensor over every rank (all-reduce of sum and count) when torch.distributed is initialised."""
    total = torch.stack([values.sum(), values.new_tensor(float(values.numel()))])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total[0] / total[1].clamp(min=1.0)


# ---------------------------------------------------------------------------------------------------------------------
# importance sampling
# ---------------------------------------------------------------------------------------------------------------------


def compute_rollout_is_weights(
    log_ratio: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is: str = "token",
    rollout_is_threshold: float = RolloutCorrectionConfig.rollout_is_threshold,
    rollout_is_batch_normalize: bool = RolloutCorrectionConfig.rollout_is_batch_normalize,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights ``pi_train / pi_rollout``.

    Token level: ``w_t = exp(clamp(lambda_t))``. Sequence level: ``w = exp(clamp(sum_t m_t lambda_t))`` broadcast
    over the row. Weights are multiplied by the mask, summarised (metrics use these pre-truncation weights),
    truncated with ``min(w, threshold)`` and detached. With ``rollout_is_batch_normalize`` they are then divided by
    their mean over valid tokens (token level) or non-empty rows (sequence level), taken over all ranks when
    torch.distributed is initialised, if that mean exceeds 1e-8.

    Args:
        log_ratio: ``(bs, response_length)`` ``log pi_train - log pi_rollout`` (unclamped).
        response_mask: ``(bs, response_length)`` 1 on valid tokens.
        rollout_is: ``"token"`` or ``"sequence"``.
        rollout_is_threshold: upper truncation bound (> 0); ``1/threshold`` is the "low" bound of the metrics.
        rollout_is_batch_normalize: rescale the truncated weights to mean 1.

    Returns:
        ``rollout_is_weights (bs, response_length)`` (0 outside the mask, no grad) and ``rollout_corr/rollout_is_*``
        metrics.
    """
    if rollout_is not in ("token", "sequence"):
        raise ValueError(f"algorithm.rollout_correction.rollout_is={rollout_is!r} is not valid; use token or sequence")
    mask = response_mask.bool()
    log_ratio = log_ratio.detach().float()  # fp32 weights even from bf16 log-probs (exact batch counts too)
    thr = float(rollout_is_threshold)
    if rollout_is == "token":
        log_w = torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND)
        weights = torch.exp(log_w) * mask
        entries_log = log_w[mask]  # (n_valid,) what the summary ranges over
    else:
        row_log = torch.clamp(verl_F.masked_sum(log_ratio, mask, axis=-1), -SAFETY_BOUND, SAFETY_BOUND)  # (bs,)
        weights = torch.exp(row_log).unsqueeze(-1) * mask
        entries_log = row_log[mask.any(dim=-1)]  # (n_nonempty,)
    entries = torch.exp(entries_log)
    metrics = _is_metrics(entries, entries_log, weights, mask, thr)

    weights = torch.clamp(weights, max=thr).detach()
    if rollout_is_batch_normalize:
        kept = weights[mask] if rollout_is == "token" else weights.amax(dim=-1)[mask.any(dim=-1)]
        batch_mean = _global_mean(kept)
        if batch_mean > 1e-8:
            weights = weights / batch_mean
        metrics["rollout_is_batch_norm_factor"] = batch_mean
    return weights, _floats(metrics)


def _is_metrics(
    entries: torch.Tensor, entries_log: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor, thr: float
) -> dict[str, torch.Tensor]:
    """Summary of pre-truncation weights: ``entries`` are per token or per row, ``weights`` is ``(bs, T)``."""
    mean, _, w_max, w_min = _summary(entries)
    # std and effective sample size use weights clamped to [1/thr, thr], so one outlier does not dominate.
    safe = torch.clamp(entries, 1.0 / thr, thr)
    _, std, _, _ = _summary(safe)
    ess = 1.0 / (safe / safe.mean()).square().mean() if safe.numel() else safe.new_zeros(())
    nonempty = mask.any(dim=-1)
    row_means = verl_F.masked_mean(weights, mask, axis=-1)[nonempty]  # (n_nonempty,)
    seq_mean, seq_std, seq_max, seq_min = _summary(row_means)
    fraction = (lambda x: x.float().mean()) if entries.numel() else (lambda x: entries.new_zeros(()))
    row_fraction = (lambda x: x.float().mean()) if row_means.numel() else (lambda x: row_means.new_zeros(()))
    return {
        "rollout_is_mean": mean,
        "rollout_is_max": w_max,
        "rollout_is_min": w_min,
        "rollout_is_std": std,
        "rollout_is_eff_sample_size": ess,
        "rollout_is_ratio_fraction_high": fraction(entries_log > math.log(thr)),
        "rollout_is_ratio_fraction_low": fraction(entries_log < -math.log(thr)),
        "rollout_is_seq_mean": seq_mean,
        "rollout_is_seq_std": seq_std,
        "rollout_is_seq_max": seq_max,
        "rollout_is_seq_min": seq_min,
        "rollout_is_seq_max_deviation": (row_means - 1.0).abs().max() if row_means.numel() else seq_max,
        "rollout_is_seq_fraction_high": row_fraction(row_means > thr),
        "rollout_is_seq_fraction_low": row_fraction(row_means < 1.0 / thr),
    }


# ---------------------------------------------------------------------------------------------------------------------
# rejection sampling
# ---------------------------------------------------------------------------------------------------------------------


def _rs_statistic(log_ratio: torch.Tensor, mask: torch.Tensor, option: str) -> torch.Tensor:
    """Token statistic ``(bs, T)`` for ``token_*`` options, row statistic ``(bs,)`` for ``seq_*`` options."""
    level, estimator = option.rsplit("_", 1)
    if estimator == "k1":
        stat = -log_ratio  # log(pi_rollout / pi_train)
    elif estimator == "k2":
        stat = 0.5 * log_ratio.square()
    else:
        stat = torch.expm1(log_ratio) - log_ratio
    if level == "token":
        return stat
    if level == "seq_sum":
        return verl_F.masked_sum(stat, mask, axis=-1)
    if level == "seq_mean":
        return verl_F.masked_mean(stat, mask, axis=-1)
    return torch.where(mask, stat, torch.zeros_like(stat)).amax(dim=-1)  # seq_max: k2/k3 are >= 0


def _rs_option_metrics(
    name: str, stat: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor, lo: float, hi: float
) -> dict[str, torch.Tensor]:
    """Per-option metrics; ``lo``/``hi`` are bounds on the statistic (``lo = -inf`` for k2/k3)."""
    nonempty = mask.any(dim=-1)
    if stat.dim() == 2:
        entries, rows = stat[mask], verl_F.masked_mean(stat, mask, axis=-1)[nonempty]
    else:
        entries = rows = stat[nonempty]
    mean, std, s_max, s_min = _summary(entries)
    seq_mean, seq_std, seq_max, seq_min = _summary(rows)
    frac = (lambda x: x.float().mean()) if entries.numel() else (lambda x: entries.new_zeros(()))
    kept = mask & keep
    out = {
        "mean": mean,
        "max": s_max,
        "min": s_min,
        "fraction_high": frac(entries > hi),
        "fraction_low": frac(entries < lo),
        "std": std,
        "seq_mean": seq_mean,
        "seq_std": seq_std,
        "seq_max": seq_max,
        "seq_min": seq_min,
        "seq_max_deviation": rows.abs().max() if rows.numel() else seq_max,  # every statistic is 0 on-policy
        "seq_fraction_high": frac(rows > hi),
        "masked_fraction": 1.0 - kept.sum() / mask.sum().clamp(min=1),
        "seq_masked_fraction": frac((kept != mask).any(dim=-1)[nonempty]),
    }
    if name.endswith("k1"):
        out["seq_fraction_low"] = frac(rows < lo)
    return {f"rollout_rs_{name}_{k}": v for k, v in out.items()}


def compute_rollout_rejection_mask(
    log_ratio: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_rs: str,
    rollout_rs_threshold: str | float,
    rollout_rs_threshold_lower: float | None = None,
    rollout_token_veto_threshold: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mask out tokens/rows whose divergence statistic leaves its bounds (all options combined with AND).

    k1 options keep ``ln lo <= k1 <= ln up`` with ``k1 = -lambda``, i.e. ``1/up <= pi_train/pi_rollout <= 1/lo``;
    k2/k3 options keep ``stat <= up``. ``token_*`` options reject single tokens, ``seq_*`` options whole rows. The
    0.6-era veto rejects a row when any valid token has ``pi_train/pi_rollout < rollout_token_veto_threshold``.

    Args:
        log_ratio: ``(bs, response_length)`` ``log pi_train - log pi_rollout`` (clamped to +-20 here).
        response_mask: ``(bs, response_length)``.
        rollout_rs: comma list of options, see :func:`parse_rollout_rs`.
        rollout_rs_threshold: number or string of bounds, see :func:`parse_rollout_rs`.
        rollout_rs_threshold_lower: 0.6-era lower bound of k1 options.
        rollout_token_veto_threshold: 0.6-era per-token veto ratio (> 0), or ``None``.

    Returns:
        ``response_mask * keep`` ``(bs, response_length)`` in the mask's dtype and the ``rollout_rs_*`` metrics.
    """
    options = parse_rollout_rs(rollout_rs, rollout_rs_threshold, rollout_rs_threshold_lower)
    mask = response_mask.bool()
    log_ratio = torch.clamp(log_ratio.detach(), -SAFETY_BOUND, SAFETY_BOUND)
    keep_all = torch.ones_like(mask)
    metrics: dict[str, torch.Tensor] = {}
    for name, lower, upper in options:
        stat = _rs_statistic(log_ratio, mask, name)
        lo, hi = (-math.inf, upper) if lower is None else (math.log(lower), math.log(upper))
        keep = (stat >= lo) & (stat <= hi)
        keep = keep if keep.dim() == 2 else keep.unsqueeze(-1).expand_as(mask)
        metrics.update(_rs_option_metrics(name, stat, keep, mask, lo, hi))
        keep_all &= keep
    if rollout_token_veto_threshold is not None:
        vetoed = ((log_ratio < math.log(rollout_token_veto_threshold)) & mask).any(dim=-1, keepdim=True)
        metrics["rollout_rs_veto_fraction"] = vetoed.float().mean()
        keep_all &= ~vetoed
    new_mask = response_mask * keep_all.to(response_mask.dtype)
    kept = mask & keep_all
    metrics["rollout_rs_masked_fraction"] = 1.0 - kept.sum() / mask.sum().clamp(min=1)
    metrics["rollout_rs_seq_masked_fraction"] = (kept != mask).any(dim=-1).float().mean()  # over all rows
    return new_mask, _floats(metrics)


# ---------------------------------------------------------------------------------------------------------------------
# both together, and the off-policy diagnostics
# ---------------------------------------------------------------------------------------------------------------------


def compute_rollout_correction_and_rejection_mask(
    old_log_prob: torch.Tensor,
    rollout_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is: str | None = None,
    rollout_is_threshold: float = RolloutCorrectionConfig.rollout_is_threshold,
    rollout_rs: str | None = None,
    rollout_rs_threshold: str | float | None = None,
    rollout_is_batch_normalize: bool = RolloutCorrectionConfig.rollout_is_batch_normalize,
    rollout_rs_threshold_lower: float | None = None,
    rollout_token_veto_threshold: float | None = None,
) -> tuple[Any, torch.Tensor, dict[str, float]]:
    """IS weights and rejection mask from the training and rollout log-probs (no gradient flows), as verl returns
    them: the weights in a ``DataProto`` (``batch["rollout_is_weights"]``), the mask, and every metric.

    Args:
        old_log_prob: ``(bs, response_length)`` log pi_train (in bypass mode: the current log-probs, detached).
        rollout_log_prob: ``(bs, response_length)`` log pi_rollout.
        response_mask: ``(bs, response_length)``.
        rollout_is .. rollout_token_veto_threshold: the ``algorithm.rollout_correction`` keys of the same name.

    Returns:
        a ``DataProto`` holding ``rollout_is_weights (bs, T)`` (``None`` when ``rollout_is`` is off), the (possibly)
        rejected ``response_mask (bs, T)``, and the IS, RS and off-policy metrics (``rollout_corr/*``; the
        off-policy ones on the incoming mask, also when nothing is corrected).
    """
    weights, new_mask, metrics = _correction_and_mask(
        old_log_prob,
        rollout_log_prob,
        response_mask,
        rollout_is,
        rollout_is_threshold,
        rollout_rs,
        rollout_rs_threshold,
        rollout_is_batch_normalize,
        rollout_rs_threshold_lower,
        rollout_token_veto_threshold,
    )
    metrics.update(compute_rollout_corr_metrics_from_logprobs(old_log_prob, rollout_log_prob, response_mask))
    if weights is None:
        return None, new_mask, metrics
    from verl.protocol import DataProto  # tensordict: imported on first use, the maths import without it

    return DataProto.from_dict(tensors={"rollout_is_weights": weights}), new_mask, metrics


def _correction_and_mask(
    old_log_prob: torch.Tensor,
    rollout_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is: str | None,
    rollout_is_threshold: float,
    rollout_rs: str | None,
    rollout_rs_threshold: str | float | None,
    rollout_is_batch_normalize: bool,
    rollout_rs_threshold_lower: float | None,
    rollout_token_veto_threshold: float | None,
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, float]]:
    """The weights tensor (or None), the rejected mask and the IS/RS metrics."""
    log_ratio = (old_log_prob - rollout_log_prob).detach()
    metrics: dict[str, float] = {}
    new_mask = response_mask
    if rollout_rs or rollout_token_veto_threshold is not None:
        new_mask, rs_metrics = compute_rollout_rejection_mask(
            log_ratio,
            response_mask,
            rollout_rs,
            rollout_rs_threshold,
            rollout_rs_threshold_lower,
            rollout_token_veto_threshold,
        )
        metrics.update(rs_metrics)
    weights = None
    if rollout_is is not None:
        weights, is_metrics = compute_rollout_is_weights(
            log_ratio, response_mask, rollout_is, rollout_is_threshold, rollout_is_batch_normalize
        )
        metrics.update(is_metrics)
    return weights, new_mask, metrics


def compute_rollout_corr_metrics_from_logprobs(
    log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor
) -> dict[str, float]:
    """:func:`compute_offpolicy_metrics`, each name prefixed ``rollout_corr/`` (how the trainer logs them)."""
    metrics = compute_offpolicy_metrics(log_prob, rollout_log_prob, response_mask)
    return {f"{_PREFIX}{key}": value for key, value in metrics.items()}


def compute_offpolicy_metrics(
    old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor | None, response_mask: torch.Tensor
) -> dict[str, float]:
    """Off-policy diagnostics of pi_train (``old_log_prob``) against pi_rollout (unprefixed names, as verl's).

    Per non-empty row i, ``log_ppl_i = -mean_t log p``; ``training_*``/``rollout_*`` average ``log_ppl_i`` and
    ``exp(log_ppl_i)`` over rows; ``log_ppl_diff`` averages ``train_log_ppl_i - rollout_log_ppl_i`` (its abs, max,
    min likewise) and ``ppl_ratio`` its exp. Token means: ``kl = mean(log p_roll - log p_train)``,
    ``k3_kl = mean(rho - 1 - log rho)``, ``chi2_token = mean(rho^2) - 1`` with ``rho = exp(clamp(lambda))``;
    ``chi2_seq = mean_i exp(2 clamp(sum_t lambda)) - 1``.

    Args:
        old_log_prob: ``(bs, response_length)`` training log-probs.
        rollout_log_prob: ``(bs, response_length)`` rollout log-probs, or None (then only ``training_*``).
        response_mask: ``(bs, response_length)``.

    Returns:
        ``{training_ppl, training_log_ppl, kl, k3_kl, rollout_ppl, rollout_log_ppl, log_ppl_diff, log_ppl_abs_diff,
        log_ppl_diff_max, log_ppl_diff_min, ppl_ratio, chi2_token, chi2_seq}``.
    """
    mask = response_mask.bool()
    log_prob = old_log_prob.detach().float()
    nonempty = mask.any(dim=-1)
    train_log_ppl = -verl_F.masked_mean(log_prob, mask, axis=-1)[nonempty]  # (n_nonempty,)
    if rollout_log_prob is None:
        row_mean = (lambda x: x.mean()) if train_log_ppl.numel() else (lambda x: train_log_ppl.new_zeros(()))
        return _floats(
            {"training_ppl": row_mean(torch.exp(train_log_ppl)), "training_log_ppl": row_mean(train_log_ppl)}, ""
        )
    rollout_log_prob = rollout_log_prob.detach().float()
    roll_log_ppl = -verl_F.masked_mean(rollout_log_prob, mask, axis=-1)[nonempty]
    diff = train_log_ppl - roll_log_ppl
    log_ratio = torch.clamp(log_prob - rollout_log_prob, -SAFETY_BOUND, SAFETY_BOUND)
    rho = torch.exp(log_ratio)
    seq_log = torch.clamp(verl_F.masked_sum(log_prob - rollout_log_prob, mask, axis=-1), -SAFETY_BOUND, SAFETY_BOUND)
    row_mean = (lambda x: x.mean()) if diff.numel() else (lambda x: diff.new_zeros(()))
    _, _, diff_max, diff_min = _summary(diff)
    metrics = {
        "training_ppl": row_mean(torch.exp(train_log_ppl)),
        "training_log_ppl": row_mean(train_log_ppl),
        "kl": verl_F.masked_mean(rollout_log_prob - log_prob, mask),
        "k3_kl": verl_F.masked_mean(rho - 1.0 - log_ratio, mask),
        "rollout_ppl": row_mean(torch.exp(roll_log_ppl)),
        "rollout_log_ppl": row_mean(roll_log_ppl),
        "log_ppl_diff": row_mean(diff),
        "log_ppl_abs_diff": row_mean(diff.abs()),
        "log_ppl_diff_max": diff_max,
        "log_ppl_diff_min": diff_min,
        "ppl_ratio": row_mean(torch.exp(diff)),
        "chi2_token": verl_F.masked_mean(rho.square(), mask) - 1.0,
        "chi2_seq": row_mean(torch.exp(2.0 * seq_log[nonempty])) - 1.0,
    }
    return _floats(metrics, "")


# ---------------------------------------------------------------------------------------------------------------------
# trainer-facing entry points
# ---------------------------------------------------------------------------------------------------------------------


def _as_config(rollout_corr_config: Any) -> RolloutCorrectionConfig:
    """A validated :class:`RolloutCorrectionConfig` from a dataclass, DictConfig, dict or ``None`` (defaults)."""
    return as_config(rollout_corr_config, RolloutCorrectionConfig)


def _correction_kwargs(cfg: RolloutCorrectionConfig) -> dict[str, Any]:
    keys = ("rollout_is", "rollout_is_threshold", "rollout_rs", "rollout_rs_threshold", "rollout_is_batch_normalize")
    kwargs = {k: getattr(cfg, k) for k in keys}
    kwargs["rollout_rs_threshold_lower"] = cfg.rollout_rs_threshold_lower
    kwargs["rollout_token_veto_threshold"] = cfg.rollout_token_veto_threshold
    return kwargs


def compute_rollout_correction_and_add_to_batch(
    batch: DataProto, rollout_corr_config: Any
) -> tuple[DataProto, dict[str, float]]:
    """Decoupled mode, on the driver after ``old_log_probs``: rejection-sample the mask and add IS weights.

    Overwrites ``batch.batch["response_mask"]`` with the rejected mask (seen by advantages, critic and actor) and,
    when ``rollout_is`` is set, adds ``batch.batch["rollout_is_weights"]`` ``(bs, response_length)``. The
    off-policy metrics of :func:`compute_rollout_corr_metrics_from_logprobs` (on the incoming mask) are always
    returned.

    Args:
        batch: holds ``old_log_probs``, ``rollout_log_probs`` and ``response_mask``, each ``(bs, response_length)``.
        rollout_corr_config: the ``algorithm.rollout_correction`` node (DictConfig, dict or dataclass).

    Returns:
        the same ``batch`` (edited in place) and ``rollout_corr/*`` metrics.
    """
    cfg = _as_config(rollout_corr_config)
    missing = [k for k in ("old_log_probs", "rollout_log_probs", "response_mask") if k not in batch.batch.keys()]
    if missing:
        raise ValueError(
            f"rollout correction needs {missing} in the batch; set actor_rollout_ref.rollout.calculate_log_probs=True"
            " (rollout_log_probs) and run it after the old_log_prob pass"
        )
    old, rollout, mask = (batch.batch[k] for k in ("old_log_probs", "rollout_log_probs", "response_mask"))
    weights, new_mask, metrics = _correction_and_mask(old, rollout, mask, **_correction_kwargs(cfg))
    metrics.update(compute_rollout_corr_metrics_from_logprobs(old, rollout, mask))
    batch.batch["response_mask"] = new_mask
    if weights is not None:
        batch.batch["rollout_is_weights"] = weights
    return batch, metrics


def apply_bypass_mode(batch: DataProto, rollout_corr_config: Any = None) -> DataProto:
    """Bypass mode: use the rollout policy as the PPO "old" policy (``old_log_probs := rollout_log_probs``).

    The trainer then skips the old-log-prob pass and must run the actor with
    ``actor.policy_loss.loss_mode=bypass_mode`` and ``actor.policy_loss.rollout_correction`` set to this config.

    Args:
        batch: holds ``rollout_log_probs`` ``(bs, response_length)``; edited in place.
        rollout_corr_config: the ``algorithm.rollout_correction`` node, validated here.

    Returns:
        the same ``batch``.
    """
    _as_config(rollout_corr_config)
    if batch.batch is None or "rollout_log_probs" not in batch.batch.keys():
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=True needs rollout_log_probs in the batch; set "
            "actor_rollout_ref.rollout.calculate_log_probs=True"
        )
    batch.batch["old_log_probs"] = batch.batch["rollout_log_probs"].clone()
    return batch


@register_policy_loss("bypass_mode")
def compute_policy_loss_bypass_mode(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Bypass-mode policy loss: ``old_log_prob`` is pi_rollout; correction is recomputed per micro-batch.

    Reads ``config.policy_loss.rollout_correction`` (dataclass defaults when missing). Under no-grad it computes the
    IS weights ``w`` and the rejection mask from ``(log_prob.detach(), old_log_prob)``. ``loss_type=ppo_clip``: the
    vanilla PPO loss (no ``w``) on the rejection mask. ``loss_type=reinforce``: ``-A * log_prob * w`` on the
    rejection mask (``w = 1`` when ``rollout_is`` is off), aggregated by ``loss_agg_mode`` with the actor's
    global-batch information, so rejected tokens stay in a global denominator when one is given.

    Args:
        old_log_prob: ``(bs, response_length)`` rollout log-probs.
        log_prob: ``(bs, response_length)`` current log-probs (with grad).
        advantages: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        loss_agg_mode: see :func:`verl.trainer.ppo.core_algos.agg_loss`.
        config: actor config.
        rollout_is_weights: ignored; the weights are recomputed from the current policy.

    Returns:
        scalar ``pg_loss``; metrics: vanilla's three (``ppo_clip``) or ``actor/ppo_kl`` (``reinforce``), plus the
        ``rollout_corr/*`` IS, RS and off-policy metrics.
    """
    cfg = _as_config(actor_config(config).policy_loss.rollout_correction)
    with torch.no_grad():
        weights, rs_mask, metrics = _correction_and_mask(
            log_prob.detach(), old_log_prob, response_mask, **_correction_kwargs(cfg)
        )
        metrics.update(compute_rollout_corr_metrics_from_logprobs(log_prob, old_log_prob, response_mask))
    if cfg.loss_type == "ppo_clip":
        pg_loss, pg_metrics = compute_policy_loss_vanilla(
            old_log_prob, log_prob, advantages, rs_mask, loss_agg_mode, config, rollout_is_weights=None
        )
    else:
        pg_losses = -advantages * log_prob
        if weights is not None:
            pg_losses = pg_losses * weights
        pg_loss = agg_loss(pg_losses, rs_mask, loss_agg_mode, **_agg_kwargs(config))
        ppo_kl = verl_F.masked_mean(old_log_prob - log_prob.detach(), rs_mask)
        pg_metrics = {"actor/ppo_kl": float(ppo_kl)}
    return pg_loss, {**pg_metrics, **metrics}
