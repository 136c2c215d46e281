"""Advantage estimators, registered in ``core_algos.ADV_ESTIMATOR_REGISTRY`` under ``algorithm.adv_estimator``.

Every estimator returns ``(advantages, returns)``, both ``(bs, response_length)``, and takes keyword arguments from
the set the trainer may pass (``token_level_rewards``, ``response_mask``, ``index``, ``config``, ``values``,
``reward_baselines``, ``old_log_probs``, ``sum_pi_squared``, ``rollout_is_weights``, ``non_tensor_batch``,
``attention_mask``); ``**kwargs`` swallows the rest so the trainer can pass a superset.

The names stay importable from :mod:`verl.trainer.ppo.core_algos`, which imports this module.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from verl.trainer.config.algorithm import AlgoConfig
from verl.trainer.ppo.core import AdvantageEstimator, register_adv_est
from verl.utils import torch_functional as verl_F
from verl.utils.groupwise import as_torch_index, group_mean_std
from verl.utils.py_functional import cfg_get


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
    gamma = cfg_get(config, "gamma", AlgoConfig.gamma) if gamma is None else gamma
    lam = cfg_get(config, "lam", AlgoConfig.lam) if lam is None else lam
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
    norm_adv_by_std_in_grpo: bool = AlgoConfig.norm_adv_by_std_in_grpo,
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
    scores = _group_normalise(token_level_rewards.sum(dim=-1), index, epsilon, norm_by_std)
    return _broadcast(scores, response_mask)


def _group_normalise(scores: torch.Tensor, index: Any, epsilon: float, norm_by_std: bool) -> torch.Tensor:
    """``(bs,)`` scores centred (and scaled by ``std + epsilon``) within their group; a group of one: mean 0, std 1."""
    out = scores.clone()
    for rows in _group_rows(index).values():
        group = scores[rows]
        mean, std = (group.mean(), group.std()) if len(rows) > 1 else (0.0, 1.0)
        out[rows] = (group - mean) / (std + epsilon) if norm_by_std else group - mean
    return out


# The estimators below share the arguments and return convention of compute_grpo_outcome_advantage.


@register_adv_est(AdvantageEstimator.GRPO_VECTORIZED)
@torch.no_grad()
def compute_grpo_vectorized_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = AlgoConfig.norm_adv_by_std_in_grpo,
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
    norm_adv_by_std_in_grpo: bool = AlgoConfig.norm_adv_by_std_in_grpo,
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
    gamma = cfg_get(config, "gamma", AlgoConfig.gamma) if gamma is None else gamma
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


# ---------------------------------------------------------------------------------------------------------------------
# GDPO: one GRPO normalisation per reward component
# ---------------------------------------------------------------------------------------------------------------------


@register_adv_est(AdvantageEstimator.GDPO)
@torch.no_grad()
def compute_gdpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    epsilon: float = 1e-6,
    config: Any = None,
    non_tensor_batch: dict[str, np.ndarray] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GDPO: normalise each reward component within its group separately, then combine and whiten.

    For each key ``k`` of ``config.gdpo_reward_keys`` with weight ``w_k`` (``config.gdpo_reward_weights``, default
    all 1), the per-response values ``v_k = non_tensor_batch[k]`` get the GRPO normalisation
    ``A_k,i = (v_k,i - mean_g) / (std_g + epsilon)`` (unbiased std; a group of one uses mean 0 and std 1; the std
    division is always on, ``norm_adv_by_std_in_grpo`` is not read). Then
    ``A = whiten_m(sum_k w_k A_k,i * m) * m``, whitened with the token-weighted mean and Bessel-corrected variance
    over the valid tokens of the batch. Normalising components apart keeps a high-variance reward from drowning a
    low-variance one, which a single GRPO on the summed score would do.

    With neither ``config`` nor ``non_tensor_batch`` (a bare call) the only component is the row sum of
    ``token_level_rewards``, as upstream does.

    Args:
        token_level_rewards: ``(bs, response_length)``; used only for the bare-call fallback.
        response_mask: ``(bs, response_length)``.
        index: ``(bs,)`` group ids (prompt uids).
        epsilon: added to the group std.
        config: algorithm config with ``gdpo_reward_keys`` (and optionally ``gdpo_reward_weights``).
        non_tensor_batch: the batch's non-tensor columns; each reward key maps to ``(bs,)`` numbers.

    Returns:
        ``(advantages, returns)``, the same ``(bs, response_length)`` tensor.

    Raises:
        ValueError: the keys are missing, a key has no column in ``non_tensor_batch``, or the weights do not match.
    """
    combined = torch.zeros_like(token_level_rewards[:, 0])
    for scores, weight in _gdpo_components(token_level_rewards, config, non_tensor_batch):
        combined = combined + weight * _group_normalise(scores, index, epsilon, norm_by_std=True)
    mask = response_mask.to(combined.dtype)
    advantages = verl_F.masked_whiten(combined.unsqueeze(-1) * mask, mask) * mask
    return advantages, advantages


def _gdpo_components(
    token_level_rewards: torch.Tensor, config: Any, non_tensor_batch: dict[str, np.ndarray] | None
) -> list[tuple[torch.Tensor, float]]:
    """``[(scores (bs,), weight)]``, one per reward key."""
    keys = cfg_get(config, "gdpo_reward_keys", None)
    if keys is None:
        if config is None and non_tensor_batch is None:
            return [(token_level_rewards.sum(dim=-1), 1.0)]
        raise ValueError(
            "adv_estimator=gdpo needs algorithm.gdpo_reward_keys: the names of the per-component scores your reward "
            "function returns in its result dict, e.g. +algorithm.gdpo_reward_keys=[accuracy,format]."
        )
    keys = [keys] if isinstance(keys, str) else list(keys)
    weights = cfg_get(config, "gdpo_reward_weights", None)
    weights = [1.0] * len(keys) if weights is None else [float(w) for w in weights]
    if not keys or len(weights) != len(keys):
        raise ValueError(
            f"algorithm.gdpo_reward_keys={keys} and algorithm.gdpo_reward_weights={weights} must be non-empty and "
            "of the same length."
        )
    columns = non_tensor_batch or {}
    bs = token_level_rewards.shape[0]
    components = []
    for key, weight in zip(keys, weights):
        if key not in columns:
            raise ValueError(
                f"algorithm.gdpo_reward_keys names {key!r}, but the batch has no such column (it has "
                f"{sorted(columns)}); the reward function must return {key!r} in its result dict."
            )
        values = torch.as_tensor(np.asarray(columns[key], dtype=np.float64), device=token_level_rewards.device)
        if values.shape != (bs,):
            raise ValueError(f"GDPO reward column {key!r} has shape {tuple(values.shape)}, expected ({bs},).")
        components.append((values.to(token_level_rewards.dtype), weight))
    return components


# ---------------------------------------------------------------------------------------------------------------------
# optimal token baseline (OTB) and its multi-turn variant
# ---------------------------------------------------------------------------------------------------------------------


def _otb_inputs(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    old_log_probs: torch.Tensor | None,
    sum_pi_squared: torch.Tensor | None,
    rollout_is_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mask, reward_to_go G, cumulative weight W)``, all ``(bs, response_length)``, on the original positions."""
    if sum_pi_squared is None:
        raise ValueError(
            "optimal_token_baseline needs sum_pi_squared; set actor_rollout_ref.actor.calculate_sum_pi_squared=true "
            "(not supported with fused kernels)."
        )
    if old_log_probs is None:
        raise ValueError("optimal_token_baseline needs old_log_probs (the actor's log-probs of the rollout).")
    mask = response_mask.to(token_level_rewards.dtype)
    reward_to_go = (token_level_rewards * mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    # ||pi - e_t||^2 = 1 - 2 pi_t + sum_v pi_v^2: the squared norm of the score-function gradient w.r.t. the logits.
    weight = 1.0 - 2.0 * torch.exp(old_log_probs) + sum_pi_squared
    if rollout_is_weights is not None:
        weight = weight * rollout_is_weights.square()
    return mask, reward_to_go, torch.cumsum(weight.to(mask.dtype) * mask, dim=-1)


def _otb_baseline(
    reward_to_go: torch.Tensor,
    cum_weight: torch.Tensor,
    mask: torch.Tensor,
    groups: list[list[int]],
    handle_zero_tail: bool,
    epsilon: float,
) -> torch.Tensor:
    """Per-group, position-aligned ``B_t = sum_i G m W / (sum_i m W + eps)``, ``(bs, response_length)``.

    Groups of fewer than two rows keep baseline 0. With ``handle_zero_tail``, when one row is strictly the longest,
    its baseline is 0 from the second-longest length on: there it would be its own return, giving advantage 0.
    """
    baseline = torch.zeros_like(reward_to_go)
    lengths = mask.sum(dim=-1)
    for rows in groups:
        if len(rows) < 2:
            continue
        weighted = mask[rows] * cum_weight[rows]  # (n, T)
        group_base = (reward_to_go[rows] * weighted).sum(dim=0) / (weighted.sum(dim=0) + epsilon)  # (T,)
        group_base = group_base.expand(len(rows), -1).clone()
        if handle_zero_tail:
            top2 = torch.topk(lengths[rows], 2)
            if top2.values[0] > top2.values[1]:
                group_base[int(top2.indices[0]), int(top2.values[1]) :] = 0.0
        baseline[rows] = group_base
    return baseline


@register_adv_est(AdvantageEstimator.OPTIMAL_TOKEN_BASELINE)
@torch.no_grad()
def compute_optimal_token_baseline_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    old_log_probs: torch.Tensor | None = None,
    sum_pi_squared: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    handle_zero_tail: bool = True,
    epsilon: float = 1e-8,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal token baseline: a per-position group baseline weighted by the gradient-norm proxy of each token.

    ``G_t = sum_{t' >= t} m r`` (reward-to-go), ``w_t = (1 - 2 pi_t + sum_v pi_v^2) * rho_t^2`` with
    ``pi_t = exp(old_log_probs)`` and ``rho`` the optional rollout IS weight, ``W_t = sum_{j <= t} m_j w_j``.
    Within each group, aligned by position t: ``B_t = sum_i G_i,t m_i,t W_i,t / (sum_i m_i,t W_i,t + eps)``
    (0 for a group of one; see :func:`_otb_baseline` for the zero tail). ``A = (G - B) * m``.

    Args:
        token_level_rewards: ``(bs, response_length)``.
        response_mask: ``(bs, response_length)``.
        index: ``(bs,)`` group ids.
        old_log_probs: ``(bs, response_length)`` log-probs of the sampled tokens.
        sum_pi_squared: ``(bs, response_length)`` ``sum_v pi_v^2`` from the actor
            (``actor_rollout_ref.actor.calculate_sum_pi_squared=true``).
        rollout_is_weights: optional ``(bs, response_length)`` importance weights.
        handle_zero_tail: zero the baseline of a uniquely longest row past the second-longest length.
        epsilon: added to the baseline denominator.
        config: accepted for the generic dispatch; unused.

    Returns:
        ``advantages = (G - B) * m`` and ``returns = G``, both ``(bs, response_length)``.

    Raises:
        ValueError: ``sum_pi_squared`` or ``old_log_probs`` is missing.
    """
    mask, reward_to_go, cum_weight = _otb_inputs(
        token_level_rewards, response_mask, old_log_probs, sum_pi_squared, rollout_is_weights
    )
    groups = list(_group_rows(index).values())
    baseline = _otb_baseline(reward_to_go, cum_weight, mask, groups, handle_zero_tail, epsilon)
    return (reward_to_go - baseline) * mask, reward_to_go


@register_adv_est(AdvantageEstimator.TIR_OPTIMAL_TOKEN_BASELINE)
@torch.no_grad()
def compute_tir_optimal_token_baseline_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    old_log_probs: torch.Tensor | None = None,
    sum_pi_squared: torch.Tensor | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    handle_zero_tail: bool = True,
    epsilon: float = 1e-8,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal token baseline for multi-turn (tool-integrated) rollouts: time is the k-th *valid* token.

    Same statistics as :func:`compute_optimal_token_baseline_advantage`, but each row's valid tokens are first
    compacted to the left, so that masks with holes (tool observations) align on their k-th generated token rather
    than on the padded position. Rows without valid tokens leave their groups (a group may thus shrink to one) and
    get advantage 0. Advantages are scattered back to the original positions.

    Args: as :func:`compute_optimal_token_baseline_advantage`.

    Returns:
        ``advantages (bs, response_length)`` on the original positions and ``returns = G`` (original positions).
    """
    mask, reward_to_go, cum_weight = _otb_inputs(
        token_level_rewards, response_mask, old_log_probs, sum_pi_squared, rollout_is_weights
    )
    # order[i, k] = position of row i's k-th valid token for k < L_i (valid positions first, stable), then padding.
    order = torch.sort(1.0 - mask, dim=-1, stable=True).indices  # (bs, T)
    compact_mask = torch.gather(mask, 1, order)
    compact_g = torch.gather(reward_to_go, 1, order)
    lengths = mask.sum(dim=-1)
    groups = [[row for row in rows if lengths[row] > 0] for rows in _group_rows(index).values()]
    baseline = _otb_baseline(
        compact_g, torch.gather(cum_weight, 1, order), compact_mask, groups, handle_zero_tail, epsilon
    )
    advantages = torch.zeros_like(compact_g).scatter_(1, order, (compact_g - baseline) * compact_mask)
    return advantages, reward_to_go
