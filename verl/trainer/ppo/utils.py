"""Roles of the worker groups, and (re-exported) the rules that decide which ones a run needs."""

from __future__ import annotations

import warnings
from enum import Enum

# Which roles a run needs: decided from the typed tree, re-exported under verl's names.
from verl.trainer.config.build import need_critic, need_reference_policy, need_reward_model

__all__ = ["Role", "WorkerType", "need_critic", "need_reference_policy", "need_reward_model", "warn_unused_critic"]


class Role(Enum):
    """A role a worker group plays in PPO. ``str(role)`` is the short name used as a timer and prefix key."""

    Actor = 0
    Rollout = 1
    ActorRollout = 2
    Critic = 3
    RefPolicy = 4
    RewardModel = 5
    ActorRolloutRef = 6
    Env = 7

    def __str__(self) -> str:
        return _ROLE_NAMES[self]

    @classmethod
    def from_string(cls, name: str) -> Role:
        for role, text in _ROLE_NAMES.items():
            if text == name:
                return role
        raise ValueError(f"unknown role {name!r}; expected one of {sorted(_ROLE_NAMES.values())}")


_ROLE_NAMES = {
    Role.Actor: "actor",
    Role.Rollout: "rollout",
    Role.ActorRollout: "actor_rollout",
    Role.Critic: "critic",
    Role.RefPolicy: "ref",
    Role.RewardModel: "rm",
    Role.ActorRolloutRef: "actor_rollout_ref",
    Role.Env: "env",
}

WorkerType = type


def warn_unused_critic(config) -> None:
    if config.critic.enable and config.algorithm.adv_estimator != "gae":
        warnings.warn(
            f"critic.enable=True with algorithm.adv_estimator={config.algorithm.adv_estimator}: "
            "the critic is trained but its values are not used by this estimator",
            stacklevel=2,
        )
