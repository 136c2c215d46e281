"""Typed views of the ``*.optim`` nodes (actor and critic optimizers and their LR schedules)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig, check_choice

__all__ = ["FSDPOptimizerConfig", "OptimizerConfig"]


@dataclass
class OptimizerConfig(BaseConfig):
    """Backend-independent optimizer settings."""

    _mutable_fields = BaseConfig._mutable_fields | {"total_training_steps"}

    optimizer: str = "AdamW"
    """Optimizer class name, looked up in optimizer_impl."""
    optimizer_impl: str = "torch.optim"
    """Module that holds the optimizer class."""
    lr: float = 1e-6
    """Peak learning rate."""
    lr_warmup_steps: int = -1
    """Warm-up steps; -1 derives them from lr_warmup_steps_ratio."""
    lr_warmup_steps_ratio: float = 0.0
    """Warm-up length as a fraction of total_training_steps (used when lr_warmup_steps < 0)."""
    total_training_steps: int = -1
    """Filled in by the trainer from the dataloader length and total_epochs."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas."""
    clip_grad: float = 1.0
    """Gradient-norm clip (the actor's grad_clip key takes precedence where both exist)."""
    override_optimizer_config: dict[str, Any] | None = None
    """Extra keyword arguments passed to the optimizer constructor."""

    def __post_init__(self) -> None:
        if self.lr < 0:
            raise ValueError(f"optim.lr={self.lr} must be >= 0")
        if not 0.0 <= self.lr_warmup_steps_ratio <= 1.0:
            raise ValueError(f"optim.lr_warmup_steps_ratio={self.lr_warmup_steps_ratio} must lie in [0, 1]")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas={list(self.betas)} must have two entries, e.g. [0.9, 0.999]")


@dataclass
class FSDPOptimizerConfig(OptimizerConfig):
    """Optimizer settings of the FSDP workers, with the LR scheduler."""

    lr_scheduler_type: str = "constant"
    """constant | cosine (after the warm-up)."""
    min_lr_ratio: float | None = 0.0
    """Cosine schedule: floor of the learning rate as a fraction of lr."""
    num_cycles: float = 0.5
    """Cosine schedule: number of half-waves over training (0.5 decays once)."""
    warmup_style: str | None = None
    """Deprecated alias of lr_scheduler_type; when set it wins and a warning is issued."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_style is not None:
            warnings.warn(
                "optim.warmup_style is deprecated; use optim.lr_scheduler_type instead",
                DeprecationWarning,
                stacklevel=2,
            )
            self._set("lr_scheduler_type", self.warmup_style)
        check_choice("optim.lr_scheduler_type", self.lr_scheduler_type, ("constant", "cosine"))
        if self.min_lr_ratio is not None and not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
