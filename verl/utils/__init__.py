"""Utilities. Heavy helpers (tokenizer loading, config conversion) are resolved lazily on first attribute access."""

from __future__ import annotations

_LAZY = {
    "hf_tokenizer": "verl.utils.tokenizer",
    "hf_processor": "verl.utils.tokenizer",
    "omega_conf_to_dataclass": "verl.utils.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'verl.utils' has no attribute {name!r}")


__all__ = list(_LAZY)
