"""Device helpers with a CPU fallback.

Every place that needs to know "which accelerator, which collective backend" asks here, so the CPU path
(``cpu`` device, ``gloo`` backend) is the same code as the GPU path with different answers.
"""

from __future__ import annotations

import types

import torch

is_cuda_available: bool = torch.cuda.is_available()
is_npu_available: bool = False  # Ascend NPUs are not supported by this implementation.


def is_torch_npu_available(check_device: bool = True) -> bool:
    return False


def get_device_name() -> str:
    """``"cuda"`` when a CUDA device is visible, else ``"cpu"``."""
    return "cuda" if is_cuda_available else "cpu"


def get_torch_device() -> types.ModuleType:
    """The ``torch.<device>`` namespace (``torch.cuda`` or ``torch.cpu``)."""
    return getattr(torch, get_device_name(), torch.cuda)


def get_device_id() -> int:
    return torch.cuda.current_device() if is_cuda_available else 0


def get_nccl_backend() -> str:
    """Collective backend for the current device: ``nccl`` on CUDA, ``gloo`` on CPU."""
    return "nccl" if is_cuda_available else "gloo"


def get_dist_backend() -> str:
    """Backend string for ``init_process_group`` that serves both CPU and (when present) CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if is_cuda_available else "gloo"


def get_visible_devices_keyword() -> str:
    return "CUDA_VISIBLE_DEVICES"


def get_resource_name() -> str:
    """Ray resource name of one accelerator (``GPU``); on CPU, processes ask for ``CPU`` instead."""
    return "GPU"


def set_expandable_segments(enable: bool) -> None:
    if is_cuda_available:
        torch.cuda.memory._set_allocator_settings(f"expandable_segments:{enable}")


def resolve_device(requested: str) -> str:
    """``trainer.device`` for this machine: ``cuda`` becomes ``cpu`` when no CUDA device exists."""
    return "cpu" if requested == "cuda" and not is_cuda_available else requested


def auto_set_device(config) -> None:
    """verl's helper: rewrite a composed ``DictConfig``'s ``trainer.device`` before it is validated (main_ppo builds
    the typed tree with :func:`resolve_device` instead)."""
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if trainer is not None and "device" in trainer:
        trainer.device = resolve_device(trainer.device)


def get_device_capability(device_id: int = 0) -> tuple[int, int] | tuple[None, None]:
    if is_cuda_available:
        return torch.cuda.get_device_capability(device_id)
    return (None, None)
