"""Wall-clock timers for trainer stages and memory reporting that is safe on CPU-only machines.

``marked_timer("gen", timing_raw)`` is how ``fit()`` names its stages: the elapsed seconds are added to
``timing_raw["gen"]``, which :func:`verl.trainer.ppo.metric_utils.compute_timing_metrics` turns into
``timing_s/gen``. On a CUDA machine the same block is also an NVTX range, so an Nsight trace shows the stage
names; on CPU that part is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "GPUMemoryLogger",
    "get_memory_metrics",
    "log_gpu_memory_usage",
    "marked_timer",
    "simple_timer",
]

_GIB = 1024**3


@contextlib.contextmanager
def simple_timer(name: str, timing_raw: dict[str, float]) -> Iterator[None]:
    """Add the wall time of the ``with`` block, in seconds, to ``timing_raw[name]``.

    Time is added rather than overwritten so a stage entered twice in one step (e.g. two generation
    passes) reports its total. The time is recorded even when the block raises.
    """
    start = time.perf_counter()
    try:
        yield
    finally:
        timing_raw[name] = timing_raw.get(name, 0.0) + (time.perf_counter() - start)


@contextlib.contextmanager
def _nvtx_range(name: str) -> Iterator[None]:
    pushed = False
    if torch.cuda.is_available():
        try:
            torch.cuda.nvtx.range_push(name)
            pushed = True
        except RuntimeError:  # NVTX missing from this CUDA build: timing still works.
            pushed = False
    try:
        yield
    finally:
        if pushed:
            torch.cuda.nvtx.range_pop()


@contextlib.contextmanager
def marked_timer(name: str, timing_raw: dict[str, float], color: str | None = None, **kwargs: Any) -> Iterator[None]:
    """Time a trainer stage into ``timing_raw[name]`` and mark it as an NVTX range on CUDA.

    Args:
        name: stage name (``gen``, ``reward``, ``old_log_prob``, ``ref``, ``values``, ``adv``, ``update_actor``...).
        timing_raw: dict receiving seconds; repeated entries accumulate.
        color: profiler colour hint; accepted for call-site compatibility, unused.
        **kwargs: other profiler hints (e.g. ``domain``); accepted and ignored.

    Example:
        >>> timing = {}
        >>> with marked_timer("gen", timing):
        ...     pass
        >>> "gen" in timing
        True
    """
    with _nvtx_range(name), simple_timer(name, timing_raw):
        yield


def _cuda_memory_gib() -> tuple[float, float, float, float]:
    """(allocated, reserved, max allocated, max reserved) on the current CUDA device, in GiB."""
    return (
        torch.cuda.memory_allocated() / _GIB,
        torch.cuda.memory_reserved() / _GIB,
        torch.cuda.max_memory_allocated() / _GIB,
        torch.cuda.max_memory_reserved() / _GIB,
    )


def _process_rss_gib() -> float:
    try:
        import psutil
    except ImportError:
        return 0.0
    return psutil.Process().memory_info().rss / _GIB


def get_memory_metrics() -> dict[str, float]:
    """Peak accelerator memory and this process's resident memory, with verl's metric names.

    Returns:
        ``perf/max_memory_allocated_gb``, ``perf/max_memory_reserved_gb`` (0.0 without CUDA) and
        ``perf/cpu_memory_used_gb`` (resident set size of this process; 0.0 if psutil is missing).
    """
    max_alloc = max_reserved = 0.0
    if torch.cuda.is_available():
        _, _, max_alloc, max_reserved = _cuda_memory_gib()
    return {
        "perf/max_memory_allocated_gb": max_alloc,
        "perf/max_memory_reserved_gb": max_reserved,
        "perf/cpu_memory_used_gb": _process_rss_gib(),
    }


def log_gpu_memory_usage(
    head: str, logger: logging.Logger | None = None, level: int = logging.DEBUG, rank: int | None = 0
) -> None:
    """Log CUDA memory in use, prefixed by ``head``; does nothing on a machine without CUDA.

    Args:
        head: what is happening (``"After init model"``).
        logger: where to log; ``None`` prints instead.
        level: logging level used with ``logger``.
        rank: only this global rank logs; ``None`` lets every rank log.
    """
    if not torch.cuda.is_available():
        return
    if rank is not None and torch.distributed.is_initialized() and torch.distributed.get_rank() != rank:
        return
    alloc, reserved, _, _ = _cuda_memory_gib()
    message = f"{head}, memory allocated (GB): {alloc:.2f}, memory reserved (GB): {reserved:.2f}"
    if logger is None:
        print(message, flush=True)
    else:
        logger.log(level, message)


class GPUMemoryLogger:
    """Decorator logging CUDA memory before and after a method; transparent on CPU.

    Args:
        role: label put in front of the message (``"dp actor"``).
        logger: logger to use; ``None`` prints.
        level: logging level.
        log_only_rank_0: when True only global rank 0 logs.

    Example:
        >>> @GPUMemoryLogger(role="actor")
        ... def update(x):
        ...     return x + 1
        >>> update(1)
        2
    """

    def __init__(
        self,
        role: str,
        logger: logging.Logger | None = None,
        level: int = logging.DEBUG,
        log_only_rank_0: bool = True,
    ):
        self.role = role
        self.logger = logger
        self.level = level
        self.log_only_rank_0 = log_only_rank_0

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            rank = 0 if self.log_only_rank_0 else None
            log_gpu_memory_usage(f"Before {self.role} {fn.__name__}", self.logger, self.level, rank)
            out = fn(*args, **kwargs)
            log_gpu_memory_usage(f"After {self.role} {fn.__name__}", self.logger, self.level, rank)
            return out

        return wrapper
