"""Typed views of ``actor_rollout_ref.actor``: the policy being trained.

``ActorConfig`` holds the backend-independent PPO settings; ``FSDPActorConfig`` and ``McoreActorConfig`` add
what their backend needs. Batch sizes follow verl: ``ppo_mini_batch_size`` counts prompts (the worker multiplies
by ``rollout_n`` and divides by the data-parallel size), micro batches count sequences per rank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.trainer.config.algorithm import CheckpointConfig, RolloutCorrectionConfig, check_kl_penalty, full_kl_refusal
from verl.utils.config_keys import Refuse, key
from verl.utils.profiler.config import ProfilerConfig
from verl.workers.config.engine import FSDPEngineConfig, McoreEngineConfig
from verl.workers.config.model import refuse_fused
from verl.workers.config.optimizer import FSDPOptimizerConfig, OptimizerConfig

__all__ = ["LOSS_AGG_MODES", "ActorConfig", "FSDPActorConfig", "McoreActorConfig", "PolicyLossConfig"]

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
_A = "actor_rollout_ref.actor"
_SPEED_ONLY_COMPILE = (
    "speed only: verl compiles its log-prob/entropy helpers (same maths); we always run them eagerly, which is what "
    "verl does with false"
)


def check_loss_agg_mode(key: str, value: str) -> None:
    """Validate a loss aggregation mode."""
    check_choice(key, value, LOSS_AGG_MODES, "token-mean is the usual choice; seq-mean-token-sum-norm is Dr.GRPO.")


def check_micro_batch_exclusive(prefix: str, micro: int | None, micro_per_gpu: int | None, name: str) -> None:
    """Exactly one of ``<name>`` (global, deprecated) and ``<name>_per_gpu`` may be set."""
    if micro is not None and micro_per_gpu is not None:
        raise ValueError(
            f"You have set both {prefix}.{name}={micro} AND {prefix}.{name}_per_gpu={micro_per_gpu}; keep only "
            f"{prefix}.{name}_per_gpu (the global {name} is deprecated)"
        )


def refuse_shuffle(who: str) -> Refuse:
    return Refuse(
        lambda v: not v,
        "false",
        f"mini-batches are contiguous splits of the step's batch, as in verl's legacy {who}; set false",
        f"accepted, but its legacy FSDP {who} splits mini-batches without shuffling as well",
        True,
    )


def _megatron_refusal(key_name: str) -> Refuse:
    """``strategy=megatron`` on an FSDP node: verl's Megatron workers come with their own config file."""
    return Refuse(
        lambda v: v in ("fsdp", "fsdp2"),
        "fsdp or fsdp2",
        "the Megatron workers read verl's Megatron config: run with --config-name ppo_megatron_trainer (and set the "
        "layout under actor_rollout_ref.actor.megatron)",
        "megatron trains with megatron-core (TP/PP/CP) workers",
        "megatron",
    )


@dataclass
class PolicyLossConfig(BaseConfig):
    """``actor.policy_loss``: which registered policy loss the actor uses and its extra knobs."""

    _path = "actor_rollout_ref.actor.policy_loss"

    loss_mode: str = "vanilla"
    """A name in the policy-loss registry: vanilla, gspo, gpg, clip_cov, kl_cov, geo_mean, cispo, ..."""
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
    dro_beta: float | None = key(
        None,
        since="0.9",
        v09_default=None,
        refuse=Refuse(
            lambda v: v is None,
            "null",
            "the dro policy loss is not implemented; leave dro_beta unset",
            "the regularisation strength of loss_mode=dro (must be > 0 there)",
            0.1,
        ),
    )
    """dro: regularisation strength (verl v0.9; the dro loss is not implemented here)."""
    rollout_correction: RolloutCorrectionConfig | None = key(
        None,
        in_yaml=False,
        effect="inert",
        reason="not a YAML key: with bypass mode the actor's view gets algorithm.rollout_correction here",
    )
    """bypass_mode: the ``algorithm.rollout_correction`` node the loss recomputes its weights with."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.loss_mode:
            raise ValueError("actor.policy_loss.loss_mode is empty; use e.g. vanilla")


@dataclass
class ActorConfig(BaseConfig):
    """PPO settings of the actor, shared by every backend."""

    _path = "actor_rollout_ref.actor"

    _mutable_fields = BaseConfig._mutable_fields | {
        "ppo_mini_batch_size",
        "ppo_micro_batch_size",
        "ppo_micro_batch_size_per_gpu",
        "ppo_infer_micro_batch_size_per_gpu",
    }

    strategy: str = key("fsdp", effect="implemented", refuse=_megatron_refusal(f"{_A}.strategy"))
    """Training backend: fsdp | fsdp2 (megatron: --config-name ppo_megatron_trainer)."""
    ppo_mini_batch_size: int = 256
    """Prompts per optimizer step; each update uses ppo_mini_batch_size * rollout.n sequences."""
    ppo_micro_batch_size: int | None = None
    """Deprecated global micro batch; set ppo_micro_batch_size_per_gpu instead."""
    ppo_micro_batch_size_per_gpu: int | None = None
    """Sequences per forward/backward on one rank (the gradient-accumulation unit)."""
    use_dynamic_bsz: bool = False
    """Pack micro batches up to ppo_max_token_len_per_gpu tokens instead of a fixed count."""
    ppo_max_token_len_per_gpu: int = 16384
    """Token budget of one micro batch with use_dynamic_bsz."""
    clip_ratio: float = 0.2
    """PPO clip epsilon (used where clip_ratio_low/high are null)."""
    clip_ratio_low: float | None = 0.2
    """Lower clip epsilon: ratio >= 1 - clip_ratio_low."""
    clip_ratio_high: float | None = 0.2
    """Upper clip epsilon: ratio <= 1 + clip_ratio_high (DAPO's clip-higher raises this, e.g. 0.28)."""
    clip_ratio_c: float = 3.0
    """Dual-clip bound applied to negative advantages; must exceed 1."""
    freeze_vision_tower: bool = key(
        False,
        refuse=Refuse(
            lambda v: not v,
            "false",
            "vision-language models are not supported, so there is no vision tower to freeze; set false",
            "sets requires_grad=False on the VLM's vision tower",
            True,
        ),
    )
    """Do not train the vision encoder of a VLM."""
    policy_loss: PolicyLossConfig = key(factory=PolicyLossConfig)
    """Policy-loss selection."""
    loss_agg_mode: str = key("token-mean", choices=LOSS_AGG_MODES)
    """token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm."""
    loss_scale_factor: float | None = None
    """Divisor of seq-mean-token-sum-norm; null uses the response length."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus."""
    calculate_entropy: bool = False
    """Compute entropy during the update even when entropy_coeff is 0 (for metrics)."""
    calculate_sum_pi_squared: bool = False
    """Return sum_v pi(v)^2 per token with the old log-probs (the optimal_token_baseline estimators need it)."""
    skip_on_policy_old_log_prob: bool = key(True, ours=True)
    """Not a verl key. On-policy updates (legacy workers, one mini-batch, ppo_epochs=1) whose old_log_probs nothing
    else reads skip the old-log-prob pass: the update's forward supplies the same values. false: always run it."""
    use_kl_loss: bool = False
    """GRPO-style KL(actor || ref) term in the loss; turning it on creates the reference policy."""
    kl_loss_coef: float = 0.001
    """Weight of that KL term."""
    kl_loss_type: str = key("low_var_kl", effect="implemented", refuse=full_kl_refusal())
    """kl|k1, abs, mse|k2, low_var_kl|k3 (a trailing + uses the k2 gradient)."""
    use_torch_compile: bool = key(True, effect="inert", reason=_SPEED_ONLY_COMPILE)
    """torch.compile the log-prob helpers."""
    ppo_epochs: int = 1
    """Passes over each batch."""
    shuffle: bool = key(False, refuse=refuse_shuffle("actor"))
    """Shuffle mini-batches between epochs."""
    data_loader_seed: int | None = key(
        42, effect="inert", reason="seeds the mini-batch shuffle, which needs shuffle=true (refused)"
    )
    """Seed of the mini-batch shuffle."""
    rollout_n: int = key(1, follows="actor_rollout_ref.rollout.n")
    """Responses per prompt (follows actor_rollout_ref.rollout.n)."""
    tau_pos: float = 1.0
    """SAPO gate temperature for positive advantages."""
    tau_neg: float = 1.05
    """SAPO gate temperature for negative advantages."""
    checkpoint: CheckpointConfig = key(factory=CheckpointConfig)
    """What the actor saves and loads."""
    optim: OptimizerConfig = key(factory=FSDPOptimizerConfig)
    """Optimizer and LR schedule."""
    use_fused_kernels: bool = key(
        False, follows="actor_rollout_ref.model.use_fused_kernels", refuse=refuse_fused("copied from the model's key")
    )
    """Follows actor_rollout_ref.model.use_fused_kernels."""
    profiler: ProfilerConfig = key(factory=ProfilerConfig)
    """Per-role profiler settings (see global_profiler)."""
    global_batch_info: dict[str, Any] = key(
        factory=dict,
        in_yaml=False,
        effect="inert",
        reason="not a key: the engine path's per-mini-batch counts, handed to the losses in a derived view",
    )
    """Run time, not a YAML key: the current mini-batch's global counts on the engine path (dp_size,
    batch_num_tokens, global_batch_size, loss_scale_factor), read by the policy losses; empty on the legacy path.
    The actor passes them in a new view per mini-batch (dataclasses.replace), never by writing the config."""
    entropy_from_logits_chunk_size: int | None = key(
        None,
        since="0.9",
        v09_default=2048,
        effect="inert",
        reason="memory only: chunk size of the chunked entropy (same numbers)",
    )
    """Chunk size of the chunked entropy (null: 2048)."""
    pad_to_length: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        effect="inert",
        reason="padding of packed micro-batches to a bucket multiple (speed only, same numbers)",
    )
    """Pad packed micro-batches to a bucket multiple (null: false)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_kl_penalty(f"{_A}.kl_loss_type", self.kl_loss_type)
        if self.ppo_mini_batch_size < 1:
            raise ValueError(f"{_A}.ppo_mini_batch_size={self.ppo_mini_batch_size} must be >= 1 (counted in prompts)")
        if self.ppo_epochs < 1:
            raise ValueError(f"{_A}.ppo_epochs={self.ppo_epochs} must be >= 1")
        if self.clip_ratio <= 0:
            raise ValueError(f"{_A}.clip_ratio={self.clip_ratio} must be > 0")
        for name in ("clip_ratio_low", "clip_ratio_high"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{_A}.{name}={value} must be >= 0 (or null to use clip_ratio)")
        if self.clip_ratio_low is not None and self.clip_ratio_low >= 1:
            raise ValueError(f"{_A}.clip_ratio_low={self.clip_ratio_low} must be < 1 so that 1 - clip_ratio_low > 0")
        if self.clip_ratio_c <= 1.0:
            raise ValueError(f"{_A}.clip_ratio_c={self.clip_ratio_c} must be > 1 (dual-clip lower bound)")
        if not self.use_dynamic_bsz:
            check_micro_batch_exclusive(
                _A, self.ppo_micro_batch_size, self.ppo_micro_batch_size_per_gpu, "ppo_micro_batch_size"
            )

    def validate(self, n_gpus: int, train_batch_size: int, model_config: Any = None) -> None:
        """verl's check of this node against the run: the train batch holds a mini batch, and a deprecated global
        micro batch covers every rank (the trainer's pre-flight runs the full per-rank checks)."""
        if not self.use_dynamic_bsz:
            if train_batch_size < self.ppo_mini_batch_size:
                raise ValueError(
                    f"train_batch_size ({train_batch_size}) must be >= {_A}.ppo_mini_batch_size "
                    f"({self.ppo_mini_batch_size})"
                )
            sp_size = getattr(self, "ulysses_sequence_parallel_size", 1)
            if self.ppo_micro_batch_size is not None and self.ppo_micro_batch_size * sp_size < n_gpus:
                raise ValueError(
                    f"{_A}.ppo_micro_batch_size ({self.ppo_micro_batch_size}) * ulysses_sequence_parallel_size "
                    f"({sp_size}) must be >= n_gpus ({n_gpus})"
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
    """Gradient-norm clip (legacy worker path; the engine path reads optim.clip_grad, as verl)."""
    ulysses_sequence_parallel_size: int = 1
    """Ulysses sequence-parallel ranks: each packed micro-batch's tokens are split over this many consecutive ranks
    (all-to-all of attention heads); needs use_remove_padding and a head count it divides."""
    entropy_from_logits_with_chunking: bool = False
    """Compute entropy in chunks to save memory."""
    entropy_checkpointing: bool = False
    """Recompute entropy in backward to save memory."""
    fsdp_config: FSDPEngineConfig = key(factory=FSDPEngineConfig)
    """Sharding and offload of the actor."""
    use_remove_padding: bool = key(True, follows="actor_rollout_ref.model.use_remove_padding")
    """Pack each micro-batch's real tokens into one row (no FLOPs on padding); follows
    actor_rollout_ref.model.use_remove_padding."""

    def validate(self, n_gpus: int, train_batch_size: int, model_config: Any = None) -> None:
        """verl's check, plus: Ulysses sequence parallelism needs the padding-free forward."""
        super().validate(n_gpus, train_batch_size, model_config)
        remove_padding = (model_config or {}).get("use_remove_padding", False)
        if self.ulysses_sequence_parallel_size > 1 and not remove_padding:
            raise ValueError(
                "When using sequence parallelism for the actor/ref policy, you must enable `use_remove_padding` "
                "(actor_rollout_ref.model.use_remove_padding=True)"
            )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(f"{_A}.strategy", self.strategy, ("fsdp", "fsdp2"))
        if self.ulysses_sequence_parallel_size < 1:
            raise ValueError(f"{_A}.ulysses_sequence_parallel_size={self.ulysses_sequence_parallel_size} must be >= 1")


@dataclass
class McoreActorConfig(ActorConfig):
    """Actor trained with Megatron-core (``verl.workers.megatron_workers``; the layout is read from ``megatron``)."""

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

    strategy: str = key("megatron", effect="implemented")
    """Always megatron for this class."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    megatron: McoreEngineConfig = key(factory=McoreEngineConfig)
    """Parallel layout of the actor."""
    load_weight: bool = True
    """Load the HF weights at start (false for dummy-weight experiments)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(f"{_A}.strategy", self.strategy, ("megatron",))


def bypass_actor_view(actor: ActorConfig, rollout_correction: Any) -> ActorConfig:
    """The actor's view under ``algorithm.rollout_correction.bypass_mode``: the ``bypass_mode`` policy loss with
    that node; unchanged otherwise. A new object: the validated tree is never written."""
    from verl.utils.config import as_config

    if rollout_correction is None:
        return actor
    correction = as_config(rollout_correction, RolloutCorrectionConfig)
    if not correction.bypass_mode:
        return actor
    loss = dataclasses.replace(actor.policy_loss, loss_mode="bypass_mode", rollout_correction=correction)
    return dataclasses.replace(actor, policy_loss=loss)
