"""Checkpoint bookkeeping (see :mod:`verl.utils.checkpoint.checkpoint_manager`).

Engine managers live in their own modules (``fsdp_checkpoint_manager``) and are imported from there, so importing
this package never pulls in FSDP or Megatron.
"""

from __future__ import annotations

from verl.utils.checkpoint.checkpoint_manager import (
    BaseCheckpointManager,
    atomic_write_text,
    find_latest_ckpt_path,
    get_checkpoint_tracker_filename,
    should_save_ckpt_esi,
)

__all__ = [
    "BaseCheckpointManager",
    "atomic_write_text",
    "find_latest_ckpt_path",
    "get_checkpoint_tracker_filename",
    "should_save_ckpt_esi",
]
