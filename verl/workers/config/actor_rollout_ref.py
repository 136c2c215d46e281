"""Typed views of ``actor_rollout_ref``: the policy model shared by the actor, the rollout and the reference.

:class:`ActorRolloutRefConfig` is what ``ActorRolloutRefWorker`` receives; :class:`RefConfig` is the frozen
reference policy's node (it follows the actor's settings unless overridden).
"""

from __future__ import annotations

from dataclasses import dataclass

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.profiler.config import ProfilerConfig
from verl.workers.config.actor import ActorConfig, FSDPActorConfig, check_micro_batch_exclusive
from verl.workers.config.engine import FSDPEngineConfig
from verl.workers.config.model import HFModelConfig
from verl.workers.config.rollout import RolloutConfig

__all__ = ["ActorRolloutRefConfig", "RefConfig"]

_R = "actor_rollout_ref.ref"


@dataclass
class RefConfig(BaseConfig):
    """``actor_rollout_ref.ref``: the frozen reference policy (created when a KL term needs it)."""

    _path = "actor_rollout_ref.ref"

    _emit_target = False
    # The Megatron YAML adds these to the ref node: the Megatron reference follows the actor's layout, and values
    # that differ from it are refused before the tree is built (build._check_reference_follows_megatron_actor).
    _ignored_keys = frozenset({"megatron", "load_weight"})

    strategy: str = key("fsdp", follows="actor_rollout_ref.actor.strategy")
    """Training backend of the reference (follows the actor's)."""
    use_torch_compile: bool = key(
        True,
        follows="actor_rollout_ref.actor.use_torch_compile",
        effect="inert",
        reason="speed only, as actor.use_torch_compile",
    )
    """torch.compile the log-prob helpers (follows the actor's)."""
    log_prob_micro_batch_size: int | None = None
    """Deprecated global micro batch of the reference forward."""
    log_prob_micro_batch_size_per_gpu: int | None = None
    """Sequences per rank in one reference forward (one of the two, unless log_prob_use_dynamic_bsz)."""
    log_prob_use_dynamic_bsz: bool = key(False, follows="actor_rollout_ref.actor.use_dynamic_bsz")
    """Pack the reference's micro batches by token count (follows the actor's)."""
    log_prob_max_token_len_per_gpu: int = key(16384, follows="actor_rollout_ref.actor.ppo_max_token_len_per_gpu")
    """Token budget of a reference micro batch with dynamic bsz (follows the actor's)."""
    profiler: ProfilerConfig = key(factory=ProfilerConfig)
    """Per-role profiler settings."""
    fsdp_config: FSDPEngineConfig = key(factory=FSDPEngineConfig)
    """Sharding and offload of the reference (never holds an optimizer)."""
    ulysses_sequence_parallel_size: int = key(1, follows="actor_rollout_ref.actor.ulysses_sequence_parallel_size")
    """Ulysses sequence-parallel ranks (follows the actor's; the reference shares the actor's ranks and data layout,
    so it must equal the actor's when both run)."""
    entropy_from_logits_with_chunking: bool = key(
        False, effect="inert", reason="the reference computes no entropy (log-probs only)"
    )
    """Compute entropy in chunks (the reference computes none)."""
    entropy_checkpointing: bool = key(
        False, effect="inert", reason="the reference computes no entropy (log-probs only)"
    )
    """Recompute entropy in backward (the reference computes none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.log_prob_use_dynamic_bsz:
            check_micro_batch_exclusive(
                _R, self.log_prob_micro_batch_size, self.log_prob_micro_batch_size_per_gpu, "log_prob_micro_batch_size"
            )

    def scoring_actor_config(self, use_remove_padding: bool) -> FSDPActorConfig:
        """The actor view the reference's log-prob forward runs with (its forward settings, no PPO knobs);
        ``use_remove_padding`` is the policy model's (actor_rollout_ref.model.use_remove_padding)."""
        return FSDPActorConfig(
            strategy=self.strategy,
            use_remove_padding=use_remove_padding,
            ulysses_sequence_parallel_size=self.ulysses_sequence_parallel_size,
            fsdp_config=self.fsdp_config,
        )


@dataclass
class ActorRolloutRefConfig(BaseConfig):
    """``actor_rollout_ref``: one model used by the actor (training), the rollout (generation) and the reference."""

    _emit_target = False

    hybrid_engine: bool = key(
        True,
        refuse=Refuse(
            lambda v: bool(v),
            "true",
            "actor and rollout always share workers (verl's hybrid engine); set true",
            "false runs the rollout on separate workers (unsupported by verl's trainer as well)",
            False,
        ),
    )
    """Actor and rollout share devices and swap weights each step; the only supported layout."""
    nccl_timeout: int = 600
    """Seconds before a stuck collective aborts."""
    model: HFModelConfig = key(factory=HFModelConfig)
    """The policy's Hugging Face model."""
    actor: ActorConfig = key(factory=FSDPActorConfig)
    """The policy being trained."""
    ref: RefConfig = key(factory=RefConfig)
    """The frozen reference policy (created when actor.use_kl_loss or algorithm.use_kl_in_reward is on)."""
    rollout: RolloutConfig = key(factory=RolloutConfig)
    """The generation engine."""
