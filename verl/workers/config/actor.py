"""Typed views of ``actor_rollout_ref.actor``: the policy being trained.

``ActorConfig`` holds the backend-independent PPO settings; ``FSDPActorConfig`` and ``McoreActorConfig`` add
what their backend needs. Batch sizes follow verl: ``ppo_mini_batch_size`` counts prompts (the worker multiplies
by ``rollout_n`` and divides by the data-parallel size), micro batches count sequences per rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.trainer.config.algorithm import CheckpointConfig, RolloutCorrectionConfig, check_kl_penalty
from verl.workers.config.engine import FSDPEngineConfig, McoreEngineConfig
from verl.workers.config.optimizer import FSDPOptimizerConfig, OptimizerConfig

__all__ = ["LOSS_AGG_MODES", "ActorConfig", "FSDPActorConfig", "McoreActorConfig", "PolicyLossConfig"]

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def check_loss_agg_mode(key: str, value: str) -> None:
    """Validate a loss aggregation mode."""
    check_choice(key, value, LOSS_AGG_MODES, "token-mean is the usual choice; seq-mean-token-sum-norm is Dr.GRPO.")


def check_micro_batch_exclusive(prefix: str, micro: int | None, micro_per_gpu: int | None, name: str) -> None:
    """Exactly one of ``<name>`` (global, deprecated) and ``<name>_per_gpu`` may be set."""
    if micro is not None and micro_per_gpu is not None:
        raise ValueError(
            f"{prefix}.{name}={micro} and {prefix}.{name}_per_gpu={micro_per_gpu} are both set; keep only "
            f"{prefix}.{name}_per_gpu (the global {name} is deprecated)"
        )


@dataclass
class PolicyLossConfig(BaseConfig):
    """``actor.policy_loss``: which registered policy loss the actor uses and its extra knobs."""

    loss_mode: str = "vanilla"
    """Name in the policy-loss registry: vanilla, gspo, gpg, clip_cov, kl_cov, geo_mean, cispo, ..."""
    clip_cov_ratio: float = 0.0002
    """clip_cov: fraction of tokens whose gradient is clipped."""
    clip_cov_lb: float = 1.0
    """clip_cov: lower bound of the covariance window."""
    clip_cov_ub: float = 5.0
    """clip_cov: upper bound of the covariance window."""
    kl_cov_ratio: float = 0.0002
    """kl_cov: fraction of tokens that get the KL penalty."""
    ppo_kl_coef: float = 0.1
    """kl_cov: coefficient of that penalty."""
    rollout_correction: RolloutCorrectionConfig | None = None
    """bypass_mode: ``algorithm.rollout_correction``, put here by the trainer when ``bypass_mode`` is on."""

    def __post_init__(self) -> None:
        if not self.loss_mode:
            raise ValueError("actor.policy_loss.loss_mode is empty; use e.g. vanilla")


@dataclass
class ActorConfig(BaseConfig):
    """PPO settings of the actor, shared by every backend."""

    _mutable_fields = BaseConfig._mutable_fields | {
        "ppo_mini_batch_size",
        "ppo_micro_batch_size",
        "ppo_micro_batch_size_per_gpu",
        "ppo_infer_micro_batch_size_per_gpu",
    }

    strategy: str = "fsdp"
    """Training backend: fsdp, fsdp2 or megatron."""
    ppo_mini_batch_size: int = 256
    """Prompts per optimizer step (before x rollout_n)."""
    ppo_micro_batch_size: int | None = None
    """Deprecated global micro batch; use ppo_micro_batch_size_per_gpu."""
    ppo_micro_batch_size_per_gpu: int | None = None
    """Sequences per forward/backward on one rank (gradient accumulation unit)."""
    use_dynamic_bsz: bool = False
    """Pack micro batches by token count (ppo_max_token_len_per_gpu) instead of a fixed size."""
    ppo_max_token_len_per_gpu: int = 16384
    """Token budget of one micro batch with use_dynamic_bsz."""
    clip_ratio: float = 0.2
    """PPO clip epsilon (used where the low/high values are null)."""
    clip_ratio_low: float | None = 0.2
    """Lower clip epsilon: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: float | None = 0.2
    """Upper clip epsilon: ratio <= 1 + clip_ratio_high (DAPO clip-higher uses e.g. 0.28)."""
    clip_ratio_c: float = 3.0
    """Dual-clip bound for negative advantages; must exceed 1."""
    freeze_vision_tower: bool = False
    """Do not train the vision encoder of a VLM."""
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    """Policy-loss selection."""
    loss_agg_mode: str = "token-mean"
    """How token losses become a scalar: token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm."""
    loss_scale_factor: float | None = None
    """Divisor of seq-mean-token-sum-norm; null uses the response length."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus."""
    calculate_entropy: bool = False
    """Compute entropy during the update even when entropy_coeff is 0 (for metrics)."""
    calculate_sum_pi_squared: bool = False
    """Also return sum_v pi(v)^2 per token from the log-prob pass (the optimal-token-baseline estimators need it)."""
    skip_on_policy_old_log_prob: bool = True
    """Not a verl key. When the update is on-policy (legacy worker path, one mini-batch, ppo_epochs=1) and nothing
    before the update reads old_log_probs, the trainer does not run the old-log-prob pass: the update's own forward
    gives the same log-probs (its ratio is exactly 1 either way) and entropies. False always runs the pass."""
    use_kl_loss: bool = False
    """Add a KL(actor || ref) term to the loss (GRPO style); creates the reference policy."""
    kl_loss_coef: float = 0.001
    """Weight of that KL term."""
    kl_loss_type: str = "low_var_kl"
    """KL estimator of the loss term: kl|k1, abs, mse|k2, low_var_kl|k3, full (a trailing + for k2 gradients)."""
    use_torch_compile: bool = True
    """torch.compile the log-prob helpers."""
    ppo_epochs: int = 1
    """Passes over each batch."""
    shuffle: bool = False
    """Shuffle mini-batches between epochs."""
    data_loader_seed: int | None = 42
    """Seed of the mini-batch shuffle."""
    rollout_n: int = 1
    """Responses per prompt (mirrors actor_rollout_ref.rollout.n)."""
    tau_pos: float = 1.0
    """SAPO gate temperature for positive advantages."""
    tau_neg: float = 1.05
    """SAPO gate temperature for negative advantages."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """What the actor saves and loads."""
    optim: OptimizerConfig = field(default_factory=FSDPOptimizerConfig)
    """Optimizer and LR schedule."""
    use_fused_kernels: bool = False
    """Mirrors actor_rollout_ref.model.use_fused_kernels."""
    profiler: dict[str, Any] = field(default_factory=dict)
    """Per-role profiler settings (see global_profiler)."""
    global_batch_info: dict[str, Any] = field(default_factory=dict)
    """Run-time, not a YAML key: the current mini-batch's global counts on the engine path (``dp_size``,
    ``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``), read by the policy losses; empty on the
    legacy path."""

    def __post_init__(self) -> None:
        p = "actor_rollout_ref.actor"
        check_choice(f"{p}.strategy", self.strategy, ("fsdp", "fsdp2", "megatron"))
        check_loss_agg_mode(f"{p}.loss_agg_mode", self.loss_agg_mode)
        check_kl_penalty(f"{p}.kl_loss_type", self.kl_loss_type)
        if self.ppo_mini_batch_size < 1:
            raise ValueError(f"{p}.ppo_mini_batch_size={self.ppo_mini_batch_size} must be >= 1 (counted in prompts)")
        if self.ppo_epochs < 1:
            raise ValueError(f"{p}.ppo_epochs={self.ppo_epochs} must be >= 1")
        if self.clip_ratio <= 0:
            raise ValueError(f"{p}.clip_ratio={self.clip_ratio} must be > 0")
        for key in ("clip_ratio_low", "clip_ratio_high"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"{p}.{key}={value} must be >= 0 (or null to use clip_ratio)")
        if self.clip_ratio_low is not None and self.clip_ratio_low >= 1:
            raise ValueError(f"{p}.clip_ratio_low={self.clip_ratio_low} must be < 1 so that 1 - clip_ratio_low > 0")
        if self.clip_ratio_c <= 1.0:
            raise ValueError(f"{p}.clip_ratio_c={self.clip_ratio_c} must be > 1 (dual-clip lower bound)")
        if not self.use_dynamic_bsz:
            check_micro_batch_exclusive(
                p, self.ppo_micro_batch_size, self.ppo_micro_batch_size_per_gpu, "ppo_micro_batch_size"
            )

    @property
    def clip_low(self) -> float:
        """Effective lower clip epsilon."""
        return self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low

    @property
    def clip_high(self) -> float:
        """Effective upper clip epsilon."""
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high


@dataclass
class FSDPActorConfig(ActorConfig):
    """Actor trained with FSDP / FSDP2."""

    grad_clip: float = 1.0
    """Gradient-norm clip."""
    ulysses_sequence_parallel_size: int = 1
    """Ulysses sequence-parallel ranks (splits long sequences across ranks)."""
    entropy_from_logits_with_chunking: bool = False
    """Compute entropy in chunks to save memory."""
    entropy_checkpointing: bool = False
    """Recompute entropy in backward to save memory."""
    fsdp_config: FSDPEngineConfig = field(default_factory=FSDPEngineConfig)
    """Sharding and offload of the actor."""
    use_remove_padding: bool = False
    """Mirrors actor_rollout_ref.model.use_remove_padding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("actor_rollout_ref.actor.strategy", self.strategy, ("fsdp", "fsdp2"))
        if self.ulysses_sequence_parallel_size < 1:
            raise ValueError(
                f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={self.ulysses_sequence_parallel_size} "
                "must be >= 1"
            )


@dataclass
class McoreActorConfig(ActorConfig):
    """Actor trained with Megatron-core (backend lands in a later issue; the layout is read from ``megatron``)."""

    # The Megatron YAML reuses ppo_trainer.yaml, whose actor node carries these FSDP-only keys.
    _ignored_keys = frozenset(
        {
            "fsdp_config",
            "ulysses_sequence_parallel_size",
            "entropy_from_logits_with_chunking",
            "entropy_checkpointing",
            "use_remove_padding",
        }
    )

    strategy: str = "megatron"
    """Always megatron for this class."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    megatron: McoreEngineConfig = field(default_factory=McoreEngineConfig)
    """Parallel layout of the actor."""
    load_weight: bool = True
    """Load the HF weights at start (false for dummy-weight experiments)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("actor_rollout_ref.actor.strategy", self.strategy, ("megatron",))
