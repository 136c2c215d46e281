"""Small model helpers with upstream verl names: position ids, config overrides, generation config, model size.

Model *building* (actor, critic, reward model, optimizer) lives in ``verl.utils.hf_models``; transformers is
imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def compute_position_id_with_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: ``clip(cumsum(mask) - 1, min=0)``.

    Example: a left-padded row ``[0, 0, 1, 1, 1]`` gets ``[0, 0, 0, 1, 2]``.

    Args:
        mask: ``(bs, seq_len)`` attention mask.

    Returns:
        ``(bs, seq_len)`` position ids in the mask's integer dtype.
    """
    return torch.clip(torch.cumsum(mask, dim=-1) - 1, min=0)


def update_model_config(module_config: Any, override_config_kwargs: Mapping[str, Any]) -> None:
    """Apply ``override_config_kwargs`` to ``module_config`` in place, recursing into nested sub-configs.

    A nested mapping updates the matching sub-config attribute by attribute (or a dict-valued field key by key);
    any other value replaces the attribute.

    Args:
        module_config: an HF ``PretrainedConfig`` or any attribute object.
        override_config_kwargs: ``{"key": value}``, values may be nested mappings.
    """
    for key, value in override_config_kwargs.items():
        current = getattr(module_config, key, None)
        if isinstance(value, Mapping) and isinstance(current, dict):
            current.update(value)
        elif isinstance(value, Mapping) and current is not None:
            update_model_config(current, value)
        else:
            setattr(module_config, key, value)


def get_generation_config(model_path: str, trust_remote_code: bool = False) -> Any | None:
    """The checkpoint's ``transformers.GenerationConfig``, or ``None`` when it ships none."""
    from verl.utils.hf_models import load_generation_config

    return load_generation_config(model_path, trust_remote_code=trust_remote_code)


_SCALES = {"B": 1e9, "M": 1e6, "K": 1e3, "": 1.0}


def get_model_size(model: torch.nn.Module, scale: str = "auto") -> tuple[float, str]:
    """Parameter count of ``model`` expressed in ``scale`` (``B``, ``M``, ``K``, ``""`` or ``auto``)."""
    n_params = float(sum(p.numel() for p in model.parameters()))
    if scale == "auto":
        scale = next(s for s, factor in _SCALES.items() if n_params >= factor or s == "")
    if scale not in _SCALES:
        raise ValueError(f"scale={scale!r} is not supported; use one of {list(_SCALES)} or 'auto'.")
    return n_params / _SCALES[scale], scale


def print_model_size(model: torch.nn.Module, name: str | None = None) -> None:
    """Print ``<name> contains <n><scale> parameters``."""
    n_params, scale = get_model_size(model)
    print(f"{name or model.__class__.__name__} contains {n_params:.2f}{scale} parameters")
