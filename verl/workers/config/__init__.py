"""Typed config nodes of the workers, built from the Hydra tree with ``omega_conf_to_dataclass``.

Each YAML node with a ``_target_`` such as ``verl.workers.config.FSDPActorConfig`` maps to one class here; the
whole tree is ``verl.trainer.config.PPOTrainerConfig``.
"""

from __future__ import annotations

from verl.trainer.config.algorithm import CheckpointConfig
from verl.workers.config.actor import LOSS_AGG_MODES, ActorConfig, FSDPActorConfig, McoreActorConfig, PolicyLossConfig
from verl.workers.config.actor_rollout_ref import ActorRolloutRefConfig, RefConfig
from verl.workers.config.critic import CriticConfig, CriticModelConfig, FSDPCriticConfig, McoreCriticConfig
from verl.workers.config.engine import FSDPEngineConfig, McoreEngineConfig
from verl.workers.config.model import CriticLoraConfig, HFModelConfig, LoraConfig
from verl.workers.config.optimizer import FSDPOptimizerConfig, McoreOptimizerConfig, OptimizerConfig
from verl.workers.config.reward import RewardConfig
from verl.workers.config.reward_model import RewardModelConfig
from verl.workers.config.rollout import (
    LOGIT_CAPTURE_MODES,
    AgentLoopConfig,
    CheckpointEngineConfig,
    CustomAsyncServerConfig,
    LogitCaptureConfig,
    MultiTurnConfig,
    RolloutConfig,
    SamplingConfig,
    TraceConfig,
)

__all__ = [
    "LOGIT_CAPTURE_MODES",
    "LOSS_AGG_MODES",
    "ActorConfig",
    "ActorRolloutRefConfig",
    "AgentLoopConfig",
    "CheckpointConfig",
    "CheckpointEngineConfig",
    "CriticConfig",
    "CriticModelConfig",
    "CustomAsyncServerConfig",
    "FSDPActorConfig",
    "FSDPCriticConfig",
    "FSDPEngineConfig",
    "FSDPOptimizerConfig",
    "HFModelConfig",
    "LogitCaptureConfig",
    "CriticLoraConfig",
    "LoraConfig",
    "McoreActorConfig",
    "McoreCriticConfig",
    "McoreEngineConfig",
    "McoreOptimizerConfig",
    "MultiTurnConfig",
    "OptimizerConfig",
    "PolicyLossConfig",
    "RefConfig",
    "RewardConfig",
    "RewardModelConfig",
    "RolloutConfig",
    "SamplingConfig",
    "TraceConfig",
]
