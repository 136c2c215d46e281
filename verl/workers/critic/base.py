"""Interface of a PPO critic: predict per-token values, and regress them onto returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl.protocol import DataProto

__all__ = ["BasePPOCritic"]


class BasePPOCritic(ABC):
    """A value function over response tokens.

    Args:
        config: the ``critic`` config subtree (DictConfig, dataclass config or dict).
    """

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def compute_values(self, data: DataProto) -> torch.Tensor:
        """Values ``(bs, response_length)``, zero outside the response mask."""

    @abstractmethod
    def update_critic(self, data: DataProto) -> dict[str, Any]:
        """Run the value-loss update on ``data`` and return metrics."""
