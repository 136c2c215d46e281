"""Typed views of the parallelism/sharding nodes: ``*.fsdp_config`` (FSDP) and ``*.megatron`` (Megatron-core).

``FSDPEngineConfig`` is defined in ``verl.utils.fsdp_config`` (below the FSDP helpers that read it).
"""

from __future__ import annotations

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


def _one(name: str, what: str) -> Refuse:
    return Refuse(
        ok=lambda v: v in (None, 1),
        allowed="1",
        fix=f"{what} is not implemented in the Megatron workers yet; use tensor_model_parallel_size to split the model",
        verl=f"megatron-core {what}",
        bad_example=2,
    )


def _unset(name: str, what: str) -> Refuse:
    return Refuse(
        ok=lambda v: v is None,
        allowed="null",
        fix=f"{what} are not implemented in the Megatron workers yet; set null",
        verl=f"megatron-core {what}",
        bad_example=2,
    )


def _no_offload(name: str) -> Refuse:
    return Refuse(
        ok=lambda v: not v,
        allowed="false",
        fix=f"megatron.{name} is not implemented in the Megatron workers yet; set false",
        verl="moves that state to CPU memory between uses",
        bad_example=True,
    )


def _empty(name: str, why: str) -> Refuse:
    return Refuse(
        ok=lambda v: not v,
        allowed="{}",
        fix=f"{why}; leave megatron.{name} empty",
        verl=f"passes megatron.{name} to megatron-core",
        bad_example={"x": 1},
    )


@dataclass
class McoreEngineConfig(BaseConfig):
    """Megatron-core parallel layout of one model (verl.workers.megatron_workers reads it; ppo_megatron_trainer.yaml)."""

    _mutable_fields = BaseConfig._mutable_fields | {"sequence_parallel"}

    _path = "megatron"

    tensor_model_parallel_size: int = 1
    """Tensor-parallel ranks."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages (megatron-core's 1F1B schedule; the layers are split evenly, so it must divide them)."""
    virtual_pipeline_model_parallel_size: int | None = key(
        None, refuse=_unset("virtual_pipeline_model_parallel_size", "interleaved pipeline schedules")
    )
    """Interleaved pipeline: model chunks per stage (null: not interleaved)."""
    context_parallel_size: int = key(1, refuse=_one("context_parallel_size", "context parallelism"))
    """Context-parallel ranks (sequence split for attention)."""
    expert_model_parallel_size: int = key(1, refuse=_one("expert_model_parallel_size", "expert parallelism (MoE)"))
    """Expert-parallel ranks (MoE)."""
    expert_tensor_parallel_size: int | None = key(
        None, effect="inert", reason="only mixture-of-experts layers read it, and MoE models are not converted"
    )
    """Tensor-parallel ranks inside experts; null follows tensor_model_parallel_size."""
    sequence_parallel: bool = key(
        True,
        effect="inert",
        reason="memory only: activations are not split along the sequence between tensor-parallel ranks (same numbers)",
    )
    """Megatron sequence parallelism (with TP > 1)."""
    use_distributed_optimizer: bool = key(
        True,
        effect="inert",
        reason="memory only: each rank keeps the optimizer state of its own parameters (not sharded over data parallel)",
    )
    """Shard optimizer state over data-parallel ranks."""
    use_dist_checkpointing: bool = key(False, refuse=_MEGATRON)
    """Load weights from a Megatron distributed checkpoint."""
    dist_checkpointing_path: str | None = key(None, effect="inert", reason="read only with use_dist_checkpointing")
    """Path of that checkpoint."""
    param_offload: bool = key(False, refuse=_no_offload("param_offload"))
    """Offload parameters to CPU between uses."""
    grad_offload: bool = key(False, refuse=_no_offload("grad_offload"))
    """Offload gradients to CPU between uses."""
    optimizer_offload: bool = key(False, refuse=_no_offload("optimizer_offload"))
    """Offload optimizer state to CPU between steps."""
    seed: int = 42
    """Seed for model init."""
    override_ddp_config: dict[str, Any] = key(
        factory=dict,
        refuse=_empty(
            "override_ddp_config",
            "the workers average gradients over data-parallel ranks themselves (no megatron DDP wrapper to configure)",
        ),
    )
    """Extra DistributedDataParallelConfig fields."""
    override_transformer_config: dict[str, Any] = key(factory=dict)
    """Extra TransformerConfig fields, e.g. +...megatron.override_transformer_config.recompute_granularity=full."""
    override_mcore_model_config: dict[str, Any] = key(
        factory=dict,
        refuse=_empty("override_mcore_model_config", "the GPTModel is built from the HF config by verl.models.mcore"),
    )
    """Extra model-builder arguments."""
    use_mbridge: bool = key(
        False,
        refuse=Refuse(
            ok=lambda v: not v,
            allowed="false",
            fix="weights are converted by verl.models.mcore (Llama / Qwen2 architectures); set false",
            verl="builds the model and converts HF weights with the external mbridge package",
            bad_example=True,
        ),
    )
    """Convert HF weights with mbridge."""
    dtype: str = key("bfloat16", choices=DTYPES)
    """Compute dtype (forwards run in it under autocast; the weights and the optimizer stay in float32)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            self._set("sequence_parallel", False)  # as megatron-core: nothing to split without tensor parallelism
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"megatron.{name}={getattr(self, name)} must be >= 1")
