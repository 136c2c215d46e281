"""Typed view of the ``*.fsdp_config`` nodes: how one model is sharded and offloaded with FSDP / FSDP2.

Defined here, below ``verl.utils.fsdp_utils`` which reads it (a plain dict handed to those helpers becomes this
class, so missing keys take these defaults); ``verl.workers.config.FSDPEngineConfig`` is the public name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import key

__all__ = ["DTYPES", "FSDPEngineConfig"]

DTYPES = ("fp32", "float32", "bf16", "bfloat16", "fp16", "float16")
_MEMORY_ONLY = "memory/speed only in verl (same numbers); our actor reads the actor-level key of the same name"
_PACKING = "padding of packed micro-batches to a bucket multiple (speed only, same numbers); we pack exactly"


@dataclass
class FSDPEngineConfig(BaseConfig):
    """How one model is sharded and offloaded with FSDP / FSDP2."""

    _path = "fsdp_config"

    wrap_policy: dict[str, Any] = key(factory=lambda: {"min_num_params": 0})
    """Wrap policy: min_num_params (> 0: one unit per block of that many parameters), or transformer_layer_cls_to_wrap
    (+...wrap_policy.transformer_layer_cls_to_wrap=[LlamaDecoderLayer]); disable=true wraps nothing."""
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
    model_dtype: str = key("fp32", choices=DTYPES)
    """dtype the parameters are stored in."""
    dtype: str = key("bfloat16", choices=DTYPES)
    """Compute dtype of mixed precision."""
    mixed_precision: dict[str, Any] | None = None
    """Explicit mixed-precision dtypes (param_dtype, reduce_dtype, buffer_dtype)."""
    use_orig_params: bool = False
    """FSDP1: expose the original parameters (needed by some LoRA set-ups)."""
    seed: int = 42
    """Seed for model init and dropout."""
    full_determinism: bool = False
    """Force deterministic kernels (slower)."""
    entropy_from_logits_with_chunking: bool = key(False, effect="inert", reason=_MEMORY_ONLY)
    """Engine-path mirror of the actor's key: compute entropy in chunks."""
    entropy_checkpointing: bool = key(False, effect="inert", reason=_MEMORY_ONLY)
    """Engine-path mirror of the actor's key: recompute entropy in backward."""
    entropy_from_logits_chunk_size: int | None = key(
        None, since="0.9", v09_default=2048, effect="inert", reason=_MEMORY_ONLY
    )
    """Chunk size of the chunked entropy (null: 2048)."""
    pad_to_length: bool | None = key(None, since="0.9", v09_default=False, effect="inert", reason=_PACKING)
    """Pad packed micro-batches to a multiple of pad_to_length_bucket (null: false)."""
    pad_to_length_bucket: int | None = key(None, since="0.9", v09_default=1024, effect="inert", reason=_PACKING)
    """Bucket of pad_to_length (null: 1024)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fsdp_size != -1 and self.fsdp_size < 1:
            raise ValueError(f"fsdp_config.fsdp_size={self.fsdp_size} must be -1 (whole world) or >= 1")
