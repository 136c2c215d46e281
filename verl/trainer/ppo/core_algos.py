"""The PPO-family maths: advantage estimators, policy losses, loss aggregation, value loss, KL penalties.

Everything here is pure: tensors and scalars in, tensors (and a metrics dict of floats) out. There is no
``DataProto``, no ``torch.distributed`` and no config schema in the maths. Two registries are the plug-in points:

* ``ADV_ESTIMATOR_REGISTRY`` (``register_adv_est`` / ``get_adv_estimator_fn``), keyed by ``AdvantageEstimator``
  values. Estimators return ``(advantages, returns)``, both ``(bs, response_length)``.
* ``POLICY_LOSS_REGISTRY`` (``register_policy_loss`` / ``get_policy_loss_fn``), keyed by
  ``actor.policy_loss.loss_mode``. Losses return ``(pg_loss, metrics)``.

Registered functions accept an optional ``config`` (an OmegaConf ``DictConfig``, a plain dict, or a dataclass);
they unpack it into scalars on their first lines with :func:`_cfg_get`, which understands both ``.get()`` and
attribute access, so the same function serves Hydra configs, typed configs and tests passing dicts.

Conventions: ``response_mask`` is 1 on tokens the policy generated (up to and including EOS) and 0 on padding
and on tool/observation tokens of multi-turn rollouts; ``index`` holds one group id (the prompt ``uid``) per row.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import torch

from verl.utils import torch_functional as verl_F
from verl.utils.groupwise import as_torch_index, group_mean_std
from verl.utils.py_functional import cfg_get

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]

# ---------------------------------------------------------------------------------------------------------------------
# config access and registries
# ---------------------------------------------------------------------------------------------------------------------


def _clip_ratios(config: Any) -> tuple[float, float, float]:
    """``(clip_low, clip_high, clip_ratio_c)`` from an actor config; low/high fall back to ``clip_ratio``."""
    clip_ratio = cfg_get(config, "clip_ratio", 0.2)
    clip_low = cfg_get(config, "clip_ratio_low", None)
    clip_high = cfg_get(config, "clip_ratio_high", None)
    clip_low = clip_ratio if clip_low is None else clip_low
    clip_high = clip_ratio if clip_high is None else clip_high
    return float(clip_low), float(clip_high), float(cfg_get(config, "clip_ratio_c", 3.0))


class AdvantageEstimator(str, Enum):
    """Names accepted by ``algorithm.adv_estimator``."""

    GAE = "gae"
    GRPO = "grpo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"
    REINFORCE_PLUS_PLUS_BASELINE = "reinforce_plus_plus_baseline"
    REMAX = "remax"
    RLOO = "rloo"
    OPO = "opo"
    GRPO_PASSK = "grpo_passk"
    GPG = "gpg"
    RLOO_VECTORIZED = "rloo_vectorized"
    GRPO_VECTORIZED = "grpo_vectorized"
    OPTIMAL_TOKEN_BASELINE = "optimal_token_baseline"
    TIR_OPTIMAL_TOKEN_BASELINE = "tir_optimal_token_baseline"
    GDPO = "gdpo"


ADV_ESTIMATOR_REGISTRY: dict[str, Callable[..., Any]] = {}
POLICY_LOSS_REGISTRY: dict[str, PolicyLossFn] = {}


def _enum_value(name_or_enum: str | Enum) -> str:
    return name_or_enum.value if isinstance(name_or_enum, Enum) else name_or_enum


def register_adv_est(name_or_enum: str | AdvantageEstimator) -> Callable[[Callable], Callable]:
    """Decorator registering an advantage estimator under ``name_or_enum`` (an enum registers its value).

    Re-registering the same function is a no-op; a different function under a taken name raises ``ValueError``.
    """
    name = _enum_value(name_or_enum)

    def decorator(fn: Callable) -> Callable:
        # Looked up through the module global on every call, so tests may swap the registry dict.
        existing = ADV_ESTIMATOR_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"Advantage estimator {name!r} is already registered to {existing!r}; not {fn!r}.")
        ADV_ESTIMATOR_REGISTRY[name] = fn
        return fn

    return decorator


def get_adv_estimator_fn(name_or_enum: str | AdvantageEstimator) -> Callable[..., Any]:
    """The estimator registered under ``name_or_enum`` (case-sensitive).

    Raises:
        ValueError: ``"Unknown advantage estimator simply: <name>"`` plus the registered names.
    """
    name = _enum_value(name_or_enum)
    if name not in ADV_ESTIMATOR_REGISTRY:
        raise ValueError(f"Unknown advantage estimator simply: {name}. Registered: {sorted(ADV_ESTIMATOR_REGISTRY)}")
    return ADV_ESTIMATOR_REGISTRY[name]


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a policy loss under ``actor.policy_loss.loss_mode == name``.

    Replacing an existing loss with a different function is allowed (recipes override built-ins) but warns.
    """

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        existing = POLICY_LOSS_REGISTRY.get(name)
        if existing is not None and existing is not fn:
            warnings.warn(f"policy loss {name!r} re-registered: {existing!r} replaced by {fn!r}", stacklevel=2)
        POLICY_LOSS_REGISTRY[name] = fn
        return fn

    return decorator


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The policy loss registered under ``name``; ``ValueError`` listing the supported modes otherwise."""
    if name not in POLICY_LOSS_REGISTRY:
        raise ValueError(f"Unsupported loss mode: {name}. Supported modes are: {list(POLICY_LOSS_REGISTRY)}")
    return POLICY_LOSS_REGISTRY[name]


# ---------------------------------------------------------------------------------------------------------------------
# KL controllers (coefficient of the in-reward KL penalty)
# ---------------------------------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """Proportional controller steering the measured KL towards ``target_kl`` (Ziegler et al., 2019).

    ``value *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: float) -> None:
        self.value = init_kl_coef
        self.target = target_kl
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """Constant KL coefficient; ``update`` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


def get_kl_controller(kl_ctrl: Any) -> AdaptiveKLController | FixedKLController:
    """Build the controller described by ``algorithm.kl_ctrl`` (``type``: fixed | adaptive)."""
    kind = cfg_get(kl_ctrl, "type", "fixed")
    kl_coef = cfg_get(kl_ctrl, "kl_coef", 0.001)
    if kind == "fixed":
        return FixedKLController(kl_coef=kl_coef)
    if kind == "adaptive":
        horizon = cfg_get(kl_ctrl, "horizon", 10000)
        assert horizon > 0, f"algorithm.kl_ctrl.horizon must be > 0 for the adaptive controller, got {horizon}"
        return AdaptiveKLController(init_kl_coef=kl_coef, target_kl=cfg_get(kl_ctrl, "target_kl", 0.1), horizon=horizon)
    raise NotImplementedError(f"algorithm.kl_ctrl.type={kind!r} is not supported; use 'fixed' or 'adaptive'.")


# ---------------------------------------------------------------------------------------------------------------------
# advantage estimators
# ---------------------------------------------------------------------------------------------------------------------


def _group_rows(index: Any) -> dict[Any, list[int]]:
    """Row numbers of each group id, in first-seen order (ids may be strings, ints or tensor elements)."""
    keys = index.tolist() if isinstance(index, (np.ndarray, torch.Tensor)) else list(index)
    rows: dict[Any, list[int]] = defaultdict(list)
    for row, key in enumerate(keys):
        rows[key].append(row)
    return rows


@register_adv_est(AdvantageEstimator.GAE)
@torch.no_grad()
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float | torch.Tensor | None = None,
    lam: float | torch.Tensor | None = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) with multi-turn masking.

    Backwards over t: ``delta_t = r_t + gamma * V_next - V_t``; ``A_t = delta_t + gamma * lam * A_next``.
    ``V_next`` and ``A_next`` only advance on positions with mask 1: masked (observation) tokens carry the
    previous values through, so neither their values nor their rewards influence any advantage.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        values: ``(bs, response_length)`` critic values.
        response_mask: ``(bs, response_length)``.
        gamma: discount; read from ``config.gamma`` (default 1.0) when ``None``.
        lam: GAE lambda; read from ``config.lam`` (default 1.0) when ``None``.
        config: optional algorithm config.

    Returns:
        ``advantages`` (whitened over the mask) and ``returns = A + V`` (not whitened), both
        ``(bs, response_length)``.
    """
    gamma = cfg_get(config, "gamma", 1.0) if gamma is None else gamma
    lam = cfg_get(config, "lam", 1.0) if lam is None else lam
    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    reversed_adv = []
    for t in reversed(range(token_level_rewards.shape[-1])):
        delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        next_value = values[:, t] * mask[:, t] + (1 - mask[:, t]) * next_value
        next_adv = adv_t * mask[:, t] + (1 - mask[:, t]) * next_adv
        reversed_adv.append(next_adv)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    return verl_F.masked_whiten(advantages, response_mask), returns


@register_adv_est(AdvantageEstimator.GRPO)
@torch.no_grad()
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage (Shao et al., 2024): each score normalised within its prompt group.

    ``A_i = (s_i - mean_g) / (std_g + epsilon)`` with the unbiased std, or ``s_i - mean_g`` when
    ``norm_adv_by_std_in_grpo`` is False (Dr. GRPO). A group of one uses mean 0 and std 1.

    Args:
        token_level_rewards: ``(bs, response_length)``; a response's score ``s_i`` is its row sum.
        response_mask: ``(bs, response_length)``.
        index: ``(bs,)`` group ids.
        epsilon: added to the std.
        norm_adv_by_std_in_grpo: divide by the std; ``config.norm_adv_by_std_in_grpo`` wins when present.
        config: optional algorithm config.

    Returns:
        ``(advantages, returns)``, the same ``(bs, response_length)`` tensor: ``A_i`` broadcast over the mask.
    """
    norm_by_std = cfg_get(config, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    scores = token_level_rewards.sum(dim=-1)
    out = scores.clone()
    for rows in _group_rows(index).values():
        group = scores[rows]
        mean, std = (group.mean(), group.std()) if len(rows) > 1 else (0.0, 1.0)
        out[rows] = (group - mean) / (std + epsilon) if norm_by_std else group - mean
    return _broadcast(out, response_mask)


# The estimators below share the arguments and return convention of compute_grpo_outcome_advantage.


@register_adv_est(AdvantageEstimator.GRPO_VECTORIZED)
@torch.no_grad()
def compute_grpo_vectorized_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same maths as :func:`compute_grpo_outcome_advantage`, with scatter reductions instead of a loop."""
    norm_by_std = cfg_get(config, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    scores = token_level_rewards.sum(dim=-1)
    gidx = as_torch_index(index, device=scores.device)
    mean_g, std_g, _ = group_mean_std(scores, gidx)
    centered = scores - mean_g[gidx].to(scores.dtype)
    out = centered / (std_g[gidx].to(scores.dtype) + epsilon) if norm_by_std else centered
    return _broadcast(out, response_mask)


@register_adv_est(AdvantageEstimator.GRPO_PASSK)
@torch.no_grad()
def compute_grpo_passk_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k GRPO: only the best response of each group gets ``r_max - r_second`` (÷ ``std_g + eps``); others 0.

    Raises:
        ValueError: a group holds fewer than 2 responses.
    """
    norm_by_std = cfg_get(config, "norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    scores = token_level_rewards.sum(dim=-1)
    out = torch.zeros_like(scores)
    for key, rows in _group_rows(index).items():
        if len(rows) < 2:
            raise ValueError(f"grpo_passk needs at least 2 responses per group; group {key!r} has {len(rows)}.")
        group = scores[rows]
        top2 = torch.topk(group, 2)
        gain = top2.values[0] - top2.values[1]
        out[rows[int(top2.indices[0])]] = gain / (group.std() + epsilon) if norm_by_std else gain
    return _broadcast(out, response_mask)


@register_adv_est(AdvantageEstimator.REINFORCE_PLUS_PLUS_BASELINE)
@torch.no_grad()
def compute_reinforce_plus_plus_baseline_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a group-mean baseline (0 for a group of one), then whitened over the batch's tokens."""
    scores = token_level_rewards.sum(dim=-1)
    out = scores.clone()
    for rows in _group_rows(index).values():
        if len(rows) > 1:
            out[rows] = scores[rows] - scores[rows].mean()
    advantages = verl_F.masked_whiten(out.unsqueeze(-1) * response_mask, response_mask) * response_mask
    return advantages, advantages


@register_adv_est(AdvantageEstimator.RLOO)
@torch.no_grad()
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): score minus the mean of the *other* group members.

    For a group of ``n > 1``: ``A_i = s_i * n/(n-1) - mean_g * n/(n-1)``; a group of one keeps its raw score.
    """
    scores = token_level_rewards.sum(dim=-1)
    out = scores.clone()
    for rows in _group_rows(index).values():
        n = len(rows)
        if n > 1:
            out[rows] = scores[rows] * n / (n - 1) - scores[rows].mean() * n / (n - 1)
    return _broadcast(out, response_mask)


@register_adv_est(AdvantageEstimator.RLOO_VECTORIZED)
@torch.no_grad()
def compute_rloo_vectorized_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same maths as :func:`compute_rloo_outcome_advantage`: ``s_i - (sum_g - s_i) / (n_g - 1)``, vectorised."""
    scores = token_level_rewards.sum(dim=-1)
    gidx = as_torch_index(index, device=scores.device)
    count = torch.bincount(gidx).to(scores.dtype)[gidx]
    group_sum = torch.zeros(int(gidx.max()) + 1, dtype=scores.dtype, device=scores.device)
    group_sum = group_sum.scatter_add_(0, gidx, scores)[gidx]
    leave_one_out = (group_sum - scores) / (count - 1).clamp(min=1)
    return _broadcast(torch.where(count > 1, scores - leave_one_out, scores), response_mask)


@register_adv_est(AdvantageEstimator.OPO)
@torch.no_grad()
def compute_opo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OPO: the baseline is the length-weighted group score ``sum(len_j s_j) / sum(len_j)`` (0 for a group of 1)."""
    scores = token_level_rewards.sum(dim=-1)
    lengths = response_mask.sum(dim=-1).to(scores.dtype)
    out = scores.clone()
    for rows in _group_rows(index).values():
        if len(rows) > 1:
            out[rows] = scores[rows] - (lengths[rows] * scores[rows]).sum() / lengths[rows].sum()
    return _broadcast(out, response_mask)


@register_adv_est(AdvantageEstimator.GPG)
@torch.no_grad()
def compute_gpg_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    f_norm: float = 1.0,
    alpha: float = 1.0,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group Policy Gradient (Chu et al., 2025): ``A_i = alpha * (s_i - mean_g) / f_norm``.

    ``alpha = bs / max(#non-zero scores, 1)`` rescales for the fraction of informative samples (the ``alpha``
    argument is accepted for signature compatibility and overridden). A group of one uses mean 0.
    """
    scores = token_level_rewards.sum(dim=-1)
    alpha = scores.shape[0] / max(int(torch.count_nonzero(scores)), 1)
    out = scores.clone()
    for rows in _group_rows(index).values():
        mean = scores[rows].mean() if len(rows) > 1 else 0.0
        out[rows] = alpha * (scores[rows] - mean) / f_norm
    return _broadcast(out, response_mask)


@register_adv_est(AdvantageEstimator.REINFORCE_PLUS_PLUS)
@torch.no_grad()
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    gamma: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu, 2025): discounted token returns, whitened over the batch.

    ``G_t = r_t + gamma * G_{t+1}`` (``gamma`` argument, else ``config.gamma``, else 1), with the running return
    reset to 0 after each masked position so that separate turns do not leak into each other.

    Returns:
        ``advantages`` (whitened returns times the mask) and the raw ``returns``, both ``(bs, response_length)``.
    """
    gamma = cfg_get(config, "gamma", 1.0) if gamma is None else gamma
    returns = torch.zeros_like(token_level_rewards)
    running = torch.zeros_like(token_level_rewards[:, 0])
    for t in reversed(range(token_level_rewards.shape[-1])):
        running = token_level_rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * response_mask[:, t]
    return verl_F.masked_whiten(returns, response_mask) * response_mask, returns


@register_adv_est(AdvantageEstimator.REMAX)
@torch.no_grad()
def compute_remax_outcome_advantage(
    token_level_rewards: torch.Tensor,
    reward_baselines: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax (Li et al., 2023): reward-to-go minus the score of a greedy rollout, ``reward_baselines (bs,)``.

    Returns:
        ``advantages = returns - baseline * mask`` and ``returns`` (reverse cumsum of masked rewards), both
        ``(bs, response_length)``.
    """
    returns = (token_level_rewards * response_mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    return returns - reward_baselines.unsqueeze(-1) * response_mask, returns


def _broadcast(scores: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Outcome estimators give one number per response; every counted token receives it, and returns == advantages.
    advantages = scores.unsqueeze(-1) * response_mask
    return advantages, advantages


def compute_rewards(
    token_level_scores: torch.Tensor, old_log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_ratio: float
) -> torch.Tensor:
    """In-reward KL penalty with the k1 estimator: ``scores - kl_ratio * (old_log_prob - ref_log_prob)``.

    All tensors ``(bs, response_length)``.
    """
    return token_level_scores - kl_ratio * (old_log_prob - ref_log_prob)


# ---------------------------------------------------------------------------------------------------------------------
# loss aggregation
# ---------------------------------------------------------------------------------------------------------------------

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar.

    ``token-mean``: sum over valid tokens / number of valid tokens. ``seq-mean-token-sum``: per-sequence token sums
    averaged over non-empty sequences. ``seq-mean-token-mean``: per-sequence token means, averaged likewise.
    ``seq-mean-token-sum-norm`` (Dr. GRPO): per-sequence sums / ``loss_scale_factor`` (default: the padded response
    length, a constant), averaged likewise.

    With data parallelism, pass the *global* ``batch_num_tokens`` (token modes) or ``global_batch_size``
    (sequence modes) and ``dp_size``: the local value is scaled by ``dp_size`` so that the gradient all-reduce,
    which averages over ranks, yields the global mean exactly even when ranks hold different token counts.

    Args:
        loss_mat: ``(bs, response_length)``.
        loss_mask: ``(bs, response_length)``.
        loss_agg_mode: one of ``LOSS_AGG_MODES``.
        dp_size: data-parallel world size.
        batch_num_tokens: global valid-token count (default: local count).
        global_batch_size: global non-empty sequence count (default: local count).
        loss_scale_factor: divisor of ``seq-mean-token-sum-norm``.

    Returns:
        scalar loss.
    """
    if loss_agg_mode == "token-mean":
        denom = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
        return verl_F.masked_sum(loss_mat, loss_mask) / _safe_denominator(denom, loss_mat) * dp_size
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"Invalid loss_agg_mode: {loss_agg_mode!r}. Supported modes are: {list(LOSS_AGG_MODES)}")
    token_counts = loss_mask.sum(dim=-1)
    seq_losses = verl_F.masked_sum(loss_mat, loss_mask, axis=-1)  # (bs,)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_losses = seq_losses / (token_counts + 1e-8)
    elif loss_agg_mode == "seq-mean-token-sum-norm":
        seq_losses = seq_losses / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    seq_mask = token_counts > 0
    denom = seq_mask.sum() if global_batch_size is None else global_batch_size
    return verl_F.masked_sum(seq_losses, seq_mask) / _safe_denominator(denom, loss_mat) * dp_size


def _safe_denominator(denom: int | float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # An all-masked micro-batch must give loss 0 (and zero gradients), not NaN.
    return torch.as_tensor(denom, dtype=like.dtype, device=like.device).clamp(min=1e-8)


def _agg_kwargs(config: Any) -> dict[str, Any]:
    """Global-batch information an actor may attach to its config (``global_batch_info`` / ``loss_scale_factor``)."""
    info = dict(cfg_get(config, "global_batch_info", None) or {})
    if cfg_get(config, "loss_scale_factor", None) is not None:
        info.setdefault("loss_scale_factor", cfg_get(config, "loss_scale_factor"))
    keep = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")
    return {k: v for k, v in info.items() if k in keep}


# ---------------------------------------------------------------------------------------------------------------------
# policy losses
#
# Every registered loss has the signature of compute_policy_loss_vanilla and returns (pg_loss, metrics) with the
# metric keys of _METRIC_KEYS (floats). Log-ratios are clamped to [-20, 20] before exp() so that a stale
# old_log_prob cannot overflow the ratio.
# ---------------------------------------------------------------------------------------------------------------------

_METRIC_KEYS = ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower")


def _metrics(pg_clipfrac: torch.Tensor | float, ppo_kl: torch.Tensor | float, lower: torch.Tensor | float) -> dict:
    values = (pg_clipfrac, ppo_kl, lower)
    return {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in zip(_METRIC_KEYS, values)}


def _apply_is_weights(pg_losses: torch.Tensor, rollout_is_weights: torch.Tensor | None) -> torch.Tensor:
    # Importance weights correct for rollout-vs-training policy mismatch; they carry no gradient.
    return pg_losses if rollout_is_weights is None else pg_losses * rollout_is_weights.detach()


def _ppo_clip_terms(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dual-clip PPO per-token losses from a clamped ``log_ratio (bs, T)``.

    Returns:
        ``pg_losses (bs, T)`` and the scalar tensors ``pg_clipfrac``, ``ppo_kl``, ``pg_clipfrac_lower``.
    """
    assert clip_ratio_c > 1.0, f"clip_ratio_c (dual-clip lower bound) must be > 1.0, got {clip_ratio_c}"
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip_max = torch.maximum(unclipped, clipped)
    pg_clipfrac = verl_F.masked_mean(torch.gt(clipped, unclipped).float(), response_mask)
    # Dual clip (Ye et al., 2020): for A < 0 a huge ratio would give an unbounded loss; cap it at -A * c.
    dual_bound = -advantages * clip_ratio_c
    negative = advantages < 0
    pg_clipfrac_lower = verl_F.masked_mean((torch.gt(clip_max, dual_bound) & negative).float(), response_mask)
    pg_losses = torch.where(negative, torch.minimum(dual_bound, clip_max), clip_max)
    return pg_losses, pg_clipfrac, verl_F.masked_mean(-log_ratio, response_mask), pg_clipfrac_lower


@register_policy_loss("vanilla")
def compute_policy_loss_vanilla(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate with dual clip (the default ``loss_mode``).

    ``r = exp(logp - old)``; loss ``max(-A r, -A clip(r, 1-low, 1+high))``, further capped at ``-A c`` where
    ``A < 0``. Reads ``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high``, ``clip_ratio_c`` from ``config``.

    Args:
        old_log_prob: ``(bs, response_length)`` log-probs at rollout time.
        log_prob: ``(bs, response_length)`` current log-probs (with grad).
        advantages: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        loss_agg_mode: see :func:`agg_loss`.
        config: actor config (defaults apply when ``None``).
        rollout_is_weights: optional ``(bs, response_length)`` importance weights.

    Returns:
        scalar ``pg_loss`` and metrics ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``.
    """
    clip_low, clip_high, clip_ratio_c = _clip_ratios(config)
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    pg_losses, clipfrac, ppo_kl, lower = _ppo_clip_terms(
        log_ratio, advantages, response_mask, clip_low, clip_high, clip_ratio_c
    )
    pg_losses = _apply_is_weights(pg_losses, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    return pg_loss, _metrics(clipfrac, ppo_kl, lower)


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange: float | None = None,
    cliprange_low: float | None = None,
    cliprange_high: float | None = None,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deprecated pre-registry form of the vanilla loss; returns ``(pg_loss, clipfrac, ppo_kl, clipfrac_lower)``."""
    warnings.warn("compute_policy_loss is deprecated; use get_policy_loss_fn('vanilla')", DeprecationWarning, 2)
    cliprange = 0.2 if cliprange is None else cliprange
    low = cliprange if cliprange_low is None else cliprange_low
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    pg_losses, clipfrac, ppo_kl, lower = _ppo_clip_terms(log_ratio, advantages, response_mask, low, high, clip_ratio_c)
    return agg_loss(pg_losses, response_mask, loss_agg_mode), clipfrac, ppo_kl, lower


@register_policy_loss("gspo")
def compute_policy_loss_gspo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "seq-mean-token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GSPO (Zheng et al., 2025): a clipped surrogate on the sequence-level ratio.

    ``s_i = exp(mean_t(logp - old))``; token-wise ``s_{i,t} = exp(sg[log s_i] + logp_t - sg[logp_t])`` has the
    value of ``s_i`` and the gradient ``s_i * d logp_t``. Always aggregated with ``seq-mean-token-mean``
    (``loss_agg_mode`` is ignored, as upstream does).
    """
    clip_low, clip_high, _ = _clip_ratios(config)
    log_ratio = log_prob - old_log_prob
    seq_len = response_mask.sum(dim=-1).clamp(min=1)
    seq_log_ratio = verl_F.masked_sum(log_ratio, response_mask, axis=-1) / seq_len  # (bs,)
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + log_prob - log_prob.detach()
    ratio = torch.exp(torch.clamp(token_log_ratio, max=10.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg_losses = _apply_is_weights(torch.maximum(unclipped, clipped), rollout_is_weights)
    agg = {k: v for k, v in _agg_kwargs(config).items() if k != "batch_num_tokens"}
    pg_loss = agg_loss(pg_losses, response_mask, "seq-mean-token-mean", **agg)
    is_clipped = torch.gt(clipped, unclipped)
    clipfrac = verl_F.masked_mean(is_clipped.float(), response_mask)
    lower = verl_F.masked_mean((is_clipped & (advantages < 0)).float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), lower)


@register_policy_loss("gpg")
def compute_policy_loss_gpg(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GPG: plain policy gradient ``-logp * A``, no ratio and no clipping (clip fractions report 0)."""
    pg_losses = _apply_is_weights(-log_prob * advantages, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    return pg_loss, _metrics(0.0, verl_F.masked_mean(old_log_prob - log_prob, response_mask), 0.0)


@register_policy_loss("clip_cov")
def compute_policy_loss_clip_cov(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clip-Cov (Cui et al., 2025): zero the loss of a few tokens with high covariance of A and logp.

    Among valid tokens not already clipped by PPO whose centred covariance lies in ``(clip_cov_lb, clip_cov_ub)``,
    up to ``max(int(clip_cov_ratio * #valid), 1)`` are chosen at random. Reads ``policy_loss.{clip_cov_ratio,
    clip_cov_lb, clip_cov_ub}`` and the clip ratios. ``actor/pg_clipfrac`` is the fraction of zeroed tokens.
    """
    policy_cfg = cfg_get(config, "policy_loss", None)
    cov_ratio = cfg_get(policy_cfg, "clip_cov_ratio", 0.0002)
    cov_lb = cfg_get(policy_cfg, "clip_cov_lb", 1.0)
    cov_ub = cfg_get(policy_cfg, "clip_cov_ub", 5.0)
    assert cov_ratio > 0, f"policy_loss.clip_cov_ratio must be > 0, got {cov_ratio}"
    clip_low, clip_high, _ = _clip_ratios(config)
    valid = response_mask.bool()
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    logp = log_prob.detach()
    cov = (advantages - verl_F.masked_mean(advantages, response_mask)) * (
        logp - verl_F.masked_mean(logp, response_mask)
    )
    candidates = torch.nonzero(valid & ~torch.gt(clipped, unclipped) & (cov > cov_lb) & (cov < cov_ub))  # (n, 2)
    budget = max(int(cov_ratio * int(valid.sum())), 1)
    chosen = candidates[torch.randperm(len(candidates), device=candidates.device)[:budget]]
    keep = torch.ones_like(advantages)
    keep[chosen[:, 0], chosen[:, 1]] = 0.0
    pg_losses = _apply_is_weights(torch.maximum(unclipped, clipped) * keep, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    clipfrac = verl_F.masked_mean((keep == 0).float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), 0.0)


@register_policy_loss("kl_cov")
def compute_policy_loss_kl_cov(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-Cov (Cui et al., 2025): add ``ppo_kl_coef * |log r|`` on the top-covariance tokens, no clipping.

    The ``max(1, int(kl_cov_ratio * #valid))`` valid tokens with the largest centred covariance of A and logp get
    ``-A r + coef |log r|``; the others ``-A r``. Reads ``policy_loss.{kl_cov_ratio, ppo_kl_coef}``;
    ``actor/ppo_kl`` reports the masked mean of ``|log r|``.
    """
    policy_cfg = cfg_get(config, "policy_loss", None)
    kl_cov_ratio = cfg_get(policy_cfg, "kl_cov_ratio", 0.0002)
    kl_coef = cfg_get(policy_cfg, "ppo_kl_coef", 0.1)
    assert kl_cov_ratio > 0, f"policy_loss.kl_cov_ratio must be > 0, got {kl_cov_ratio}"
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    base = -advantages * torch.exp(log_ratio)
    valid_flat = torch.nonzero(response_mask.reshape(-1) > 0, as_tuple=True)[0]
    select = torch.zeros(advantages.numel(), dtype=torch.bool, device=advantages.device)
    if valid_flat.numel() > 0:
        adv = advantages.reshape(-1)[valid_flat].detach()
        logp = log_prob.reshape(-1)[valid_flat].detach()
        cov = (adv - adv.mean()) * (logp - logp.mean())
        select[valid_flat[torch.topk(cov, max(1, int(valid_flat.numel() * kl_cov_ratio))).indices]] = True
    pg_losses = torch.where(select.reshape(advantages.shape), base + kl_coef * log_ratio.abs(), base)
    pg_losses = _apply_is_weights(pg_losses, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    return pg_loss, _metrics(0.0, verl_F.masked_mean(log_ratio.abs(), response_mask), 0.0)


@register_policy_loss("geo_mean")
def compute_policy_loss_geo_mean(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GMPO (Zhao et al., 2025): maximise the geometric mean of token ratios, clipped in log space.

    Token log-ratios are clipped sign-aware: ``sgn(A) * min(sgn(A) l, sgn(A) clamp(l, -low, high))``. The
    sequence ratio is ``exp(mean_t clipped l)``, the sequence advantage ``mean_t A``, and the loss
    ``mean_i(-A_i * ratio_i)`` over the batch (``loss_agg_mode`` is not used; advantages are assumed to be
    sequence-level). Importance weights, if given, are averaged per sequence.
    """
    clip_low, clip_high, _ = _clip_ratios(config)
    log_ratio = log_prob - old_log_prob
    sign = torch.sign(advantages)
    log_ratio_clamped = torch.clamp(log_ratio, -clip_low, clip_high)
    log_ratio_clipped = sign * torch.minimum(sign * log_ratio, sign * log_ratio_clamped)
    lengths = response_mask.sum(dim=-1) + 1e-8
    seq_ratio = torch.exp(verl_F.masked_sum(log_ratio_clipped, response_mask, axis=-1) / lengths)
    pg_losses = -(verl_F.masked_sum(advantages, response_mask, axis=-1) / lengths) * seq_ratio  # (bs,)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * (verl_F.masked_sum(rollout_is_weights.detach(), response_mask, axis=-1) / lengths)
    is_clipped = torch.ne(log_ratio, log_ratio_clamped)
    clipfrac = verl_F.masked_mean((is_clipped & (advantages > 0)).float(), response_mask)
    lower = verl_F.masked_mean((is_clipped & (advantages < 0)).float(), response_mask)
    return pg_losses.mean(), _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), lower)


@register_policy_loss("cispo")
def compute_policy_loss_cispo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """CISPO (MiniMax, 2025): clip the importance weight, not the update; every token keeps its gradient.

    ``loss_t = -sg(clamp(r_t, 1 - low, 1 + high)) * A_t * logp_t``. ``actor/pg_clipfrac`` counts tokens whose
    weight was clipped on either side, ``actor/pg_clipfrac_lower`` those clipped from below.
    """
    clip_low, clip_high, _ = _clip_ratios(config)
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    weight = torch.clamp(ratio, 1 - clip_low, 1 + clip_high).detach()
    pg_losses = _apply_is_weights(-weight * advantages * log_prob, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    below = ratio < 1 - clip_low
    clipfrac = verl_F.masked_mean((below | (ratio > 1 + clip_high)).float(), response_mask)
    lower = verl_F.masked_mean(below.float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), lower)


# ---------------------------------------------------------------------------------------------------------------------
# entropy, value loss, KL penalties
# ---------------------------------------------------------------------------------------------------------------------


def compute_entropy_loss(
    logits: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = "token-mean"
) -> torch.Tensor:
    """Aggregated token entropy: ``logits (bs, response_length, vocab)``, ``response_mask (bs, response_length)``."""
    return agg_loss(verl_F.entropy_from_logits(logits), response_mask, loss_agg_mode)


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``0.5 * agg(max((v - R)^2, (clip(v, V_old +- c) - R)^2))``.

    Args:
        vpreds: ``(bs, response_length)`` current critic predictions.
        returns: ``(bs, response_length)`` targets.
        values: ``(bs, response_length)`` predictions at rollout time.
        response_mask: ``(bs, response_length)``.
        cliprange_value: how far ``vpreds`` may move from ``values`` before clipping.
        loss_agg_mode: see :func:`agg_loss`.

    Returns:
        ``(vf_loss, vf_clipfrac)`` scalars; the clip fraction counts tokens where the clipped error is larger.
    """
    vpred_clipped = verl_F.clip_by_value(vpreds, values - cliprange_value, values + cliprange_value)
    err_unclipped = (vpreds - returns) ** 2
    err_clipped = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * agg_loss(torch.maximum(err_unclipped, err_clipped), response_mask, loss_agg_mode)
    vf_clipfrac = verl_F.masked_mean(torch.gt(err_clipped, err_unclipped).float(), response_mask)
    return vf_loss, vf_clipfrac


def kl_penalty_forward(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate ``(bs, response_length)`` between policy and reference (Schulman's k1/k2/k3).

    ``kl``/``k1``: ``logp - ref``; ``abs``: ``|logp - ref|``; ``mse``/``k2``: ``0.5 (logp - ref)^2``;
    ``low_var_kl``/``k3``: ``exp(ref - logp) - (ref - logp) - 1`` (log-ratio clamped to [-20, 20], result to
    [-10, 10] for stability). ``full`` (needs full-vocabulary logits) and unknown names raise NotImplementedError.
    """
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    if kl_penalty == "abs":
        return (logprob - ref_logprob).abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    if kl_penalty in ("low_var_kl", "k3"):
        log_ratio = torch.clamp(ref_logprob - logprob, min=-20.0, max=20.0)
        return torch.clamp(torch.exp(log_ratio) - log_ratio - 1.0, min=-10.0, max=10.0)
    if kl_penalty == "full":
        raise NotImplementedError("kl_penalty='full' needs full-vocabulary logits and is not implemented.")
    raise NotImplementedError(
        f"Unknown kl_penalty {kl_penalty!r}; use kl|k1, abs, mse|k2, low_var_kl|k3 (optionally with a '+' suffix)."
    )


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """KL estimate ``(bs, response_length)``; a ``+`` suffix (e.g. ``k3+``) keeps the value, takes k2's gradient.

    k2's gradient is an unbiased estimate of the true KL gradient, while the k1/k3 values are the cheaper,
    lower-variance penalties; the straight-through ``+`` form combines the two. See :func:`kl_penalty_forward`.
    """
    base = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    value = kl_penalty_forward(logprob, ref_logprob, base)
    if base == kl_penalty or base in ("mse", "k2"):
        return value
    k2 = 0.5 * (logprob - ref_logprob).square()
    return k2 - k2.detach() + value.detach()


# Losses defined beside the maths they need register themselves on import (kept last: they import this module).
from verl.trainer.ppo import rollout_corr_helper as _rollout_corr_helper  # noqa: E402, F401
