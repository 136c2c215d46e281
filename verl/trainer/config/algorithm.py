"""Typed views of the ``algorithm.*`` block (and the checkpoint node shared by actor and critic).

Built from the Hydra config with ``omega_conf_to_dataclass(config.algorithm)``; each class validates its own
values in ``__post_init__`` and raises ``ValueError`` naming the key, the value and a fix. Nothing here imports
torch: the rejection options of rollout correction are parsed here, the maths using them live in
``verl.trainer.ppo.rollout_corr_helper``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.utils.config_keys import Refuse, key

__all__ = [
    "KL_PENALTY_TYPES",
    "ROLLOUT_RS_OPTIONS",
    "AlgoConfig",
    "CheckpointConfig",
    "FilterGroupsConfig",
    "KLControlConfig",
    "PFPPOConfig",
    "RSOption",
    "RolloutCorrectionConfig",
    "check_kl_penalty",
    "parse_rollout_rs",
]

# Estimator names accepted by ``core_algos.kl_penalty``; a trailing "+" (straight-through k2 gradient) is allowed.
KL_PENALTY_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3", "full")
CHECKPOINT_CONTENTS = ("model", "optimizer", "extra", "hf_model")

# fmt: off
ROLLOUT_RS_OPTIONS = (
    "token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3",
    "seq_mean_k1", "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3",
)
# fmt: on
# verl 0.6 spelled the rejection level token / sequence / geometric (a ratio bound on the token, the product or the
# geometric mean); those are the k1 options on the same statistic.
_LEGACY_RS = {"token": "token_k1", "sequence": "seq_sum_k1", "geometric": "seq_mean_k1"}
_RS_KEY = "algorithm.rollout_correction.rollout_rs"
_RS_THRESHOLD_KEY = "algorithm.rollout_correction.rollout_rs_threshold"

RSOption = tuple[str, float | None, float]
"""``(option, lower, upper)``: ratio-space bounds; ``lower`` is set for k1 options only."""


def check_kl_penalty(key: str, value: str) -> None:
    """Validate a KL estimator name (``kl``, ``low_var_kl``, ``k3+`` ...)."""
    base = value[:-1] if isinstance(value, str) and value.endswith("+") else value
    check_choice(key, base, KL_PENALTY_TYPES, "A trailing '+' selects the straight-through k2 gradient.")


def _kl_type_ok(value: Any) -> bool:
    return not (isinstance(value, str) and value.rstrip("+") == "full")


def full_kl_refusal() -> Refuse:
    return Refuse(
        _kl_type_ok,
        "kl, k1, abs, mse, k2, low_var_kl, k3 (optionally with a trailing +)",
        "the full-vocabulary KL is not implemented; use low_var_kl (k3) or kl (k1)",
        "full: KL over the whole vocabulary distribution (needs full logits)",
        "full",
    )


def _rs_error(key: str, value: Any, why: str) -> ValueError:
    return ValueError(
        f"{key}={value!r}: {why}. Valid rollout_rs options (comma-separated, combined with AND): "
        f"{', '.join(ROLLOUT_RS_OPTIONS)}; k1 thresholds are 'lo_up' or a single u (lo = 1/u), k2/k3 thresholds a "
        "single positive upper bound; give one threshold for all options or one per option, comma-separated."
    )


def _parse_bound(option: str, text: str, lower: float | None, threshold: Any) -> RSOption:
    try:
        parts = [float(p) for p in text.strip().split("_")]
    except ValueError:
        raise _rs_error(_RS_THRESHOLD_KEY, threshold, f"cannot read {text!r} as a number") from None
    if min(parts) <= 0:
        raise _rs_error(_RS_THRESHOLD_KEY, threshold, f"bounds must be positive, got {text!r}")
    if option.endswith("k1"):
        if len(parts) == 1:
            parts = [1.0 / parts[0] if lower is None else lower, parts[0]]
        if len(parts) != 2 or parts[0] > parts[1]:
            raise _rs_error(_RS_THRESHOLD_KEY, threshold, f"{option} needs 0 < lo <= up, got {text!r}")
        return option, parts[0], parts[1]
    if len(parts) != 1:
        raise _rs_error(_RS_THRESHOLD_KEY, threshold, f"{option} takes a single positive upper bound, got {text!r}")
    return option, None, parts[0]


def parse_rollout_rs(
    rollout_rs: str | None, rollout_rs_threshold: str | float | None, rollout_rs_threshold_lower: float | None = None
) -> list[RSOption]:
    """Parse the rejection options and their thresholds.

    Example: ``parse_rollout_rs("token_k1,seq_max_k2", "0.5_2.0,0.1")`` gives
    ``[("token_k1", 0.5, 2.0), ("seq_max_k2", None, 0.1)]``; ``parse_rollout_rs("seq_mean_k1", 4.0)`` gives
    ``[("seq_mean_k1", 0.25, 4.0)]``.

    Args:
        rollout_rs: comma list of :data:`ROLLOUT_RS_OPTIONS` (0.6 names token/sequence/geometric map to the k1
            options); ``None`` or empty disables rejection.
        rollout_rs_threshold: a number, or a string with one entry for all options or one per option.
        rollout_rs_threshold_lower: 0.6-era key; the ``lo`` of k1 options given a single value (default ``1/u``).

    Returns:
        ``[(option, lower, upper)]`` in ratio space; ``lower`` is ``None`` for k2/k3 options.

    Raises:
        ValueError: naming ``algorithm.rollout_correction.rollout_rs`` or ``..._threshold`` and the valid choices.
    """
    if rollout_rs is None or not str(rollout_rs).strip():
        return []
    options = [_LEGACY_RS.get(name.strip(), name.strip()) for name in str(rollout_rs).split(",")]
    for name in options:
        if name not in ROLLOUT_RS_OPTIONS:
            raise _rs_error(_RS_KEY, rollout_rs, f"unknown option {name!r}")
    if rollout_rs_threshold is None or isinstance(rollout_rs_threshold, bool):
        raise _rs_error(
            _RS_THRESHOLD_KEY, rollout_rs_threshold, f"a threshold is required with rollout_rs={rollout_rs}"
        )
    if isinstance(rollout_rs_threshold, int | float):
        entries = [str(float(rollout_rs_threshold))] * len(options)
    else:
        entries = str(rollout_rs_threshold).split(",")
        entries = entries * len(options) if len(entries) == 1 else entries
        if len(entries) != len(options):
            why = f"{len(entries)} thresholds for {len(options)} options"
            raise _rs_error(_RS_THRESHOLD_KEY, rollout_rs_threshold, why)
    return [_parse_bound(o, t, rollout_rs_threshold_lower, rollout_rs_threshold) for o, t in zip(options, entries)]


@dataclass
class KLControlConfig(BaseConfig):
    """``algorithm.kl_ctrl``: the coefficient of the in-reward KL penalty."""

    _path = "algorithm.kl_ctrl"

    type: str = key("fixed", choices=("fixed", "adaptive"))
    """fixed: constant coefficient; adaptive: steered towards target_kl over horizon steps."""
    kl_coef: float = 0.001
    """Initial (fixed: constant) KL coefficient."""
    horizon: int = 10000
    """Adaptive controller: steps over which the coefficient reacts to the KL error."""
    target_kl: float = 0.1
    """Adaptive controller: KL value the coefficient steers towards."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_ctrl.kl_coef={self.kl_coef} must be >= 0")
        if self.type == "adaptive" and self.horizon <= 0:
            raise ValueError(f"algorithm.kl_ctrl.horizon={self.horizon} must be > 0 for the adaptive controller")


@dataclass
class PFPPOConfig(BaseConfig):
    """``algorithm.pf_ppo``: policy-filtration PPO resampling of the batch by reward."""

    _path = "algorithm.pf_ppo"

    reweight_method: str = key("pow", choices=("pow", "max_min", "max_random"))
    """pow | max_min | max_random."""
    weight_pow: float = 2.0
    """Exponent used by the pow method."""


@dataclass
class FilterGroupsConfig(BaseConfig):
    """``algorithm.filter_groups``: DAPO dynamic sampling (drop groups whose metric has zero variance)."""

    _path = "algorithm.filter_groups"

    enable: bool = False
    """Turn dynamic sampling on."""
    metric: str | None = None
    """Per-sample metric whose within-group variance decides whether a group is kept (e.g. acc, score)."""
    max_num_gen_batches: int = 0
    """Generation batches to try before giving up on filling a step; 0 means no limit."""
    max_inflight_gen_batches: int | None = key(
        None,
        since="0.9",
        v09_default=1,
        refuse=Refuse(
            lambda v: v in (None, 1),
            "1",
            "generation batches are produced one at a time; set 1",
            "generation batches kept in flight at once while groups are filtered",
            2,
        ),
    )
    """Generation batches in flight at once (null: 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_num_gen_batches < 0:
            raise ValueError(f"algorithm.filter_groups.max_num_gen_batches={self.max_num_gen_batches} must be >= 0")


@dataclass
class RolloutCorrectionConfig(BaseConfig):
    """``algorithm.rollout_correction``: importance weights / rejection for rollout-vs-training mismatch.

    Used by :mod:`verl.trainer.ppo.rollout_corr_helper`. The YAML node defaults ``rollout_is`` to null (off); the
    dataclass default ``"sequence"`` applies where no node is given (e.g. ``actor.policy_loss.rollout_correction``).
    """

    _path = "algorithm.rollout_correction"

    rollout_is: str | None = key("sequence", choices=(None, "token", "sequence"))
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
    loss_type: str = key("ppo_clip", choices=("ppo_clip", "reinforce"))
    """Bypass-mode loss: ppo_clip (PPO with pi_old = pi_rollout) or reinforce (-A * log_prob * IS weight)."""
    rollout_is_batch_normalize: bool = False
    """Rescale the truncated IS weights to mean 1 over the batch (over all ranks inside workers)."""
    rollout_rs_threshold_lower: float | None = None
    """Deprecated (verl 0.6): lower bound of k1 options given a single threshold (default 1/threshold)."""
    rollout_token_veto_threshold: float | None = None
    """Deprecated (verl 0.6): reject a whole row when any valid token's ratio pi_train/pi_rollout is below this."""
    use_policy_gradient: bool = key(
        False, effect="inert", reason="deprecated 0.6 alias, turned into loss_type=reinforce when the node is built"
    )
    """Deprecated (verl 0.6): true means loss_type=reinforce."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_policy_gradient:
            self._set("loss_type", "reinforce")
        prefix = "algorithm.rollout_correction"
        for name in ("rollout_is_threshold", "rollout_rs_threshold_lower", "rollout_token_veto_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value <= 0):
                raise ValueError(f"{prefix}.{name}={value!r} must be a positive number")
        if self.rollout_rs and self.rollout_rs_threshold is None:
            # verl builds the node without a threshold; the trainer's pre-flight refuses the run before Ray
            parse_rollout_rs(self.rollout_rs, 1.0)  # the option names at least
        else:
            parse_rollout_rs(self.rollout_rs, self.rollout_rs_threshold, self.rollout_rs_threshold_lower)

    # ---- verl's presets --------------------------------------------------------------------------------------
    @classmethod
    def disabled(cls) -> RolloutCorrectionConfig:
        """Metrics only: no IS weights, no rejection."""
        return cls(rollout_is=None, rollout_rs=None)

    @classmethod
    def decoupled_token_is(cls, threshold: float = 2.0) -> RolloutCorrectionConfig:
        """Decoupled (3 policies) PPO with truncated per-token IS weights."""
        return cls(rollout_is="token", rollout_is_threshold=threshold, rollout_rs=None)

    @classmethod
    def decoupled_seq_is(cls, threshold: float = 2.0) -> RolloutCorrectionConfig:
        """Decoupled PPO with truncated sequence-level IS weights."""
        return cls(rollout_is="sequence", rollout_is_threshold=threshold, rollout_rs=None)

    @classmethod
    def decoupled_seq_is_rs(cls, is_threshold: float = 2.0, rs_threshold: float = 2.0) -> RolloutCorrectionConfig:
        """Decoupled PPO with sequence IS weights and rejection on the sequence ratio (seq_sum_k1)."""
        return cls(
            rollout_is="sequence",
            rollout_is_threshold=is_threshold,
            rollout_rs="seq_sum_k1",
            rollout_rs_threshold=rs_threshold,
        )

    @classmethod
    def decoupled_geo_rs(
        cls, rs_threshold: float = 1.001, veto_threshold: float | None = None
    ) -> RolloutCorrectionConfig:
        """Decoupled PPO with rejection on the geometric-mean ratio (seq_mean_k1) and no IS weights."""
        return cls(
            rollout_is=None,
            rollout_rs="seq_mean_k1",
            rollout_rs_threshold=rs_threshold,
            rollout_token_veto_threshold=veto_threshold,
        )

    @classmethod
    def decoupled_geo_rs_seq_tis(
        cls, is_threshold: float = 2.0, rs_threshold: float = 1.001
    ) -> RolloutCorrectionConfig:
        """Decoupled PPO with geometric-mean rejection (seq_mean_k1) and truncated sequence IS weights."""
        return cls(
            rollout_is="sequence",
            rollout_is_threshold=is_threshold,
            rollout_rs="seq_mean_k1",
            rollout_rs_threshold=rs_threshold,
        )

    @classmethod
    def ppo_is_bypass(cls, threshold: float = 2.0) -> RolloutCorrectionConfig:
        """Bypass mode: PPO clipped against the rollout policy, no old-log-prob pass."""
        return cls(rollout_is="token", rollout_is_threshold=threshold, bypass_mode=True, loss_type="ppo_clip")

    @classmethod
    def pg_is(cls, threshold: float = 2.0) -> RolloutCorrectionConfig:
        """Bypass mode: policy gradient (no clipping) with truncated sequence IS weights."""
        return cls(rollout_is="sequence", rollout_is_threshold=threshold, bypass_mode=True, loss_type="reinforce")

    @classmethod
    def pg_rs(cls, rs_threshold: float = 1.001, veto_threshold: float | None = None) -> RolloutCorrectionConfig:
        """Bypass mode: policy gradient with geometric-mean rejection (seq_mean_k1) and no IS weights."""
        return cls(
            rollout_is=None,
            rollout_rs="seq_mean_k1",
            rollout_rs_threshold=rs_threshold,
            rollout_token_veto_threshold=veto_threshold,
            bypass_mode=True,
            loss_type="reinforce",
        )


def _async_save_refusal() -> Refuse:
    return Refuse(
        lambda v: not v,
        "false",
        "checkpoints are written synchronously; set false",
        "asynchronous checkpoint saving (implemented for Megatron only)",
        True,
    )


@dataclass
class CheckpointConfig(BaseConfig):
    """``*.checkpoint``: what a worker saves and loads."""

    _path = "checkpoint"

    save_contents: list[str] = key(factory=lambda: ["model", "optimizer", "extra"])
    """Parts written at each save: model, optimizer, extra (RNG, scheduler), hf_model (HF-format weights)."""
    load_contents: list[str] = key(factory=lambda: ["model", "optimizer", "extra"], follows=".save_contents")
    """Parts restored on resume (follows save_contents)."""
    async_save: bool = key(False, refuse=_async_save_refusal())
    """Write checkpoints in the background."""
    strict: bool | None = key(
        None,
        since="0.9",
        v09_default=True,
        refuse=Refuse(
            lambda v: v in (None, True),
            "true",
            "weight hand-over to the rollout always checks the parameter names strictly; set true",
            "false skips the strict name check when weights are exported",
            False,
        ),
    )
    """Check parameter names strictly when weights are exported (null: true)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("save_contents", "load_contents"):
            for item in getattr(self, name):
                check_choice(f"checkpoint.{name} item", item, CHECKPOINT_CONTENTS)


@dataclass
class AlgoConfig(BaseConfig):
    """``algorithm``: advantage estimation and reward shaping."""

    _path = "algorithm"

    gamma: float = 1.0
    """Discount factor."""
    lam: float = 1.0
    """GAE lambda."""
    adv_estimator: str = "gae"
    """gae, grpo, rloo, reinforce_plus_plus, reinforce_plus_plus_baseline, remax, opo, grpo_passk, gpg, ..."""
    norm_adv_by_std_in_grpo: bool = True
    """GRPO: divide by the group std (false gives Dr.GRPO)."""
    use_kl_in_reward: bool = False
    """Subtract beta * KL(actor || ref) from the token rewards (PPO style)."""
    kl_penalty: str = key("kl", effect="implemented", refuse=full_kl_refusal())
    """KL estimator of the in-reward penalty: kl|k1, abs, mse|k2, low_var_kl|k3 (a trailing + for k2 gradients)."""
    kl_ctrl: KLControlConfig = key(factory=KLControlConfig)
    """Coefficient controller of the in-reward KL penalty."""
    use_pf_ppo: bool = False
    """Resample the batch by reward (PF-PPO, GAE only)."""
    pf_ppo: PFPPOConfig | None = key(None, yaml_default=PFPPOConfig())
    """PF-PPO settings (null: the defaults below)."""
    filter_groups: FilterGroupsConfig | None = key(None, yaml_default=FilterGroupsConfig())
    """DAPO dynamic sampling: drop groups whose metric is identical across the group (null: off)."""
    rollout_correction: RolloutCorrectionConfig | None = key(
        None, yaml_default=RolloutCorrectionConfig(rollout_is=None)
    )
    """Importance weighting / rejection of samples where rollout and training log-probs disagree (needs
    actor_rollout_ref.rollout.calculate_log_probs=true; null: off)."""
    gdpo_reward_keys: list[str] | None = None
    """GDPO: reward-extra keys normalised separately."""
    gdpo_reward_weights: list[float] | None = None
    """GDPO: weights of those keys."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"algorithm.{name}={value} must lie in [0, 1]")
        if not self.adv_estimator:
            raise ValueError("algorithm.adv_estimator is empty; set it, e.g. algorithm.adv_estimator=grpo")
        check_kl_penalty("algorithm.kl_penalty", self.kl_penalty)
        keys, weights = self.gdpo_reward_keys, self.gdpo_reward_weights
        if keys is not None and weights is not None and len(keys) != len(weights):
            raise ValueError(
                f"algorithm.gdpo_reward_keys has {len(keys)} entries but algorithm.gdpo_reward_weights has "
                f"{len(weights)}; give one weight per key"
            )
