"""Typed views of the ``algorithm.*`` block (and the checkpoint node shared by actor and critic).

Built from the Hydra config with ``omega_conf_to_dataclass(config.algorithm)``; each class validates its own
values in ``__post_init__`` and raises ``ValueError`` naming the key, the value and a fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from verl.base_config import BaseConfig, check_choice

__all__ = [
    "KL_PENALTY_TYPES",
    "AlgoConfig",
    "CheckpointConfig",
    "FilterGroupsConfig",
    "KLControlConfig",
    "PFPPOConfig",
    "RolloutCorrectionConfig",
]

# Estimator names accepted by ``core_algos.kl_penalty``; a trailing "+" (straight-through k2 gradient) is allowed.
KL_PENALTY_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")
CHECKPOINT_CONTENTS = ("model", "optimizer", "extra", "hf_model")


def check_kl_penalty(key: str, value: str) -> None:
    """Validate a KL estimator name (``kl``, ``low_var_kl``, ``k3+`` ...)."""
    base = value[:-1] if isinstance(value, str) and value.endswith("+") else value
    check_choice(key, base, KL_PENALTY_TYPES, "A trailing '+' selects the straight-through k2 gradient.")


@dataclass
class KLControlConfig(BaseConfig):
    """``algorithm.kl_ctrl``: the coefficient of the in-reward KL penalty."""

    type: str = "fixed"
    """fixed: constant coefficient; adaptive: steered towards target_kl over horizon steps."""
    kl_coef: float = 0.001
    """Initial (fixed: constant) KL coefficient."""
    horizon: int = 10000
    """Adaptive controller: steps over which the coefficient reacts to the KL error."""
    target_kl: float = 0.1
    """Adaptive controller: KL value the coefficient steers towards."""

    def __post_init__(self) -> None:
        check_choice("algorithm.kl_ctrl.type", self.type, ("fixed", "adaptive"))
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_ctrl.kl_coef={self.kl_coef} must be >= 0")
        if self.type == "adaptive" and self.horizon <= 0:
            raise ValueError(f"algorithm.kl_ctrl.horizon={self.horizon} must be > 0 for the adaptive controller")


@dataclass
class PFPPOConfig(BaseConfig):
    """``algorithm.pf_ppo``: policy-filtration PPO resampling of the batch by reward."""

    reweight_method: str = "pow"
    """pow | max_min | max_random."""
    weight_pow: float = 2.0
    """Exponent used by the pow method."""

    def __post_init__(self) -> None:
        check_choice("algorithm.pf_ppo.reweight_method", self.reweight_method, ("pow", "max_min", "max_random"))


@dataclass
class FilterGroupsConfig(BaseConfig):
    """``algorithm.filter_groups``: DAPO dynamic sampling (drop groups whose metric has zero variance)."""

    enable: bool = False
    """Turn dynamic sampling on."""
    metric: str | None = None
    """Per-sample metric whose within-group variance decides whether a group is kept (e.g. acc, score)."""
    max_num_gen_batches: int = 0
    """Generation batches to try before giving up on filling a step; 0 means no limit."""

    def __post_init__(self) -> None:
        if self.max_num_gen_batches < 0:
            raise ValueError(f"algorithm.filter_groups.max_num_gen_batches={self.max_num_gen_batches} must be >= 0")


@dataclass
class RolloutCorrectionConfig(BaseConfig):
    """``algorithm.rollout_correction``: importance weights / rejection for rollout-vs-training mismatch.

    Used by :mod:`verl.trainer.ppo.rollout_corr_helper`. The YAML node defaults ``rollout_is`` to null (off); the
    dataclass default ``"sequence"`` applies where no node is given (e.g. ``actor.policy_loss.rollout_correction``).
    """

    rollout_is: str | None = "sequence"
    """Importance-sampling level: null (off), token or sequence."""
    rollout_is_threshold: float = 2.0
    """Upper truncation of the importance weights (> 0)."""
    rollout_rs: str | None = None
    """Rejection options, comma-separated and combined with AND: token_k1|k2|k3, seq_sum_k1|k2|k3,
    seq_mean_k1|k2|k3, seq_max_k2|k3 (0.6 names token, sequence, geometric mean token_k1, seq_sum_k1, seq_mean_k1)."""
    rollout_rs_threshold: str | float | None = None
    """One bound for all options or one per option (comma-separated); k1: "lo_up" or u (lo = 1/u); k2/k3: upper."""
    bypass_mode: bool = False
    """Use rollout log-probs as the old policy (skips the old_log_prob pass; actor loss_mode bypass_mode)."""
    loss_type: str = "ppo_clip"
    """Bypass-mode loss: ppo_clip (PPO with pi_old = pi_rollout) or reinforce (-A * log_prob * IS weight)."""
    rollout_is_batch_normalize: bool = False
    """Rescale the truncated IS weights to mean 1 over the batch (over all ranks inside workers)."""
    rollout_rs_threshold_lower: float | None = None
    """Deprecated (verl 0.6): lower bound of k1 options given a single threshold (default 1/threshold)."""
    rollout_token_veto_threshold: float | None = None
    """Deprecated (verl 0.6): reject a whole row when any valid token's ratio pi_train/pi_rollout is below this."""
    use_policy_gradient: bool = False
    """Deprecated (verl 0.6): true means loss_type=reinforce."""

    def __post_init__(self) -> None:
        key = "algorithm.rollout_correction"
        check_choice(f"{key}.rollout_is", self.rollout_is, (None, "token", "sequence"))
        check_choice(f"{key}.loss_type", self.loss_type, ("ppo_clip", "reinforce"))
        if self.use_policy_gradient:
            self._set("loss_type", "reinforce")
        for name in ("rollout_is_threshold", "rollout_rs_threshold_lower", "rollout_token_veto_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{key}.{name}={value!r} must be a positive number")
        # Imported here: the helper imports this module (and torch) at its top.
        from verl.trainer.ppo.rollout_corr_helper import parse_rollout_rs

        parse_rollout_rs(self.rollout_rs, self.rollout_rs_threshold, self.rollout_rs_threshold_lower)


@dataclass
class CheckpointConfig(BaseConfig):
    """``*.checkpoint``: what a worker saves and loads."""

    save_contents: list[str] = field(default_factory=lambda: ["model", "optimizer", "extra"])
    """Parts written at each save: model, optimizer, extra (RNG, scheduler), hf_model (HF-format weights)."""
    load_contents: list[str] = field(default_factory=lambda: ["model", "optimizer", "extra"])
    """Parts restored on resume (defaults to save_contents in the YAML)."""
    async_save: bool = False
    """Write checkpoints in the background."""

    def __post_init__(self) -> None:
        for key in ("save_contents", "load_contents"):
            for item in getattr(self, key):
                check_choice(f"checkpoint.{key} item", item, CHECKPOINT_CONTENTS)


@dataclass
class AlgoConfig(BaseConfig):
    """``algorithm``: advantage estimation and reward shaping."""

    gamma: float = 1.0
    """Discount factor."""
    lam: float = 1.0
    """GAE lambda."""
    adv_estimator: str = "gae"
    """Advantage estimator registered in core_algos (gae, grpo, rloo, reinforce_plus_plus, ...)."""
    norm_adv_by_std_in_grpo: bool = True
    """GRPO: divide by the group std (False gives Dr.GRPO)."""
    use_kl_in_reward: bool = False
    """Subtract beta * KL(actor || ref) from the token rewards."""
    kl_penalty: str = "kl"
    """KL estimator for the in-reward penalty: kl|k1, abs, mse|k2, low_var_kl|k3, full."""
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    """Coefficient controller for the in-reward KL penalty."""
    use_pf_ppo: bool = False
    """Resample the batch by reward (PF-PPO)."""
    pf_ppo: PFPPOConfig = field(default_factory=PFPPOConfig)
    """PF-PPO settings."""
    filter_groups: FilterGroupsConfig | None = None
    """DAPO dynamic sampling settings."""
    rollout_correction: RolloutCorrectionConfig | None = None
    """Rollout/training mismatch correction settings."""
    gdpo_reward_keys: list[str] | None = None
    """GDPO: reward-extra keys normalised separately."""
    gdpo_reward_weights: list[float] | None = None
    """GDPO: weights of those keys."""

    def __post_init__(self) -> None:
        for key in ("gamma", "lam"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"algorithm.{key}={value} must lie in [0, 1]")
        if not self.adv_estimator:
            raise ValueError("algorithm.adv_estimator is empty; set it, e.g. algorithm.adv_estimator=grpo")
        check_kl_penalty("algorithm.kl_penalty", self.kl_penalty)
        keys, weights = self.gdpo_reward_keys, self.gdpo_reward_weights
        if keys is not None and weights is not None and len(keys) != len(weights):
            raise ValueError(
                f"algorithm.gdpo_reward_keys has {len(keys)} entries but algorithm.gdpo_reward_weights has "
                f"{len(weights)}; give one weight per key"
            )
