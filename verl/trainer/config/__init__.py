"""The trainer's config: typed nodes of the ``algorithm`` block and, lazily, the whole tree and its loader.

``PPOTrainerConfig`` (the whole ``ppo_trainer.yaml`` tree) and ``build_trainer_config`` are resolved on first
access: they import the worker nodes, which import this package's ``algorithm`` module.
"""

from __future__ import annotations

from verl.trainer.config.algorithm import (
    AlgoConfig,
    CheckpointConfig,
    FilterGroupsConfig,
    KLControlConfig,
    PFPPOConfig,
    RolloutCorrectionConfig,
)

_LAZY = {
    "PPOTrainerConfig": "verl.trainer.config.ppo_trainer",
    "TrainerConfig": "verl.trainer.config.ppo_trainer",
    "build_trainer_config": "verl.trainer.config.build",
    "validate_config": "verl.trainer.config.build",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'verl.trainer.config' has no attribute {name!r}")


__all__ = [
    "AlgoConfig",
    "CheckpointConfig",
    "FilterGroupsConfig",
    "KLControlConfig",
    "PFPPOConfig",
    "PPOTrainerConfig",
    "RolloutCorrectionConfig",
    "TrainerConfig",
    "build_trainer_config",
    "validate_config",
]
