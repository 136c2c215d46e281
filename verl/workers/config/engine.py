"""Typed views of the parallelism/sharding nodes: ``*.fsdp_config`` (FSDP) and ``*.megatron`` (Megatron-core)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig, check_choice

__all__ = ["FSDPEngineConfig", "McoreEngineConfig"]

_DTYPES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


@dataclass
class FSDPEngineConfig(BaseConfig):
    """How one model is sharded and offloaded with FSDP / FSDP2."""

    wrap_policy: dict[str, Any] = field(default_factory=lambda: {"min_num_params": 0})
    """Auto-wrap policy (FSDP1): min_num_params, or transformer layer classes."""
    param_offload: bool = False
    """Keep parameters on CPU between uses."""
    optimizer_offload: bool = False
    """Keep optimizer state on CPU between steps."""
    offload_policy: bool = False
    """FSDP2: use the CPU offload policy of fully_shard."""
    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (ZeRO-3 like)."""
    fsdp_size: int = -1
    """Ranks per sharding group; -1 shards over the whole world (HSDP otherwise)."""
    forward_prefetch: bool = False
    """FSDP1: prefetch the next all-gather during forward."""
    model_dtype: str = "fp32"
    """dtype the parameters are stored in."""
    dtype: str = "bfloat16"
    """Compute dtype of mixed precision."""
    mixed_precision: dict[str, Any] | None = None
    """Explicit mixed-precision dtypes (param_dtype, reduce_dtype, buffer_dtype)."""
    use_orig_params: bool = False
    """FSDP1: expose the original parameters (needed by some LoRA set-ups)."""
    seed: int = 42
    """Seed for model init and dropout."""
    full_determinism: bool = False
    """Force deterministic kernels (slower)."""

    def __post_init__(self) -> None:
        if self.fsdp_size != -1 and self.fsdp_size < 1:
            raise ValueError(f"fsdp_config.fsdp_size={self.fsdp_size} must be -1 (whole world) or >= 1")
        check_choice("fsdp_config.model_dtype", self.model_dtype, _DTYPES)
        check_choice("fsdp_config.dtype", self.dtype, _DTYPES)


@dataclass
class McoreEngineConfig(BaseConfig):
    """Megatron-core parallel layout of one model (the Megatron backend reads it; see ppo_megatron_trainer.yaml)."""

    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Interleaved pipeline chunks per stage."""
    context_parallel_size: int = 1
    """Context-parallel ranks (sequence split for attention)."""
    expert_model_parallel_size: int = 1
    """Expert-parallel ranks (MoE)."""
    expert_tensor_parallel_size: int | None = None
    """Tensor-parallel ranks inside experts; null follows tensor_model_parallel_size."""
    sequence_parallel: bool = True
    """Megatron sequence parallelism (with TP > 1)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks."""
    use_dist_checkpointing: bool = False
    """Load weights from a Megatron distributed checkpoint."""
    dist_checkpointing_path: str | None = None
    """Path of that checkpoint."""
    param_offload: bool = False
    """Offload parameters to CPU between uses."""
    grad_offload: bool = False
    """Offload gradients to CPU between uses."""
    optimizer_offload: bool = False
    """Offload optimizer state to CPU between steps."""
    seed: int = 42
    """Seed for model init."""
    override_ddp_config: dict[str, Any] = field(default_factory=dict)
    """Extra DistributedDataParallelConfig fields."""
    override_transformer_config: dict[str, Any] = field(default_factory=dict)
    """Extra TransformerConfig fields (recompute_granularity, ...)."""
    override_mcore_model_config: dict[str, Any] = field(default_factory=dict)
    """Extra model-builder arguments."""
    use_mbridge: bool = False
    """Convert HF weights with mbridge."""
    dtype: str = "bfloat16"
    """Compute dtype."""

    def __post_init__(self) -> None:
        for key in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"megatron.{key}={getattr(self, key)} must be >= 1")
        check_choice("megatron.dtype", self.dtype, _DTYPES)
