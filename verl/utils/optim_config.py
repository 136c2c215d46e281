"""Typed views of the ``*.optim`` nodes (actor and critic optimizers and their LR schedules).

Defined here, below ``verl.utils.hf_models`` which builds optimizers and schedules from them (a plain dict handed to
those helpers becomes this class); ``verl.workers.config.FSDPOptimizerConfig`` is the public name.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import key

__all__ = ["FSDPOptimizerConfig", "McoreOptimizerConfig", "OptimizerConfig"]

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class OptimizerConfig(BaseConfig):
    """Backend-independent optimizer settings."""

    _path = "optim"

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
    total_training_steps: int = key(
        -1,
        effect="inert",
        reason="the trainer passes the run's length (dataloader length x total_epochs, or "
        "trainer.total_training_steps) to the workers as an argument; this key is overridden, as in verl",
    )
    """Set by the trainer from the dataloader length and total_epochs (a value given here is overridden)."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    betas: list[float] = key(factory=lambda: [0.9, 0.999])
    """Adam betas."""
    clip_grad: float = 1.0
    """Gradient-norm clip on the engine path (trainer.use_legacy_worker_impl=disable); the legacy path uses the
    actor's/critic's grad_clip, as verl."""
    override_optimizer_config: dict[str, Any] | None = None
    """Extra keyword arguments passed to the optimizer constructor."""

    def __post_init__(self) -> None:
        super().__post_init__()
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
    min_lr_ratio: float | None = key(None, yaml_default=0.0)
    """Cosine schedule: floor of the learning rate as a fraction of lr (null: 0)."""
    num_cycles: float = 0.5
    """Cosine schedule: number of half-waves over training (0.5 decays once)."""
    warmup_style: str | None = key(
        None, effect="inert", reason="deprecated alias of lr_scheduler_type, folded into it when the node is built"
    )
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
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ValueError(
                f"optim.lr_scheduler_type={self.lr_scheduler_type!r} is not valid; choose one of "
                f"{', '.join(repr(s) for s in LR_SCHEDULES)}."
            )
        if self.min_lr_ratio is not None and not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")


_MEGATRON_OFF = (
    "Megatron optimizer setting; the Megatron workers are not implemented yet (strategy=megatron is refused)"
)


@dataclass
class McoreOptimizerConfig(OptimizerConfig):
    """Optimizer settings of the Megatron workers (Megatron's own LR scheduler)."""

    lr_warmup_init: float = key(0.0, effect="inert", reason=_MEGATRON_OFF)
    """Learning rate at the start of the warm-up."""
    lr_decay_steps: int | None = key(None, effect="inert", reason=_MEGATRON_OFF)
    """Steps of the decay (null: total_training_steps)."""
    lr_decay_style: str = key("constant", effect="inert", reason=_MEGATRON_OFF)
    """constant | linear | cosine | inverse-square-root | WSD."""
    min_lr: float = key(0.0, effect="inert", reason=_MEGATRON_OFF)
    """Learning-rate floor."""
    weight_decay_incr_style: str = key("constant", effect="inert", reason=_MEGATRON_OFF)
    """How weight decay changes over training."""
    lr_wsd_decay_style: str = key("exponential", effect="inert", reason=_MEGATRON_OFF)
    """Decay of the WSD schedule."""
    lr_wsd_decay_steps: int | None = key(None, effect="inert", reason=_MEGATRON_OFF)
    """Decay steps of the WSD schedule."""
    use_checkpoint_opt_param_scheduler: bool = key(False, effect="inert", reason=_MEGATRON_OFF)
    """Restore the scheduler's settings from the checkpoint."""
