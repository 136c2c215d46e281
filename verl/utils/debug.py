"""Old import location of the stage timers; kept because recipes import ``verl.utils.debug.marked_timer``."""

from __future__ import annotations

from verl.utils.profiler import GPUMemoryLogger, log_gpu_memory_usage, marked_timer, simple_timer

__all__ = ["GPUMemoryLogger", "log_gpu_memory_usage", "marked_timer", "simple_timer"]
