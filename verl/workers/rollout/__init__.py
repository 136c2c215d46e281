"""Rollout engines. Heavy engines (and ``HFRollout``, which imports transformers) load on first access."""

from __future__ import annotations

import importlib
from typing import Any

from verl.workers.rollout.base import BaseRollout, get_rollout_class, register_rollout

__all__ = ["BaseRollout", "HFRollout", "RolloutReplica", "get_rollout_class", "register_rollout"]

_LAZY = {
    "HFRollout": "verl.workers.rollout.hf_rollout",
    "RolloutReplica": "verl.workers.rollout.replica",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
