"""Typed views of the parallelism/sharding nodes: ``*.fsdp_config`` (FSDP) and ``*.megatron`` (Megatron-core).

``FSDPEngineConfig`` is defined in ``verl.utils.fsdp_config`` (below the FSDP helpers that read it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.fsdp_config import DTYPES, FSDPEngineConfig

__all__ = ["DTYPES", "FSDPEngineConfig", "McoreEngineConfig"]


_MEGATRON = Refuse(
    ok=lambda v: not v,
    allowed="false",
    fix="loading a Megatron distributed checkpoint is not implemented; start from the HF weights in model.path",
    verl="loads the weights from dist_checkpointing_path instead of the HF checkpoint",
    bad_example=True,
)


@dataclass
class McoreEngineConfig(BaseConfig):
    """Megatron-core parallel layout of one model (the Megatron backend reads it; see ppo_megatron_trainer.yaml)."""

    _mutable_fields = BaseConfig._mutable_fields | {"sequence_parallel"}

    _path = "megatron"

    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Interleaved pipeline: model chunks per stage (null: not interleaved)."""
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
    use_dist_checkpointing: bool = key(False, refuse=_MEGATRON)
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
    override_ddp_config: dict[str, Any] = key(factory=dict)
    """Extra DistributedDataParallelConfig fields."""
    override_transformer_config: dict[str, Any] = key(factory=dict)
    """Extra TransformerConfig fields, e.g. +...megatron.override_transformer_config.recompute_granularity=full."""
    override_mcore_model_config: dict[str, Any] = key(factory=dict)
    """Extra model-builder arguments."""
    use_mbridge: bool = False
    """Convert HF weights with mbridge."""
    dtype: str = key("bfloat16", choices=DTYPES)
    """Compute dtype."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            warnings.warn(
                "megatron.sequence_parallel=True needs tensor_model_parallel_size > 1; turned off", UserWarning, 2
            )
            self._set("sequence_parallel", False)
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"megatron.{name}={getattr(self, name)} must be >= 1")
