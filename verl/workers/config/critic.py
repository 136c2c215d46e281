"""Typed views of ``critic``: the value model used by GAE.

Batch sizes mirror the actor's (``ppo_mini_batch_size`` in prompts, micro batches in sequences per rank).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.trainer.config.algorithm import CheckpointConfig
from verl.workers.config.actor import check_loss_agg_mode, check_micro_batch_exclusive
from verl.workers.config.engine import FSDPEngineConfig, McoreEngineConfig
from verl.workers.config.optimizer import FSDPOptimizerConfig, OptimizerConfig

__all__ = ["CriticConfig", "CriticModelConfig", "FSDPCriticConfig", "McoreCriticConfig"]


@dataclass
class CriticModelConfig(BaseConfig):
    """``critic.model``: the value model (a causal LM with a scalar head); defaults follow the actor's model."""

    path: str = "~/models/deepseek-llm-7b-chat"
    """Local directory or hub id of the value model."""
    tokenizer_path: str | None = None
    """Tokenizer directory; the YAML points it at the actor's model."""
    override_config: dict[str, Any] = field(default_factory=dict)
    """Fields overriding the model's config.json."""
    external_lib: str | None = None
    """Module imported before loading."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint."""
    use_shm: bool = False
    """Copy the model to /dev/shm before loading."""
    enable_gradient_checkpointing: bool = True
    """Recompute activations in backward."""
    enable_activation_offload: bool = False
    """Offload activations to CPU."""
    use_remove_padding: bool = False
    """Pack sequences without padding."""
    fsdp_config: FSDPEngineConfig = field(default_factory=FSDPEngineConfig)
    """Sharding and offload of the critic."""
    lora_rank: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    target_modules: Any = "all-linear"
    """Modules that get LoRA adapters."""


@dataclass
class CriticConfig(BaseConfig):
    """Value-model training settings shared by every backend."""

    _mutable_fields = BaseConfig._mutable_fields | {
        "ppo_mini_batch_size",
        "ppo_micro_batch_size",
        "ppo_micro_batch_size_per_gpu",
        "forward_micro_batch_size",
        "forward_micro_batch_size_per_gpu",
    }

    strategy: str = "fsdp"
    """Training backend: fsdp, fsdp2 or megatron."""
    enable: bool | None = None
    """Force the critic on/off; null enables it only for GAE."""
    rollout_n: int = 1
    """Responses per prompt (mirrors actor_rollout_ref.rollout.n)."""
    optim: OptimizerConfig = field(default_factory=lambda: FSDPOptimizerConfig(lr=1e-5))
    """Optimizer and LR schedule."""
    model: CriticModelConfig = field(default_factory=CriticModelConfig)
    """The value model."""
    ppo_mini_batch_size: int = 256
    """Prompts per optimizer step (before x rollout_n)."""
    ppo_micro_batch_size: int | None = None
    """Deprecated global micro batch; use ppo_micro_batch_size_per_gpu."""
    ppo_micro_batch_size_per_gpu: int | None = None
    """Sequences per forward/backward on one rank."""
    use_dynamic_bsz: bool = False
    """Pack micro batches by token count."""
    ppo_max_token_len_per_gpu: int = 32768
    """Token budget of one training micro batch with use_dynamic_bsz."""
    forward_max_token_len_per_gpu: int = 32768
    """Token budget of one value-inference micro batch with use_dynamic_bsz."""
    forward_micro_batch_size: int | None = None
    """Deprecated global inference micro batch."""
    forward_micro_batch_size_per_gpu: int | None = None
    """Sequences per value-inference forward on one rank."""
    ppo_epochs: int = 1
    """Passes over each batch."""
    shuffle: bool = False
    """Shuffle mini-batches between epochs."""
    data_loader_seed: int | None = 42
    """Seed of the mini-batch shuffle."""
    cliprange_value: float = 0.5
    """Value clip range around the old values."""
    loss_agg_mode: str = "token-mean"
    """Aggregation of the value loss (same modes as the actor)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """What the critic saves and loads."""
    profiler: dict[str, Any] = field(default_factory=dict)
    """Per-role profiler settings."""

    def __post_init__(self) -> None:
        check_choice("critic.strategy", self.strategy, ("fsdp", "fsdp2", "megatron"))
        check_loss_agg_mode("critic.loss_agg_mode", self.loss_agg_mode)
        if self.ppo_mini_batch_size < 1:
            raise ValueError(f"critic.ppo_mini_batch_size={self.ppo_mini_batch_size} must be >= 1 (counted in prompts)")
        if self.ppo_epochs < 1:
            raise ValueError(f"critic.ppo_epochs={self.ppo_epochs} must be >= 1")
        if self.cliprange_value <= 0:
            raise ValueError(f"critic.cliprange_value={self.cliprange_value} must be > 0")
        if not self.use_dynamic_bsz:
            check_micro_batch_exclusive(
                "critic", self.ppo_micro_batch_size, self.ppo_micro_batch_size_per_gpu, "ppo_micro_batch_size"
            )


@dataclass
class FSDPCriticConfig(CriticConfig):
    """Critic trained with FSDP / FSDP2."""

    ulysses_sequence_parallel_size: int = 1
    """Ulysses sequence-parallel ranks."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("critic.strategy", self.strategy, ("fsdp", "fsdp2"))


@dataclass
class McoreCriticConfig(CriticConfig):
    """Critic trained with Megatron-core (backend lands in a later issue)."""

    _ignored_keys = frozenset({"ulysses_sequence_parallel_size"})

    strategy: str = "megatron"
    """Always megatron for this class."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    megatron: McoreEngineConfig = field(default_factory=McoreEngineConfig)
    """Parallel layout of the critic."""
    load_weight: bool = True
    """Load the HF weights at start."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("critic.strategy", self.strategy, ("megatron",))
