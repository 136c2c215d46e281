"""Typed view of ``actor_rollout_ref.model``: which Hugging Face model the actor, rollout and reference load.

Only fields: nothing here downloads or opens the model. Workers resolve the path (``copy_to_local``) and load
the tokenizer themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.lora_modules import hf_target_modules

__all__ = ["CriticLoraConfig", "HFModelConfig", "LoraConfig"]

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


_LORA_BLOCK_OFF = "only used with critic.model.lora.rank > 0, which is refused"


@dataclass
class LoraConfig(BaseConfig):
    """``actor_rollout_ref.model.lora`` (verl v0.9's spelling of LoRA). With ``rank > 0`` it is folded into the flat
    keys the FSDP actor reads (``lora_rank``, ``lora_alpha``, ``target_modules`` with Megatron's module names mapped
    to the Hugging Face ones: ``linear_qkv`` -> q/k/v_proj, ``linear_proj`` -> o_proj, ``linear_fc1`` ->
    gate/up_proj, ``linear_fc2`` -> down_proj), plus the adapter dropout."""

    _path = "actor_rollout_ref.model.lora"

    _emit_target = False

    type: str = key(
        "lora",
        refuse=Refuse(
            lambda v: v in (None, "lora"),
            "lora",
            "only plain LoRA adapters are implemented; set model.lora.type=lora",
            "selects the adapter kind (lora, or variants such as canonical_lora / dora)",
            "dora",
        ),
    )
    """Adapter type."""
    rank: int = 0
    """Adapter rank; 0 trains all weights (then the flat model.lora_rank decides)."""
    alpha: int = 32
    """Scaling numerator (scaling = alpha / rank)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = key(factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"])
    """Modules that get adapters (Megatron names, mapped to the Hugging Face modules; Hugging Face names pass)."""
    merge: bool = key(
        False,
        effect="inert",
        reason="the rollout always receives the adapters merged into the weights (the same numbers as serving the "
        "adapters separately; only the engine's speed differs)",
    )
    """Merge the adapters into the weights before syncing to the rollout."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # v0.9's yaml leaves the block's keys null until written: an unwritten key takes the block's default
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and f.default is not None:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                object.__setattr__(self, f.name, default)


@dataclass
class CriticLoraConfig(LoraConfig):
    """``critic.model.lora`` (verl v0.9): LoRA on the critic is not implemented; only rank 0 passes."""

    _path = "critic.model.lora"

    type: str = key("lora", effect="inert", reason=_LORA_BLOCK_OFF)
    """Adapter type."""
    rank: int = key(
        0,
        refuse=lora_rank_refusal(
            "critic.model.lora.rank",
            "LoRA on the critic is not implemented (the actor's is: actor_rollout_ref.model.lora.rank or "
            "lora_rank); set critic.model.lora.rank=0",
        ),
    )
    """Adapter rank; 0 trains all weights."""
    alpha: int = key(32, effect="inert", reason=_LORA_BLOCK_OFF)
    """Scaling numerator."""
    dropout: float = key(0.0, effect="inert", reason=_LORA_BLOCK_OFF)
    """Dropout on the adapter input."""
    target_modules: list[str] = key(
        factory=lambda: ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
        effect="inert",
        reason=_LORA_BLOCK_OFF,
    )
    """Modules that get adapters."""
    merge: bool = key(False, effect="inert", reason=_LORA_BLOCK_OFF)
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
    """verl v0.9's LoRA block; rank > 0 sets lora_rank, lora_alpha and target_modules from it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ValueError("actor_rollout_ref.model.path is empty; set actor_rollout_ref.model.path=/path/to/model")
        block = self.lora
        if block is not None and block.rank:  # v0.9's spelling: folded into the flat keys
            if self.lora_rank and self.lora_rank != block.rank:
                raise ValueError(
                    f"actor_rollout_ref.model.lora_rank={self.lora_rank} and model.lora.rank={block.rank} disagree; "
                    "set one of them (v0.7 spelling: lora_rank, lora_alpha, target_modules; v0.9: lora.*)"
                )
            # still constructing: the fields are set once, as the generated __init__ would (they are frozen after)
            object.__setattr__(self, "lora_rank", int(block.rank))
            object.__setattr__(self, "lora_alpha", int(block.alpha))
            object.__setattr__(self, "target_modules", hf_target_modules(block.target_modules))
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
