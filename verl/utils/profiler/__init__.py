"""Stage timers, memory logging and the profiler config nodes.

The timers (:mod:`verl.utils.profiler.performance`, which imports torch) are resolved on first use, so the config
classes (:mod:`verl.utils.profiler.config`) can be imported without torch.
"""

from __future__ import annotations

from verl.utils.profiler.config import GlobalProfilerConfig, ProfilerConfig

_TIMERS = ("GPUMemoryLogger", "get_memory_metrics", "log_gpu_memory_usage", "marked_timer", "simple_timer")


def __getattr__(name: str):
    if name in _TIMERS:
        from verl.utils.profiler import performance

        return getattr(performance, name)
    raise AttributeError(f"module 'verl.utils.profiler' has no attribute {name!r}")


__all__ = ["GlobalProfilerConfig", "ProfilerConfig", *_TIMERS]
