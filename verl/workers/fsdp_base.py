"""What every FSDP worker shares: process-group start-up and seeding, the FSDP wrap, offload around a block of work,
memory metrics, and the base class that registers a worker's dispatch meshes (``verl.workers.fsdp_workers`` and
``verl.workers.fsdp_value_workers`` build on it; the Megatron workers reuse its start-up)."""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from verl.single_controller.base import Worker
from verl.utils import fsdp_utils
from verl.utils.device import get_device_name, get_dist_backend
from verl.workers.config import (
    FSDPEngineConfig,
)

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ process helpers


def _init_distributed(worker: Worker, timeout_s: int = 600) -> None:
    """Join the worker group's process group (once per process; colocated workers share it)."""
    if dist.is_initialized():
        return
    if get_device_name() == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend=get_dist_backend(),
        rank=worker.rank,
        world_size=worker.world_size,
        timeout=timedelta(seconds=timeout_s),
        init_method="tcp://{}:{}".format(*worker.get_master_addr_port()),
    )


def _seed_process(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _wants_full_determinism(config: Any) -> bool:
    """Whether any ``fsdp_config.full_determinism`` in this worker's typed config subtree is true."""
    if isinstance(config, FSDPEngineConfig):
        return bool(config.full_determinism)
    if dataclasses.is_dataclass(config):
        return any(_wants_full_determinism(getattr(config, f.name)) for f in dataclasses.fields(config))
    return False


def _memory_metrics() -> dict[str, float]:
    import psutil

    metrics = {"perf/cpu_memory_used_gb": psutil.virtual_memory().used / 1024**3}
    if torch.cuda.is_available():
        metrics["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        metrics["perf/max_memory_reserved_gb"] = torch.cuda.max_memory_reserved() / 1024**3
    else:
        metrics["perf/max_memory_allocated_gb"] = 0.0
        metrics["perf/max_memory_reserved_gb"] = 0.0
    return metrics


def _log_offload_on_cpu(fsdp_config: FSDPEngineConfig, who: str) -> None:
    if get_device_name() == "cpu" and (fsdp_config.param_offload or fsdp_config.optimizer_offload):
        logger.info("%s: param/optimizer offload requested; a no-op on CPU (tensors already live in host memory)", who)


def _build_sharded(module: torch.nn.Module, strategy: str, fsdp_config: Any, mesh) -> torch.nn.Module:
    if strategy not in ("fsdp", "fsdp2"):
        raise ValueError(f"strategy={strategy!r} is not served by the FSDP workers; use fsdp or fsdp2")
    return fsdp_utils.wrap_model(module, strategy, fsdp_config, mesh)


def _current_lr(scheduler: Any) -> float:
    lr = scheduler.get_last_lr()[0]
    return float(lr.item() if torch.is_tensor(lr) else lr)


class _Offload:
    """Bring an offloaded model/optimizer to the device for a block of work, then offload again."""

    def __init__(self, module, optimizer, fsdp_config: FSDPEngineConfig):
        self.module, self.optimizer = module, optimizer
        # With FSDP2's offload_policy torch moves parameters itself.
        policy = fsdp_config.offload_policy and fsdp_utils.is_fsdp2_module(module)
        self.params = fsdp_config.param_offload and not policy
        self.optim = fsdp_config.optimizer_offload

    def __enter__(self):
        if self.params:
            fsdp_utils.load_fsdp_model_to_gpu(self.module)
        if self.optim and self.optimizer is not None:
            fsdp_utils.load_fsdp_optimizer(self.optimizer)

    def __exit__(self, *exc):
        if self.params:
            fsdp_utils.offload_fsdp_model_to_cpu(self.module)
        if self.optim and self.optimizer is not None:
            fsdp_utils.offload_fsdp_optimizer(self.optimizer)
        return False


class _FSDPWorkerBase(Worker):
    """Shared set-up: typed config, process group, device mesh and dispatch registration."""

    _sp = 1  # Ulysses sequence-parallel size of this worker's training forward (set from the config)

    def _setup(self, config: Any, meshes: tuple[str, ...], seed: int, timeout_s: int) -> None:
        self.config = config
        self._seed = seed
        _init_distributed(self, timeout_s)
        for mesh_name in meshes:
            # Without Ulysses every rank is its own dp rank and returns its own piece; with it the ranks of one
            # sequence-parallel group (consecutive ranks) share a dp rank, and the group's first rank returns
            sp = self._mesh_sp(mesh_name)
            self._register_dispatch_collect_info(mesh_name, dp_rank=self.rank // sp, is_collect=self.rank % sp == 0)

    def _mesh_sp(self, mesh_name: str) -> int:
        """Ulysses sequence-parallel size of the ranks serving ``mesh_name`` (1: none)."""
        return 1

    def _ulysses_groups(self, sp: int) -> tuple[Any, Any]:
        """``(sp_group, dp_group)`` for Ulysses size ``sp``; ``(None, None)`` without it."""
        if sp == 1:
            return None, None
        from verl.utils.ulysses import ulysses_groups

        return ulysses_groups(sp)

    def _check_sp_divides(self, sp: int, key_name: str) -> int:
        if sp < 1 or self.world_size % sp:
            raise ValueError(
                f"{key_name}={sp} must divide the {self.world_size} ranks (trainer.n_gpus_per_node * trainer.nnodes)"
            )
        return sp

    def _seed_rngs(self) -> None:
        """Seed the process-global RNGs with ``seed + rank``; called last in ``init_model``.

        Fresh processes start from random seeds, and sampling draws from these generators: a fixed per-rank seed
        makes runs reproducible (ranks still sample differently) and checkpoints carry the state forward, so a
        resumed run matches an uninterrupted one.
        """
        _seed_process(self._seed + self.rank)
        if _wants_full_determinism(self.config):
            # fsdp_config.full_determinism: deterministic kernels only (an op without one raises instead of running)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

    def _mesh(self, fsdp_config: FSDPEngineConfig):
        return fsdp_utils.create_device_mesh(self.world_size, fsdp_config.fsdp_size)

    def _has_checkpoint_manager(self, manager, what: str) -> bool:
        if manager is None:
            logger.warning("%s: this worker has no trainable model; nothing to checkpoint", what)
            return False
        return True
