"""Module names for LoRA adapters (no torch: the config tree reads this before Ray starts).

verl v0.9's ``model.lora.target_modules`` names Megatron's fused projections; peft adapts the Hugging Face modules
that hold the same weights.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MEGATRON_TO_HF_MODULES", "hf_target_modules"]

MEGATRON_TO_HF_MODULES = {
    "linear_qkv": ("q_proj", "k_proj", "v_proj"),
    "linear_proj": ("o_proj",),
    "linear_fc1": ("gate_proj", "up_proj"),
    "linear_fc2": ("down_proj",),
}


def hf_target_modules(names: Any) -> Any:
    """peft target modules for ``names``: Megatron names mapped to the Hugging Face modules, other names (and a
    string such as ``all-linear``) kept."""
    if isinstance(names, str):
        return names
    out: list[str] = []
    for name in names:
        for module in MEGATRON_TO_HF_MODULES.get(str(name), (str(name),)):
            if module not in out:
                out.append(module)
    return out
