"""Interface of a PPO actor: recompute log-probs of given responses, and update the policy from a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl.protocol import DataProto

__all__ = ["BasePPOActor"]


class BasePPOActor(ABC):
    """A policy that scores responses and learns from advantages.

    Args:
        config: the ``actor_rollout_ref.actor`` config subtree (DictConfig, dataclass config or dict).
    """

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def compute_log_prob(self, data: DataProto, calculate_entropy: bool = False) -> dict[str, torch.Tensor | None]:
        """Log-probs ``(bs, response_length)`` of ``data.batch["responses"]`` under the current policy."""

    @abstractmethod
    def update_policy(self, data: DataProto) -> dict[str, Any]:
        """Run the PPO update on ``data`` and return metrics (lists of floats keyed by verl's names)."""
