"""Stage timers and memory logging (see :mod:`verl.utils.profiler.performance`)."""

from __future__ import annotations

from verl.utils.profiler.performance import (
    GPUMemoryLogger,
    get_memory_metrics,
    log_gpu_memory_usage,
    marked_timer,
    simple_timer,
)

__all__ = ["GPUMemoryLogger", "get_memory_metrics", "log_gpu_memory_usage", "marked_timer", "simple_timer"]
