"""Typed view of ``reward`` (verl v0.7+): the newer reward layout. Every null here falls back to the legacy key
(``reward_model.*``, ``custom_reward_function.*``); setting both to different values is refused by the reward loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key

__all__ = [
    "RewardConfig",
    "RewardCustomFunctionConfig",
    "RewardLoopModelConfig",
    "RewardManagerConfig",
    "RewardManagerModuleConfig",
    "RewardSandboxConfig",
]

_NEW_LAYOUT_RM = "the model-based reward of the 0.7 layout is not implemented; use reward_model.enable/model.path"


def _unset(value: Any) -> bool:
    return value is None or value == ""


@dataclass
class RewardCustomFunctionConfig(BaseConfig):
    """``reward.custom_reward_function``: a scoring function in a Python file (null: custom_reward_function.*)."""

    _emit_target = False

    path: str | None = None
    """File defining the function."""
    name: str | None = None
    """Function name (null: custom_reward_function.name, compute_score)."""
    reward_kwargs: dict[str, Any] = key(factory=dict)
    """Keyword arguments bound to the function."""


@dataclass
class RewardManagerModuleConfig(BaseConfig):
    """``reward.reward_manager.module``: a reward-manager class in a file (source=importlib)."""

    _emit_target = False

    path: str | None = None
    """File defining the class."""
    name: str = "custom_reward_manager"
    """Class name in that file."""


@dataclass
class RewardManagerConfig(BaseConfig):
    """``reward.reward_manager``: which reward manager scores the batch."""

    _path = "reward.reward_manager"

    _emit_target = False

    source: str = key("register", choices=("register", "importlib"))
    """register: `name` is looked up in the reward-manager registry; importlib: loaded from `module`."""
    name: str | None = None
    """Registered name (null: reward_model.reward_manager)."""
    module: RewardManagerModuleConfig = key(factory=RewardManagerModuleConfig)
    """The class to load with source=importlib."""


@dataclass
class RewardLoopModelConfig(BaseConfig):
    """``reward.reward_model``: the 0.7 layout of a model-based reward (not read; refused when set)."""

    _emit_target = False

    enable: bool | None = key(
        None,
        refuse=Refuse(lambda v: not v, "null or false", _NEW_LAYOUT_RM, "scores with a reward model", True),
    )
    """Score with a reward model."""
    enable_resource_pool: bool | None = key(None, effect="inert", reason="only used with reward.reward_model.enable")
    """Own resource pool."""
    n_gpus_per_node: int | None = key(None, effect="inert", reason="only used with reward.reward_model.enable")
    """Devices per node of that pool."""
    nnodes: int | None = key(None, effect="inert", reason="only used with reward.reward_model.enable")
    """Nodes of that pool."""
    model_path: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "the 0.7 reward-model layout is not read; set reward_model.model.path instead",
            "path of the model-based reward (0.7 layout)",
            "/models/rm",
        ),
    )
    """Path of the reward model."""


@dataclass
class RewardSandboxConfig(BaseConfig):
    """``reward.sandbox_fusion``: SandboxFusion settings (null: reward_model.sandbox_fusion.*)."""

    _emit_target = False

    url: str | None = None
    """SandboxFusion URL."""
    max_concurrent: int | None = None
    """Requests in flight at once."""
    memory_limit_mb: int | None = None
    """Memory limit of each run in MB."""


@dataclass
class RewardConfig(BaseConfig):
    """``reward`` (verl v0.7+): reward manager, custom function, sandbox (newer layout of the legacy keys)."""

    _emit_target = False

    num_workers: int = key(
        8, effect="inert", reason="parallelism of verl's reward loop; the same rewards are computed in the driver"
    )
    """Reward-loop workers."""
    custom_reward_function: RewardCustomFunctionConfig = key(factory=RewardCustomFunctionConfig)
    """A scoring function in a Python file."""
    reward_manager: RewardManagerConfig = key(factory=RewardManagerConfig)
    """Which reward manager scores the batch."""
    reward_model: RewardLoopModelConfig = key(factory=RewardLoopModelConfig)
    """The 0.7 layout of a model-based reward."""
    sandbox_fusion: RewardSandboxConfig = key(factory=RewardSandboxConfig)
    """SandboxFusion settings."""
    reward_kwargs: dict[str, Any] = key(factory=dict)
    """Extra keyword arguments of the reward manager."""
