"""The trainer's Hydra configs (``ppo_trainer.yaml``, ``ppo_megatron_trainer.yaml``) and typed views of its blocks."""

from __future__ import annotations

from verl.trainer.config.algorithm import (
    AlgoConfig,
    CheckpointConfig,
    FilterGroupsConfig,
    KLControlConfig,
    PFPPOConfig,
    RolloutCorrectionConfig,
)

__all__ = [
    "AlgoConfig",
    "CheckpointConfig",
    "FilterGroupsConfig",
    "KLControlConfig",
    "PFPPOConfig",
    "RolloutCorrectionConfig",
]
