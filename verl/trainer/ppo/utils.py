"""Roles of the worker groups and the rules that decide which ones a run needs."""

from __future__ import annotations

import warnings
from enum import Enum


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


def need_reference_policy(config) -> bool:
    """A frozen reference policy is needed for the KL term, in the reward or in the loss."""
    return bool(config.algorithm.use_kl_in_reward or config.actor_rollout_ref.actor.use_kl_loss)


def need_reward_model(config) -> bool:
    rm = config.get("reward_model") or {}
    return bool(rm.get("enable", False))


def need_critic(config) -> bool:
    """``critic.enable`` wins when set; otherwise a critic runs only for GAE."""
    enable = config.critic.get("enable", None)
    if enable is not None:
        return bool(enable)
    if config.algorithm.adv_estimator == "gae":
        return True
    return False


def warn_unused_critic(config) -> None:
    if config.critic.get("enable") and config.algorithm.adv_estimator != "gae":
        warnings.warn(
            f"critic.enable=True with algorithm.adv_estimator={config.algorithm.adv_estimator}: "
            "the critic is trained but its values are not used by this estimator",
            stacklevel=2,
        )
