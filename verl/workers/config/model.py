"""Typed view of ``actor_rollout_ref.model``: which Hugging Face model the actor, rollout and reference load.

Only fields: nothing here downloads or opens the model. Workers resolve the path (``copy_to_local``) and load
the tokenizer themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig

__all__ = ["HFModelConfig"]


@dataclass
class HFModelConfig(BaseConfig):
    """A Hugging Face causal LM and the switches that change how it is built."""

    path: str = "~/models/deepseek-llm-7b-chat"
    """Local directory or hub id of the model."""
    hf_config_path: str | None = None
    """Directory of config.json when it differs from path; null uses path."""
    tokenizer_path: str | None = None
    """Directory of the tokenizer when it differs from path; null uses path."""
    use_shm: bool = False
    """Copy the model to /dev/shm before loading."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint."""
    custom_chat_template: str | None = None
    """Jinja chat template replacing the tokenizer's own."""
    external_lib: str | None = None
    """Module imported before loading (registers custom architectures)."""
    override_config: dict[str, Any] = field(default_factory=dict)
    """Fields overriding the model's config.json (e.g. attention dropout)."""
    enable_gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    enable_activation_offload: bool = False
    """Offload activations to CPU during forward."""
    use_remove_padding: bool = False
    """Pack sequences without padding (varlen attention)."""
    lora_rank: int = 0
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    target_modules: Any = "all-linear"
    """Modules that get LoRA adapters: all-linear or a list of names."""
    exclude_modules: Any = None
    """Modules excluded from LoRA."""
    lora_adapter_path: str | None = None
    """Pretrained LoRA adapter to start from."""
    use_liger: bool = False
    """Use Liger kernels."""
    use_fused_kernels: bool = False
    """Use fused log-prob/entropy kernels."""
    fused_kernel_options: dict[str, Any] = field(default_factory=lambda: {"impl_backend": "torch"})
    """Backend of the fused kernels (torch | triton)."""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("actor_rollout_ref.model.path is empty; set actor_rollout_ref.model.path=/path/to/model")
        if self.lora_rank < 0:
            raise ValueError(f"model.lora_rank={self.lora_rank} must be >= 0 (0 disables LoRA)")

    @property
    def local_hf_config_path(self) -> str:
        """Where config.json lives (``hf_config_path`` or ``path``)."""
        return self.hf_config_path or self.path

    @property
    def local_tokenizer_path(self) -> str:
        """Where the tokenizer lives (``tokenizer_path`` or ``path``)."""
        return self.tokenizer_path or self.path
