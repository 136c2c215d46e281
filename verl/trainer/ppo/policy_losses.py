"""Policy losses beyond vanilla PPO, registered in ``core_algos.POLICY_LOSS_REGISTRY`` by ``policy_loss.loss_mode``.

Every registered loss has the signature of :func:`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla` (the
default loss, which stays in core_algos beside the shared clip/metric helpers) and returns ``(pg_loss, metrics)``:
a scalar and the float metrics ``actor/pg_clipfrac``, ``actor/ppo_kl``, ``actor/pg_clipfrac_lower``. ``config`` is
the actor config (``ActorConfig``; a dict, a ``DictConfig`` or ``None`` is read as one, see ``core.actor_config``); its
``global_batch_info`` (set by the engine-path actor) makes the aggregation independent of the micro-batch split,
see :func:`verl.trainer.ppo.core_algos.agg_loss`. Log-ratios are clamped to [-20, 20] before ``exp()`` where noted,
so that a stale ``old_log_prob`` cannot overflow the ratio.

The names stay importable from :mod:`verl.trainer.ppo.core_algos`, which imports this module.
"""

from __future__ import annotations

from typing import Any

import torch

from verl.trainer.ppo.core import (
    _agg_kwargs,
    _apply_is_weights,
    _clip_ratios,
    _metrics,
    actor_config,
    agg_loss,
    register_policy_loss,
)
from verl.utils import torch_functional as verl_F
from verl.workers.config.actor import ActorConfig


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
    value of ``s_i`` and the gradient ``s_i * d logp_t``. Token loss ``max(-A s_{i,t}, -A clip(s_{i,t}, 1 - low,
    1 + high))`` (no dual clip). Always aggregated with ``seq-mean-token-mean`` (``loss_agg_mode`` is ignored, as
    upstream does), using ``dp_size`` and ``global_batch_size`` from ``config.global_batch_info`` when present, so
    micro-batch losses sum to the mini-batch value.

    Args: as :func:`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla`.

    Returns:
        scalar loss; ``actor/pg_clipfrac``, ``actor/ppo_kl``; ``actor/pg_clipfrac_lower`` is 0 (no dual clip).
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
    clipfrac = verl_F.masked_mean(torch.gt(clipped, unclipped).float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), 0.0)


@register_policy_loss("sapo")
def compute_policy_loss_sapo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "seq-mean-token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SAPO: a smooth sigmoid gate on the ratio in place of PPO's hard clip.

    ``r = exp(clamp(logp - old, -20, 20))``; token loss ``-A * f(r, tau)`` with ``f(r, tau) = sigmoid(tau (r - 1))
    * 4 / tau`` and ``tau = tau_pos`` (default 1.0) where ``A > 0``, else ``tau_neg`` (default 1.05), both read from
    the actor config. ``df/dr = 4 s (1 - s)`` equals 1 at ``r = 1`` (on-policy it is the plain policy gradient) and
    fades smoothly as the ratio leaves 1. Always aggregated with ``seq-mean-token-mean`` (``loss_agg_mode`` is
    ignored, as upstream does), with the global sequence count when ``config.global_batch_info`` has one.

    Args: as :func:`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla`.

    Returns:
        scalar loss and metrics; ``actor/pg_clipfrac`` and ``actor/pg_clipfrac_lower`` are 0 (nothing is clipped).
    """
    cfg = actor_config(config)
    tau_pos, tau_neg = float(cfg.tau_pos), float(cfg.tau_neg)
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    tau = torch.where(advantages > 0, tau_pos, tau_neg).to(ratio.dtype)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)
    pg_losses = _apply_is_weights(-gate * advantages, rollout_is_weights)
    agg = {k: v for k, v in _agg_kwargs(config).items() if k != "batch_num_tokens"}
    pg_loss = agg_loss(pg_losses, response_mask, "seq-mean-token-mean", **agg)
    return pg_loss, _metrics(0.0, verl_F.masked_mean(-log_ratio, response_mask), 0.0)


def _dppo_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None,
    divergence: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Shared body of the DPPO losses; ``divergence`` is ``"tv"`` or ``"kl"`` (see the registered wrappers)."""
    clip_low, clip_high, clip_ratio_c = _clip_ratios(config)
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    prob, old_prob = torch.exp(log_prob.detach()), torch.exp(old_log_prob.detach())
    positive = advantages > 0
    if divergence == "tv":
        valid = torch.where(positive, prob - old_prob <= clip_high, prob - old_prob >= -clip_low)
    else:
        # KL between the Bernoulli distributions (sampled token, anything else) of the old and new policies.
        binary_kl = old_prob * (old_log_prob - log_prob.detach()) + (1.0 - old_prob) * torch.log(
            (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8)
        )
        valid = torch.where(
            positive, (binary_kl <= clip_high) | (prob <= old_prob), (binary_kl <= clip_low) | (prob >= old_prob)
        )
    weight = torch.clamp(ratio, max=clip_ratio_c).detach()
    pg_losses = _apply_is_weights(-advantages * weight * log_prob * valid, rollout_is_weights)
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **_agg_kwargs(config))
    clipfrac = verl_F.masked_mean((~valid).float(), response_mask)
    lower = verl_F.masked_mean(((ratio > clip_ratio_c) & valid).float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), lower)


@register_policy_loss("dppo_tv")
def compute_policy_loss_dppo_tv(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPPO with a total-variation trust region: mask the tokens whose probability moved too far.

    With ``p = exp(logp)``, ``p_old = exp(old)`` (detached) a token is valid when ``p - p_old <= high`` (A > 0) or
    ``p - p_old >= -low`` (A <= 0): a token whose probability already left the region in the direction its advantage
    pushes gets no more gradient; moves the other way are never stopped. Token loss
    ``-A * sg(min(r, clip_ratio_c)) * logp * valid``: an importance-weighted policy gradient with the weight capped
    at ``clip_ratio_c`` (default 3). Respects ``loss_agg_mode``.

    Args: as :func:`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla`.

    Returns:
        scalar loss; ``actor/pg_clipfrac`` = fraction of masked-out tokens, ``actor/pg_clipfrac_lower`` = fraction of
        valid tokens whose ratio exceeds ``clip_ratio_c``, ``actor/ppo_kl``.
    """
    return _dppo_loss(
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights, "tv"
    )


@register_policy_loss("dppo_kl")
def compute_policy_loss_dppo_kl(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPPO with a binary-KL trust region; otherwise as :func:`compute_policy_loss_dppo_tv`.

    ``b = p_old (old - logp) + (1 - p_old) ln((1 - p_old + 1e-8) / (1 - p + 1e-8))`` is the KL between the
    two-outcome distributions (this token, any other) of the old and new policy. Valid: ``b <= high or p <= p_old``
    (A > 0); ``b <= low or p >= p_old`` (A <= 0). Token loss ``-A * sg(min(r, clip_ratio_c)) * logp * valid``.

    Args: as :func:`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla`.

    Returns:
        scalar loss and the same metrics as :func:`compute_policy_loss_dppo_tv`.
    """
    return _dppo_loss(
        old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights, "kl"
    )


@register_policy_loss("gpg")
def compute_policy_loss_gpg(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
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
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clip-Cov (Cui et al., 2025): zero the loss of a few tokens with high covariance of A and logp.

    Among valid tokens not already clipped by PPO whose centred covariance lies in ``(clip_cov_lb, clip_cov_ub)``,
    up to ``max(int(clip_cov_ratio * #valid), 1)`` are chosen at random. Reads ``policy_loss.{clip_cov_ratio,
    clip_cov_lb, clip_cov_ub}`` and the clip ratios. ``actor/pg_clipfrac`` is the fraction of zeroed tokens.
    """
    policy_cfg = actor_config(config).policy_loss
    cov_ratio, cov_lb, cov_ub = policy_cfg.clip_cov_ratio, policy_cfg.clip_cov_lb, policy_cfg.clip_cov_ub
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
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-Cov (Cui et al., 2025): add ``ppo_kl_coef * |log r|`` on the top-covariance tokens, no clipping.

    The ``max(1, int(kl_cov_ratio * #valid))`` valid tokens with the largest centred covariance of A and logp get
    ``-A r + coef |log r|``; the others ``-A r``. Reads ``policy_loss.{kl_cov_ratio, ppo_kl_coef}``;
    ``actor/ppo_kl`` reports the masked mean of ``|log r|``.
    """
    policy_cfg = actor_config(config).policy_loss
    kl_cov_ratio, kl_coef = policy_cfg.kl_cov_ratio, policy_cfg.ppo_kl_coef
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
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GMPO (Zhao et al., 2025): maximise the geometric mean of token ratios, clipped in log space.

    With ``l = logp - old`` (not clamped), ``l_c = clamp(l, -low, high)`` and the sign-aware clip
    ``l' = sgn(A) * min(sgn(A) l, sgn(A) l_c)``, each row gets ``ratio_i = exp(sum_t m l' / (sum_t m + 1e-8))``,
    ``A_i = sum_t m A / (sum_t m + 1e-8)`` and the loss ``L_i = -A_i * ratio_i``. Importance weights, if given, are
    collapsed to the row's geometric mean ``exp(sum_t m ln(w + 1e-10) / (sum_t m + 1e-8))`` and multiply ``L_i``.

    Aggregation ignores ``loss_agg_mode``. Without global batch info (legacy path) it is the plain mean of ``L_i``
    over the rows of this micro-batch, as upstream does. When ``config.global_batch_info`` carries
    ``global_batch_size`` (engine path) it is ``dp_size * sum_i L_i / global_batch_size``, so the micro-batch losses
    accumulate to the mini-batch mean whatever the split. This is a deliberate difference from upstream, which keeps
    the local mean on the engine path too, so that its sum over micro-batches grows with their number.

    Args:
        old_log_prob: ``(bs, response_length)``.
        log_prob: ``(bs, response_length)`` (with grad).
        advantages: ``(bs, response_length)``; assumed constant along each row (sequence-level).
        response_mask: ``(bs, response_length)``.
        loss_agg_mode: ignored.
        config: actor config (clip ratios, ``global_batch_info``).
        rollout_is_weights: optional ``(bs, response_length)``.

    Returns:
        scalar loss; ``actor/pg_clipfrac`` (clipped tokens with A > 0), ``actor/pg_clipfrac_lower`` (with A < 0),
        ``actor/ppo_kl``.
    """
    clip_low, clip_high, _ = _clip_ratios(config)
    log_ratio = log_prob - old_log_prob
    sign = torch.sign(advantages)
    log_ratio_clamped = torch.clamp(log_ratio, -clip_low, clip_high)
    log_ratio_clipped = sign * torch.minimum(sign * log_ratio, sign * log_ratio_clamped)
    lengths = response_mask.sum(dim=-1) + 1e-8
    seq_ratio = torch.exp(verl_F.masked_sum(log_ratio_clipped, response_mask, axis=-1) / lengths)
    seq_losses = -(verl_F.masked_sum(advantages, response_mask, axis=-1) / lengths) * seq_ratio  # (bs,)
    if rollout_is_weights is not None:
        log_w = torch.log(rollout_is_weights.detach() + 1e-10)
        seq_losses = seq_losses * torch.exp(verl_F.masked_sum(log_w, response_mask, axis=-1) / lengths)
    agg = _agg_kwargs(config)
    if agg.get("global_batch_size") is None:
        pg_loss = seq_losses.mean()
    else:
        pg_loss = seq_losses.sum() * agg.get("dp_size", 1) / agg["global_batch_size"]
    is_clipped = torch.ne(log_ratio, log_ratio_clamped)
    clipfrac = verl_F.masked_mean((is_clipped & (advantages > 0)).float(), response_mask)
    lower = verl_F.masked_mean((is_clipped & (advantages < 0)).float(), response_mask)
    return pg_loss, _metrics(clipfrac, verl_F.masked_mean(-log_ratio, response_mask), lower)


@register_policy_loss("cispo")
def compute_policy_loss_cispo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
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
