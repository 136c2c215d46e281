"""verl's ``core_algos``: the PPO-family maths and its two registries, with every built-in entry loaded.

The maths live in ``verl.trainer.ppo.core`` (registries, ``agg_loss``, vanilla PPO, value loss, KL), the built-in
advantage estimators in ``advantage_estimators.py`` (gae, grpo (+ vectorized, passk), rloo (+ vectorized), opo,
gpg, reinforce++ (+ baseline), remax, gdpo, optimal_token_baseline, tir_optimal_token_baseline) and the other
policy losses in ``policy_losses.py`` (gspo, sapo, dppo_tv, dppo_kl, gpg, clip_cov, kl_cov, geo_mean, cispo) and
``rollout_corr_helper.py`` (bypass_mode). Importing this module imports them all, so the registries are full, and
every name of theirs is available here (``core_algos.compute_grpo_outcome_advantage``, ``core_algos.agg_loss``...).
"""

from __future__ import annotations

from typing import Any

from verl.trainer.ppo import advantage_estimators as _advantage_estimators
from verl.trainer.ppo import core as _core
from verl.trainer.ppo import policy_losses as _policy_losses
from verl.trainer.ppo import rollout_corr_helper as _rollout_corr_helper
from verl.trainer.ppo.core import (
    ADV_ESTIMATOR_REGISTRY,
    POLICY_LOSS_REGISTRY,
    AdaptiveKLController,
    AdvantageEstimator,
    FixedKLController,
    agg_loss,
    compute_entropy_loss,
    compute_policy_loss,
    compute_policy_loss_vanilla,
    compute_rewards,
    compute_value_loss,
    get_adv_estimator_fn,
    get_kl_controller,
    get_policy_loss_fn,
    kl_penalty,
    register_adv_est,
    register_policy_loss,
)

_MODULES = (_core, _advantage_estimators, _policy_losses, _rollout_corr_helper)

__all__ = [
    "ADV_ESTIMATOR_REGISTRY",
    "POLICY_LOSS_REGISTRY",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "FixedKLController",
    "agg_loss",
    "compute_entropy_loss",
    "compute_policy_loss",
    "compute_policy_loss_vanilla",
    "compute_rewards",
    "compute_value_loss",
    "get_adv_estimator_fn",
    "get_kl_controller",
    "get_policy_loss_fn",
    "kl_penalty",
    "register_adv_est",
    "register_policy_loss",
]


def __getattr__(name: str) -> Any:
    # Every other name of the maths modules (PEP 562), e.g. compute_grpo_outcome_advantage, kl_penalty_forward.
    if not name.startswith("__"):
        for module in _MODULES:
            if name in vars(module):
                return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *(n for m in _MODULES for n in vars(m) if not n.startswith("__"))})
