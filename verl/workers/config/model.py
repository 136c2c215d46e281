"""Typed view of ``actor_rollout_ref.model``: which Hugging Face model the actor, rollout and reference load.

Only fields: nothing here downloads or opens the model. Workers resolve the path (``copy_to_local``) and load
the tokenizer themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key

__all__ = ["HFModelConfig", "LoraConfig"]

_LORA_OFF = "only used with the Megatron-style LoRA block (model.lora.rank > 0), which is refused"


def _zero(value: Any) -> bool:
    return value in (0, None)


def _unset(value: Any) -> bool:
    return value is None or value == ""


def _off(value: Any) -> bool:
    return not value


def lora_rank_refusal(where: str, fix: str | None = None) -> Refuse:
    """LoRA not implemented at ``where``: only rank 0 (train every weight) passes."""
    return Refuse(
        _zero,
        "0",
        fix or f"LoRA is not implemented here; train all weights with {where}=0",
        "> 0 wraps the model in PEFT LoRA adapters (the actor's reference is then the base model without adapters)",
        8,
    )


def refuse_fused(what: str) -> Refuse:
    return Refuse(
        _off,
        "false",
        "fused log-prob/entropy kernels are not implemented; set false",
        f"computes log-probs and entropy with fused kernels ({what})",
        True,
    )


def refuse_activation_offload(what: str) -> Refuse:
    return Refuse(
        _off,
        "false",
        "activation offloading is not implemented; set false (gradient checkpointing is supported)",
        f"offloads {what} activations to CPU during the backward pass",
        True,
    )


@dataclass
class LoraConfig(BaseConfig):
    """``model.lora`` (verl v0.9): the Megatron-style LoRA block. Only rank 0 (LoRA off) is accepted: LoRA runs on
    the FSDP workers through the flat keys (``model.lora_rank``, ``lora_alpha``, ``target_modules``)."""

    _path = "model.lora"

    _emit_target = False

    type: str = key("lora", effect="inert", reason=_LORA_OFF)
    """Adapter type."""
    rank: int = key(
        0,
        refuse=lora_rank_refusal(
            "model.lora.rank",
            "the Megatron-style LoRA block is not implemented; use peft LoRA on the FSDP workers with "
            "actor_rollout_ref.model.lora_rank (and lora_alpha, target_modules), or set model.lora.rank=0",
        ),
    )
    """Adapter rank; 0 trains all weights."""
    alpha: int = key(32, effect="inert", reason=_LORA_OFF)
    """Scaling numerator."""
    dropout: float = key(0.0, effect="inert", reason=_LORA_OFF)
    """Dropout on the adapter input."""
    target_modules: list[str] = key(
        factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"], effect="inert", reason=_LORA_OFF
    )
    """Megatron module names that get adapters."""
    merge: bool = key(False, effect="inert", reason=_LORA_OFF)
    """Merge the adapters into the weights before syncing to the rollout."""


@dataclass
class HFModelConfig(BaseConfig):
    """A Hugging Face causal LM and the switches that change how it is built."""

    _path = "actor_rollout_ref.model"

    path: str = "~/models/deepseek-llm-7b-chat"
    """Local directory or hub id of the model (nothing is downloaded: give a local directory)."""
    hf_config_path: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "loading config.json from a separate path is not implemented; put the config beside the weights or use "
            "actor_rollout_ref.model.override_config",
            "reads the model's config.json from this path instead of model.path",
            "/configs/model",
        ),
    )
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
    """Module imported before the model is built (registers custom architectures)."""
    override_config: dict[str, Any] = key(factory=dict)
    """Fields merged into the model's config.json (e.g. attention dropout)."""
    enable_gradient_checkpointing: bool = True
    """Recompute activations in backward to save memory."""
    enable_activation_offload: bool = key(False, refuse=refuse_activation_offload("the actor's"))
    """Offload activations to CPU during forward."""
    use_remove_padding: bool = True
    """Pack each micro-batch's real tokens into one row with per-sequence positions (no FLOPs on padding; varlen
    flash attention with flash_attention_2 on CUDA); the actor and reference follow this value."""
    lora_rank: int = 0
    """0 trains all weights; > 0 trains peft LoRA adapters of this rank on the FSDP actor (the reference is then the
    base model, the actor with its adapters disabled; the rollout gets the merged weights)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scaling = lora_alpha / lora_rank)."""
    target_modules: Any = "all-linear"
    """Modules that get LoRA adapters: all-linear or a list of names."""
    exclude_modules: Any = None
    """Modules excluded from LoRA (a name list or a regex)."""
    lora_adapter_path: str | None = None
    """A LoRA adapter directory (adapter_config.json + weights, e.g. a checkpoint's actor/lora_adapter) to start
    from; lora_rank must still be > 0."""
    use_liger: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "Liger kernels are not implemented; set false (the model runs its stock transformers kernels)",
            "patches the model with Liger fused kernels (same maths, less memory)",
            True,
        ),
    )
    """Use Liger kernels."""
    use_fused_kernels: bool = key(False, refuse=refuse_fused("torch or triton backend"))
    """Use fused log-prob/entropy kernels."""
    fused_kernel_options: dict[str, Any] = key(
        factory=lambda: {"impl_backend": "torch"},
        effect="inert",
        reason="only used with use_fused_kernels=true, which is refused",
    )
    """Backend of the fused kernels (torch | triton)."""
    lora: LoraConfig | None = key(None, since="0.9", v09_default=None)
    """verl v0.9's LoRA block (Megatron-style names); rank 0 only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ValueError("actor_rollout_ref.model.path is empty; set actor_rollout_ref.model.path=/path/to/model")
        if self.lora_rank < 0:
            raise ValueError(f"model.lora_rank={self.lora_rank} must be >= 0 (0 disables LoRA)")
        if self.lora_adapter_path and self.lora_rank == 0:
            raise ValueError(
                f"actor_rollout_ref.model.lora_adapter_path={self.lora_adapter_path} is set but lora_rank=0 (LoRA "
                "off): set lora_rank > 0 (the adapter's own rank is read from its adapter_config.json)"
            )

    @property
    def local_hf_config_path(self) -> str:
        """Where config.json lives (``hf_config_path`` or ``path``)."""
        return self.hf_config_path or self.path

    @property
    def local_tokenizer_path(self) -> str:
        """Where the tokenizer lives (``tokenizer_path`` or ``path``)."""
        return self.tokenizer_path or self.path
