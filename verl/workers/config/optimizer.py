"""The ``*.optim`` nodes; defined in ``verl.utils.optim_config`` (below the optimizer builders that read them)."""

from __future__ import annotations

from verl.utils.optim_config import FSDPOptimizerConfig, McoreOptimizerConfig, OptimizerConfig

__all__ = ["FSDPOptimizerConfig", "McoreOptimizerConfig", "OptimizerConfig"]
