"""LoRA adapters on the actor with ``peft`` (``actor_rollout_ref.model.lora_rank > 0``), and the weight views the
rest of the system needs.

* :func:`apply_lora` wraps a causal LM in peft's ``LoraConfig`` adapters (``lora_rank``, ``lora_alpha``,
  ``target_modules``, ``exclude_modules``), or loads ``lora_adapter_path`` as trainable adapters. The base weights
  are frozen; only the adapters train (and reach the optimizer).
* :func:`merged_state_dict` turns the peft model's full state dict (``base_model.model.<name>.base_layer.weight``,
  ``lora_A`` / ``lora_B``) into the plain model's names with every adapter merged, ``W + scaling * B @ A``: what
  a rollout engine loads, and the ``huggingface/`` export.
* :func:`adapter_state_dict` keeps only the adapters, under the names ``PeftModel.from_pretrained`` reads
  (``adapter_model.safetensors`` next to ``adapter_config.json``).

The reference policy under LoRA is the same module with its adapters disabled (:func:`adapters_disabled`): the base
model, with no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "adapter_state_dict",
    "adapters_disabled",
    "apply_lora",
    "is_lora_model",
    "lora_scalings",
    "merged_state_dict",
    "save_adapter",
]

_PREFIX = "base_model.model."
_ADAPTER = "default"


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - peft is a dependency; this guards a broken environment
        raise ImportError("LoRA (model.lora_rank > 0) needs peft: pip install 'peft>=0.21'") from exc
    return peft


def apply_lora(module: nn.Module, model_cfg: Any) -> nn.Module:
    """``module`` with trainable LoRA adapters (see the module docstring); ``model_cfg`` is the typed
    ``actor_rollout_ref.model`` node."""
    peft = _peft()
    if model_cfg.lora_adapter_path:
        path = os.path.expanduser(model_cfg.lora_adapter_path)
        if not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise FileNotFoundError(
                f"actor_rollout_ref.model.lora_adapter_path={model_cfg.lora_adapter_path}: no adapter_config.json "
                "there (a directory written by PeftModel.save_pretrained, or a checkpoint's actor/lora_adapter)"
            )
        return peft.PeftModel.from_pretrained(module, path, is_trainable=True)
    rank, alpha, targets, dropout = _settings(model_cfg)
    excluded = model_cfg.exclude_modules
    if excluded is not None and not isinstance(excluded, str):
        excluded = list(excluded)
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        exclude_modules=excluded,
        lora_dropout=dropout,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(module, config)


def _settings(model_cfg: Any) -> tuple[int, int, Any, float]:
    """``(rank, alpha, target modules, dropout)``: from v0.9's ``model.lora`` block when it sets the rank (its
    Megatron module names mapped to Hugging Face ones), else from v0.7's flat keys (which have no dropout)."""
    from verl.utils.lora_modules import hf_target_modules

    block = getattr(model_cfg, "lora", None)
    if block is not None and block.rank:
        return int(block.rank), int(block.alpha), hf_target_modules(block.target_modules), float(block.dropout)
    targets = model_cfg.target_modules
    return (
        int(model_cfg.lora_rank),
        int(model_cfg.lora_alpha),
        targets if isinstance(targets, str) else list(targets),
        0.0,
    )


def is_lora_model(module: nn.Module) -> bool:
    """Whether ``module`` (or what an FSDP1 wrapper holds) is a peft model."""
    from verl.utils.fsdp_utils import unwrap_module

    peft = _peft()
    return isinstance(unwrap_module(module), peft.PeftModel)


def lora_scalings(module: nn.Module) -> dict[str, float]:
    """``{module name: scaling}`` of every LoRA layer (``lora_alpha / r``), under the peft model's names."""
    from peft.tuners.lora import LoraLayer

    from verl.utils.fsdp_utils import unwrap_module

    return {
        _clean(name): float(layer.scaling[_ADAPTER])
        for name, layer in unwrap_module(module).named_modules()
        if isinstance(layer, LoraLayer) and _ADAPTER in layer.scaling
    }


def _clean(name: str) -> str:
    """A module name without the wrapper segments FSDP1 units and activation checkpointing insert (the names a full
    state dict uses)."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(wrapper, "")
    return name


def merged_state_dict(state: Mapping[str, torch.Tensor], scalings: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The plain model's state dict from a peft model's full one, each adapter merged into its base weight."""
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if ".lora_A." in name or ".lora_B." in name or ".lora_embedding_" in name:
            continue
        plain = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
        if ".base_layer." in name:
            layer = name.split(".base_layer.")[0]
            plain = plain.replace(".base_layer.", ".")
            a = state.get(f"{layer}.lora_A.{_ADAPTER}.weight")
            b = state.get(f"{layer}.lora_B.{_ADAPTER}.weight")
            if plain.endswith(".weight") and a is not None and b is not None:
                delta = (b.float() @ a.float()) * scalings[layer]
                tensor = (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)
        merged[plain] = tensor
    return merged


def adapter_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a full peft state dict ``state``, named as ``adapter_model.safetensors`` stores them (the
    adapter's name dropped: ``...q_proj.lora_A.weight``)."""
    out = {}
    for name, tensor in state.items():
        for part in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            marker = f".{part}.{_ADAPTER}"
            if marker in name:
                out[_clean(name).replace(marker, f".{part}")] = tensor
    return out


def save_adapter(module: nn.Module, state: Mapping[str, torch.Tensor], out_dir: str) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` into ``out_dir`` (loads with
    ``PeftModel.from_pretrained(base, out_dir)`` and as ``lora_adapter_path``)."""
    from safetensors.torch import save_file

    from verl.utils.fsdp_utils import unwrap_module

    peft_model = unwrap_module(module)
    os.makedirs(out_dir, exist_ok=True)
    peft_model.peft_config[_ADAPTER].save_pretrained(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(state).items()}
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})


@contextlib.contextmanager
def adapters_disabled(module: nn.Module):
    """The base model's forward for the block (the reference policy under LoRA)."""
    from verl.utils.fsdp_utils import unwrap_module

    with unwrap_module(module).disable_adapter():
        yield
