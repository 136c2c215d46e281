"""Typed profiler nodes: ``<role>.profiler`` (:class:`ProfilerConfig`) and ``global_profiler``.

The nsys/npu/torch profilers are not wired in (``timing_s/*`` metrics are always logged), so turning a profiler on
is refused before Ray starts; the other keys are accepted and only matter once one is on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key

__all__ = ["GlobalProfilerConfig", "ProfilerConfig"]

_OFF = "only used when a profiler is on, which is refused"


def _profiling_refused() -> Refuse:
    return Refuse(
        lambda v: not v,
        "false",
        "per-role profiling is not wired in; set false (timing_s/* metrics are always logged)",
        "profiles this role's workers with global_profiler.tool",
        True,
    )


@dataclass
class ProfilerConfig(BaseConfig):
    """``<role>.profiler``: profiling of one role's workers."""

    tool: str | None = key(None, follows="global_profiler.tool", effect="inert", reason=_OFF)
    """Profiler (follows global_profiler.tool)."""
    enable: bool = key(False, refuse=_profiling_refused())
    """Profile this role."""
    all_ranks: bool = key(False, effect="inert", reason=_OFF)
    """Profile every rank (instead of ranks)."""
    ranks: list[int] = key(factory=list, effect="inert", reason=_OFF)
    """Ranks to profile."""
    save_path: str | None = key(None, follows="global_profiler.save_path", effect="inert", reason=_OFF)
    """Where traces go (follows global_profiler.save_path)."""
    tool_config: dict[str, Any] = key(factory=dict, effect="inert", reason=_OFF)
    """Per-tool options."""

    def union(self, other: ProfilerConfig) -> ProfilerConfig:
        """Profile what either profiles: enabled if either is, all ranks if either says so, the ranks of both."""
        return dataclasses.replace(
            self,
            enable=self.enable or other.enable,
            all_ranks=self.all_ranks or other.all_ranks,
            ranks=sorted(set(self.ranks) | set(other.ranks)),
            tool=self.tool or other.tool,
        )

    def intersect(self, other: ProfilerConfig) -> ProfilerConfig:
        """Profile what both profile: enabled if both are, all ranks if both say so, the ranks they share."""
        return dataclasses.replace(
            self,
            enable=self.enable and other.enable,
            all_ranks=self.all_ranks and other.all_ranks,
            ranks=sorted(set(self.ranks) & set(other.ranks)),
            tool=self.tool if self.tool == other.tool else None,
        )


@dataclass
class GlobalProfilerConfig(BaseConfig):
    """``global_profiler``: which tool profiles which steps."""

    _emit_target = False

    tool: str | None = key(
        None,
        refuse=Refuse(
            lambda v: v is None or v == "",
            "null",
            "the nsys/npu/torch profilers are not wired in; set null (timing_s/* metrics are always logged)",
            "profiles the steps in global_profiler.steps with the named tool",
            "nsys",
        ),
    )
    """null (off), nsys, npu, torch, torch_memory."""
    steps: list[int] | None = key(None, effect="inert", reason=_OFF)
    """Steps to profile, e.g. [1, 2, 5]."""
    profile_continuous_steps: bool = key(False, effect="inert", reason=_OFF)
    """Profile consecutive steps into one trace."""
    save_path: str = key("outputs/profile", effect="inert", reason=_OFF)
    """Where traces go."""
    global_tool_config: dict[str, Any] = key(
        factory=lambda: {
            "nsys": {"discrete": False},
            "torch_memory": {"trace_alloc_max_entries": 100000, "stack_depth": 32},
        },
        effect="inert",
        reason=_OFF,
    )
    """Per-tool options (nsys, torch_memory)."""
