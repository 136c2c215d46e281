"""The PPO-family maths behind ``verl.trainer.ppo.core_algos``: registries, loss aggregation, the vanilla PPO loss,
value loss, KL penalties and controllers, PF-PPO resampling.

``core_algos`` is the public face: it loads the built-in estimators (``advantage_estimators.py``) and policy losses
(``policy_losses.py``, ``rollout_corr_helper.py``), which register themselves here, and re-exports every name. The
split keeps imports one-way: those modules import this one, never ``core_algos``.

Everything here is pure: tensors and scalars in, tensors (and a metrics dict of floats) out. There is no
``DataProto`` and no ``torch.distributed`` in the maths. The two registries are the plug-in points:

* ``ADV_ESTIMATOR_REGISTRY`` (``register_adv_est`` / ``get_adv_estimator_fn``), keyed by ``AdvantageEstimator``
  values. Estimators return ``(advantages, returns)``, both ``(bs, response_length)``.
* ``POLICY_LOSS_REGISTRY`` (``register_policy_loss`` / ``get_policy_loss_fn``), keyed by
  ``actor.policy_loss.loss_mode``. Losses return ``(pg_loss, metrics)``.

Registered functions take an optional ``config``: the typed node defined below the maths (``ActorConfig`` for the
losses, ``AlgoConfig`` for the estimators). A ``DictConfig``, a partial dict or ``None`` is turned into that node
on the first line (``as_config``), so a missing key takes the tree's one default; default arguments that mirror a
config key are that key's default (``ActorConfig.loss_agg_mode``), never a second literal.

Conventions: ``response_mask`` is 1 on tokens the policy generated (up to and including EOS) and 0 on padding
and on tool/observation tokens of multi-turn rollouts; ``index`` holds one group id (the prompt ``uid``) per row.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np
import torch

from verl.trainer.config.algorithm import KLControlConfig
from verl.utils import torch_functional as verl_F
from verl.utils.config import as_config
from verl.workers.config.actor import ActorConfig, FSDPActorConfig

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]

# ---------------------------------------------------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------------------------------------------------


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


def _registry(name: str) -> dict:
    # verl looks its registries up through core_algos' module globals on every call, so a test or recipe may swap
    # core_algos.ADV_ESTIMATOR_REGISTRY; the facade re-exports these dicts, and a swapped one there wins.
    swapped = getattr(sys.modules.get("verl.trainer.ppo.core_algos"), name, None)
    return swapped if swapped is not None else globals()[name]


def _enum_value(name_or_enum: str | Enum) -> str:
    return name_or_enum.value if isinstance(name_or_enum, Enum) else name_or_enum


def register_adv_est(name_or_enum: str | AdvantageEstimator) -> Callable[[Callable], Callable]:
    """Decorator registering an advantage estimator under ``name_or_enum`` (an enum registers its value).

    Re-registering the same function is a no-op; a different function under a taken name raises ``ValueError``.
    """
    name = _enum_value(name_or_enum)

    def decorator(fn: Callable) -> Callable:
        registry = _registry("ADV_ESTIMATOR_REGISTRY")
        existing = registry.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"Advantage estimator {name!r} is already registered to {existing!r}; not {fn!r}.")
        registry[name] = fn
        return fn

    return decorator


def get_adv_estimator_fn(name_or_enum: str | AdvantageEstimator) -> Callable[..., Any]:
    """The estimator registered under ``name_or_enum`` (case-sensitive).

    Raises:
        ValueError: ``"Unknown advantage estimator simply: <name>"`` plus the registered names.
    """
    name = _enum_value(name_or_enum)
    registry = _registry("ADV_ESTIMATOR_REGISTRY")
    if name not in registry:
        raise ValueError(f"Unknown advantage estimator simply: {name}. Registered: {sorted(registry)}")
    return registry[name]


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a policy loss under ``actor.policy_loss.loss_mode == name``.

    Replacing an existing loss with a different function is allowed (recipes override built-ins) but warns.
    """

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        registry = _registry("POLICY_LOSS_REGISTRY")
        existing = registry.get(name)
        if existing is not None and existing is not fn:
            warnings.warn(f"policy loss {name!r} re-registered: {existing!r} replaced by {fn!r}", stacklevel=2)
        registry[name] = fn
        return fn

    return decorator


def get_policy_loss_fn(name: str) -> PolicyLossFn:
    """The policy loss registered under ``name``; ``ValueError`` listing the supported modes otherwise."""
    registry = _registry("POLICY_LOSS_REGISTRY")
    if name not in registry:
        raise ValueError(f"Unsupported loss mode: {name}. Supported modes are: {list(registry)}")
    return registry[name]


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
    cfg = as_config(kl_ctrl, KLControlConfig)
    if cfg.type == "fixed":
        return FixedKLController(kl_coef=cfg.kl_coef)
    if cfg.type == "adaptive":
        assert cfg.horizon > 0, f"algorithm.kl_ctrl.horizon must be > 0 for the adaptive controller, got {cfg.horizon}"
        return AdaptiveKLController(init_kl_coef=cfg.kl_coef, target_kl=cfg.target_kl, horizon=cfg.horizon)
    raise NotImplementedError(f"algorithm.kl_ctrl.type={cfg.type!r} is not supported; use 'fixed' or 'adaptive'.")


def actor_config(config: Any) -> ActorConfig:
    """The typed actor node of a loss's ``config`` argument (``None`` or a partial mapping: the tree's defaults)."""
    return config if isinstance(config, ActorConfig) else as_config(config, FSDPActorConfig)


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
    # As upstream: only the engine path fills global_batch_info (loss_scale_factor included); on the legacy path it
    # is empty, so every aggregation is micro-batch local and actor.loss_scale_factor is not used.
    info = dict(actor_config(config).global_batch_info)
    keep = ("dp_size", "batch_num_tokens", "global_batch_size", "loss_scale_factor")
    return {k: v for k, v in info.items() if k in keep and v is not None}


# ---------------------------------------------------------------------------------------------------------------------
# policy-loss helpers and the default loss (vanilla PPO); the other losses live in policy_losses.py
#
# Every registered loss has the signature of compute_policy_loss_vanilla and returns (pg_loss, metrics) with the
# metric keys of _METRIC_KEYS (floats).
# ---------------------------------------------------------------------------------------------------------------------


def _clip_ratios(config: Any) -> tuple[float, float, float]:
    """``(clip_low, clip_high, clip_ratio_c)`` from an actor config; low/high fall back to ``clip_ratio``."""
    cfg = actor_config(config)
    low = cfg.clip_ratio if cfg.clip_ratio_low is None else cfg.clip_ratio_low
    high = cfg.clip_ratio if cfg.clip_ratio_high is None else cfg.clip_ratio_high
    return float(low), float(high), float(cfg.clip_ratio_c)


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
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
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
    clip_ratio_c: float = ActorConfig.clip_ratio_c,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deprecated pre-registry form of the vanilla loss; returns ``(pg_loss, clipfrac, ppo_kl, clipfrac_lower)``."""
    warnings.warn("compute_policy_loss is deprecated; use get_policy_loss_fn('vanilla')", DeprecationWarning, 2)
    cliprange = ActorConfig.clip_ratio if cliprange is None else cliprange
    low = cliprange if cliprange_low is None else cliprange_low
    high = cliprange if cliprange_high is None else cliprange_high
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    pg_losses, clipfrac, ppo_kl, lower = _ppo_clip_terms(log_ratio, advantages, response_mask, low, high, clip_ratio_c)
    return agg_loss(pg_losses, response_mask, loss_agg_mode), clipfrac, ppo_kl, lower


# ---------------------------------------------------------------------------------------------------------------------
# PF-PPO: resample the batch towards high-|reward| responses
# ---------------------------------------------------------------------------------------------------------------------

PF_PPO_REWEIGHT_METHODS = ("pow", "max_min", "max_random")


def pf_ppo_resample_indices(
    scores: torch.Tensor, reweight_method: str, weight_pow: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Row indices for policy-filtration PPO: draw ``bs`` rows with replacement, weighted by their score.

    Weights: ``pow``: ``|s|^weight_pow``; ``max_min``: 1 for rows holding the batch's max or min score, else 0;
    ``max_random``: 0.4 for rows holding the max, else 0.1. Then ``w = max(w + 1e-8, 1e-8)`` so every row keeps a
    (tiny) chance, and ``torch.multinomial(w, bs, replacement=True)``.

    Args:
        scores: ``(bs,)`` per-response scores (the trainer uses the row sums of ``token_level_scores``).
        reweight_method: one of ``PF_PPO_REWEIGHT_METHODS`` (``algorithm.pf_ppo.reweight_method``).
        weight_pow: exponent of the ``pow`` method (``algorithm.pf_ppo.weight_pow``).
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        ``(bs,)`` LongTensor of row indices; rows may repeat, the batch size is unchanged.

    Raises:
        ValueError: unknown ``reweight_method``.
    """
    scores = scores.detach().to(torch.float64)
    if reweight_method == "pow":
        weights = scores.abs().pow(weight_pow)
    elif reweight_method == "max_min":
        weights = ((scores == scores.max()) | (scores == scores.min())).to(scores.dtype)
    elif reweight_method == "max_random":
        weights = torch.where(scores == scores.max(), 0.4, 0.1).to(scores.dtype)
    else:
        raise ValueError(
            f"algorithm.pf_ppo.reweight_method={reweight_method!r} is not supported; use one of "
            f"{list(PF_PPO_REWEIGHT_METHODS)}."
        )
    weights = torch.clamp(weights + 1e-8, min=1e-8)
    return torch.multinomial(weights, scores.shape[0], replacement=True, generator=generator)


# ---------------------------------------------------------------------------------------------------------------------
# entropy, value loss, KL penalties, logit statistics
# ---------------------------------------------------------------------------------------------------------------------


def compute_entropy_loss(
    logits: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = ActorConfig.loss_agg_mode
) -> torch.Tensor:
    """Aggregated token entropy: ``logits (bs, response_length, vocab)``, ``response_mask (bs, response_length)``."""
    return agg_loss(verl_F.entropy_from_logits(logits), response_mask, loss_agg_mode)


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = ActorConfig.loss_agg_mode,
    loss_scale_factor: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``0.5 * agg(max((v - R)^2, (clip(v, V_old +- c) - R)^2))``.

    Args:
        vpreds: ``(bs, response_length)`` current critic predictions.
        returns: ``(bs, response_length)`` targets.
        values: ``(bs, response_length)`` predictions at rollout time.
        response_mask: ``(bs, response_length)``.
        cliprange_value: how far ``vpreds`` may move from ``values`` before clipping.
        loss_agg_mode: see :func:`agg_loss`.
        loss_scale_factor: divisor of ``seq-mean-token-sum-norm`` (``critic.loss_scale_factor``; None: the length).

    Returns:
        ``(vf_loss, vf_clipfrac)`` scalars; the clip fraction counts tokens where the clipped error is larger.
    """
    vpred_clipped = verl_F.clip_by_value(vpreds, values - cliprange_value, values + cliprange_value)
    err_unclipped = (vpreds - returns) ** 2
    err_clipped = (vpred_clipped - returns) ** 2
    errors = torch.maximum(err_unclipped, err_clipped)
    vf_loss = 0.5 * agg_loss(errors, response_mask, loss_agg_mode, loss_scale_factor=loss_scale_factor)
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


@torch.no_grad()
def compute_sum_pi_squared_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``sum_v pi_v^2`` per position, the collision probability of the softmax, for the optimal token baseline.

    Computed in log space as ``exp(LSE(2 z) - 2 LSE(z))`` (``sum_v e^{2 z_v} / (sum_v e^{z_v})^2``) in float32,
    so large logits neither overflow nor lose the small terms. No gradient flows through it.

    Args:
        logits: ``(bs, response_length, vocab)`` (any leading shape; the last dim is the vocabulary).

    Returns:
        ``(bs, response_length)`` float32 values in ``[1/vocab, 1]``.
    """
    # Shift by the max first: the two LSE terms then stay near 0 instead of near 2 max(z), where float32 loses digits.
    logits = logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # (bs, T, V)
    return torch.exp(torch.logsumexp(2.0 * shifted, dim=-1) - 2.0 * torch.logsumexp(shifted, dim=-1))
