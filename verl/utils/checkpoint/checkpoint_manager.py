"""Checkpoint bookkeeping shared by every engine: what to save, where the latest one is, how many to keep.

Layout written by the trainer (engine managers fill ``actor/`` and ``critic/``)::

    {default_local_dir}/
        latest_checkpointed_iteration.txt     # "N", replaced atomically after global_step_N is complete
        global_step_N/actor/  global_step_N/critic/  global_step_N/data.pt

The tracker file is the commit point: it is written with :func:`atomic_write_text` only after every part of
``global_step_N`` is on disk, so a run killed mid-save resumes from the previous complete checkpoint, and
:func:`find_latest_ckpt_path` refuses a tracker that points at a directory that does not exist.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_CONTENTS",
    "TRACKER_FILENAME",
    "BaseCheckpointManager",
    "atomic_write_text",
    "find_latest_ckpt_path",
    "get_checkpoint_tracker_filename",
    "should_save_ckpt_esi",
]

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
CHECKPOINT_CONTENTS = ("model", "optimizer", "extra", "hf_model")
_DEFAULT_CONTENTS = ("model", "optimizer", "extra")


def _config_get(config: Any, key: str) -> Any:
    """``config[key]`` for mappings (dict, DictConfig), ``config.key`` for dataclasses; None when absent."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def _parse_contents(config: Any, key: str, default: tuple[str, ...]) -> list[str]:
    value = _config_get(config, key)
    contents = list(default) if value is None else [str(item) for item in value]
    unknown = sorted(set(contents) - set(CHECKPOINT_CONTENTS))
    if unknown:
        raise ValueError(
            f"checkpoint.{key} has unknown entries {unknown}; allowed: {list(CHECKPOINT_CONTENTS)} "
            f"(e.g. checkpoint.{key}=[model,optimizer,extra])"
        )
    return contents


class BaseCheckpointManager:
    """State and helpers shared by engine checkpoint managers (FSDP, Megatron).

    Subclasses implement :meth:`save_checkpoint` / :meth:`load_checkpoint`; this class decides *what* is saved
    (``checkpoint.save_contents`` / ``load_contents``, subsets of ``model, optimizer, extra, hf_model``), keeps
    the list of directories it wrote for rotation, and snapshots random-number-generator state.

    Args:
        model: the module to save.
        optimizer: its optimizer (may be None for inference-only roles).
        lr_scheduler: optional scheduler, saved with ``extra``.
        processing_class: tokenizer or processor, saved next to HF weights.
        checkpoint_config: mapping or object with ``save_contents`` / ``load_contents`` lists. ``save_contents``
            defaults to ``[model, optimizer, extra]``; ``load_contents`` defaults to ``save_contents``.

    Raises:
        ValueError: a content name outside ``model, optimizer, extra, hf_model``.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        lr_scheduler: Any = None,
        processing_class: Any = None,
        checkpoint_config: Any = None,
    ):
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.processing_class = processing_class
        self.checkpoint_config = checkpoint_config
        self.checkpoint_save_contents = _parse_contents(checkpoint_config, "save_contents", _DEFAULT_CONTENTS)
        self.checkpoint_load_contents = _parse_contents(
            checkpoint_config, "load_contents", tuple(self.checkpoint_save_contents)
        )
        self.previous_global_step: int | None = None
        self.previous_saved_paths: list[str] = []
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if distributed else 0
        self.world_size = torch.distributed.get_world_size() if distributed else 1

    @property
    def should_save_model(self) -> bool:
        return "model" in self.checkpoint_save_contents

    @property
    def should_save_optimizer(self) -> bool:
        return "optimizer" in self.checkpoint_save_contents

    @property
    def should_save_extra(self) -> bool:
        return "extra" in self.checkpoint_save_contents

    @property
    def should_save_hf_model(self) -> bool:
        return "hf_model" in self.checkpoint_save_contents

    @property
    def should_load_model(self) -> bool:
        return "model" in self.checkpoint_load_contents

    @property
    def should_load_optimizer(self) -> bool:
        return "optimizer" in self.checkpoint_load_contents

    @property
    def should_load_extra(self) -> bool:
        return "extra" in self.checkpoint_load_contents

    @property
    def should_load_hf_model(self) -> bool:
        return "hf_model" in self.checkpoint_load_contents

    def save_checkpoint(
        self,
        local_path: str,
        hdfs_path: str | None = None,
        global_step: int = 0,
        max_ckpt_to_keep: int | None = None,
    ) -> None:
        """Write a checkpoint into ``local_path``; implemented by engine-specific subclasses."""
        raise NotImplementedError(f"{type(self).__name__} does not implement save_checkpoint")

    def load_checkpoint(
        self, local_path: str, hdfs_path: str | None = None, del_local_after_load: bool = False
    ) -> None:
        """Restore from ``local_path``; implemented by engine-specific subclasses."""
        raise NotImplementedError(f"{type(self).__name__} does not implement load_checkpoint")

    @staticmethod
    def checkpath(local_path: str | None, hdfs_path: str | None) -> tuple[bool, str | None]:
        """``(is_local, path)``: the local path when given, else the remote one."""
        assert local_path is not None or hdfs_path is not None, "local_path and hdfs_path cannot both be None"
        return local_path is not None, local_path if local_path is not None else hdfs_path

    @staticmethod
    def local_mkdir(path: str) -> str:
        """Create ``path`` (and parents) if needed; safe when several ranks race to create it."""
        os.makedirs(path, exist_ok=True)
        return path

    def remove_previous_save_local_path(self, path: str | list[str]) -> None:
        """Delete one or several checkpoint directories; missing ones are skipped."""
        for one in [path] if isinstance(path, str) else list(path):
            abs_path = os.path.abspath(one)
            if os.path.exists(abs_path):
                logger.info("removing old checkpoint %s", abs_path)
                # Other ranks may be deleting the same shared directory: a vanished file is not an error.
                shutil.rmtree(abs_path, ignore_errors=True)

    def ensure_checkpoint_capacity(self, max_ckpt_to_keep: int | None) -> None:
        """Before saving a new checkpoint, delete the oldest so that at most ``max_ckpt_to_keep`` remain after it,
        but never the newest one: with ``max_ckpt_to_keep=1`` the previous checkpoint stays until the new one is
        saved (``register_checkpoint`` removes it then), so a save that fails leaves a checkpoint to resume from.

        ``None`` or a value <= 0 keeps everything.
        """
        if not max_ckpt_to_keep or max_ckpt_to_keep <= 0:
            return
        excess = len(self.previous_saved_paths) - max(max_ckpt_to_keep - 1, 1)
        if excess > 0:
            self.remove_previous_save_local_path(self.previous_saved_paths[:excess])
            self.previous_saved_paths = self.previous_saved_paths[excess:]

    def register_checkpoint(self, new_path: str, max_ckpt_to_keep: int | None = None) -> None:
        """Record a finished checkpoint directory (oldest first); prune beyond ``max_ckpt_to_keep`` if given."""
        if new_path in self.previous_saved_paths:
            self.previous_saved_paths.remove(new_path)
        self.previous_saved_paths.append(new_path)
        if max_ckpt_to_keep and max_ckpt_to_keep > 0 and len(self.previous_saved_paths) > max_ckpt_to_keep:
            excess = len(self.previous_saved_paths) - max_ckpt_to_keep
            self.remove_previous_save_local_path(self.previous_saved_paths[:excess])
            self.previous_saved_paths = self.previous_saved_paths[excess:]

    @staticmethod
    def get_rng_state() -> dict[str, Any]:
        """Snapshot of the torch (CPU and, when present, CUDA), numpy and Python generators."""
        state = {"cpu": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    @staticmethod
    def load_rng_state(rng_state: Mapping[str, Any]) -> None:
        """Restore a snapshot from :meth:`get_rng_state`; a CUDA entry is ignored on a CPU-only machine."""
        torch.set_rng_state(rng_state["cpu"])
        np.random.set_state(rng_state["numpy"])
        random.setstate(rng_state["random"])
        if "cuda" in rng_state and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng_state["cuda"])


def get_checkpoint_tracker_filename(root_path: str | os.PathLike) -> str:
    """Path of the file naming the latest complete step: ``{root_path}/latest_checkpointed_iteration.txt``."""
    return os.path.join(os.fspath(root_path), TRACKER_FILENAME)


def find_latest_ckpt_path(path: str | os.PathLike | None, directory_format: str = "global_step_{}") -> str | None:
    """The directory of the latest complete checkpoint under ``path``, or None (the reason is logged).

    Args:
        path: ``trainer.default_local_dir``.
        directory_format: how a step's directory is named.

    Returns:
        ``{path}/global_step_N`` when the tracker file holds ``N`` and that directory exists; None when ``path``
        is None, the tracker is missing or unreadable, or it points at a missing directory.
    """
    if path is None:
        return None
    tracker = get_checkpoint_tracker_filename(path)
    if not os.path.exists(tracker):
        logger.info("no checkpoint tracker file at %s: nothing to resume", tracker)
        return None
    with open(tracker, encoding="utf-8") as fp:
        content = fp.read().strip()
    try:
        step = int(content)
    except ValueError:
        logger.warning("checkpoint tracker %s holds %r, not a step number: ignoring it", tracker, content)
        return None
    ckpt_path = os.path.join(os.fspath(path), directory_format.format(step))
    if not os.path.isdir(ckpt_path):
        logger.warning("checkpoint tracker %s points at %s, which does not exist: ignoring it", tracker, ckpt_path)
        return None
    logger.info("latest checkpoint: %s", ckpt_path)
    return ckpt_path


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable across power loss; not possible on every OS/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` so that readers see either the old content or the new, never a part.

    The text goes to a temporary file in the same directory, is flushed and fsynced, then renamed over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows). If anything fails before the rename, the old
    file is untouched and the temporary file is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; the tracker should be as readable as a normal file
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        raise
    _fsync_directory(directory)


def should_save_ckpt_esi(max_steps_duration: float, save_ckpt_duration: float = 60, redundant_time: float = 0) -> bool:
    """Whether the compute reservation ends before another step plus a save could finish.

    Reads the expiration time (seconds since the epoch) from ``MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP``
    (Volcengine ML platform) or ``SAGEMAKER_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP`` (AWS). Returns True
    when the time left is positive and at most ``max_steps_duration + save_ckpt_duration + redundant_time``.
    False when neither variable is set, the value is not a number, the reservation already ended, or no step
    duration is known yet (``max_steps_duration <= 0``).
    """
    raw = os.environ.get("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP") or os.environ.get(
        "SAGEMAKER_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP"
    )
    if not raw:
        return False
    try:
        remaining = float(raw) - time.time()
    except ValueError:
        logger.warning("capacity block expiration timestamp %r is not a number: ignoring it", raw)
        return False
    if max_steps_duration <= 0 or remaining <= 0:
        return False
    return remaining <= max_steps_duration + save_ckpt_duration + redundant_time
