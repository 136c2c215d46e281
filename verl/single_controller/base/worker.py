"""The base class of every distributed worker, and the environment contract it reads.

A worker is one process of a worker group (under Ray, one actor). The group that starts it sets these
environment variables, and :class:`Worker` reads them once in ``__init__``:

==================== ========= ==============================================================================
variable             required  meaning
==================== ========= ==============================================================================
``WORLD_SIZE``       yes       number of workers in the group
``RANK``             yes       this worker's global rank, ``0 <= RANK < WORLD_SIZE``
``MASTER_ADDR``      yes       address of rank 0 for ``torch.distributed`` (``127.0.0.1`` on a single node)
``MASTER_PORT``      yes       a free port on rank 0's node
``LOCAL_WORLD_SIZE`` no (1)    workers sharing this worker's accelerator view
``LOCAL_RANK``       no (0)    this worker's index among them
==================== ========= ==============================================================================

With those set, ``torch.distributed.init_process_group(backend)`` with the default ``env://`` method just works.

``DISABLE_WORKER_INIT=1`` is set while a colocated worker (several roles in one process) builds its inner
role objects: they read the same contract but skip the once-per-process setup, which the outer worker did.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from verl.single_controller.base.decorator import Dispatch, Execute, register

_REQUIRED_ENV = ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")


def _find_free_port() -> int:
    # Binding to port 0 lets the OS pick a free port; the small window before torch binds it is accepted.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _node_address() -> str:
    """``127.0.0.1`` on a single-node (or no) Ray cluster; the node's Ray IP when there are several nodes.

    Ray can report an IP that is not routable locally on one machine, so loopback is the safe choice there.
    """
    ray = _ray_if_initialized()
    if ray is None or sum(1 for n in ray.nodes() if n.get("Alive")) <= 1:
        return "127.0.0.1"
    return ray.util.get_node_ip_address()


def _ray_if_initialized():
    ray = sys.modules.get("ray")
    return ray if ray is not None and ray.is_initialized() else None


def get_available_master_addr_port() -> tuple[str, str]:
    """An address of this node and a free port on it, as strings ready for ``MASTER_ADDR`` / ``MASTER_PORT``."""
    return _node_address(), str(_find_free_port())


class Worker:
    """Base class for worker-group members: knows its rank, world size and rank 0's address.

    Subclasses mark methods with ``@register`` to make them callable through a worker group, and may declare
    their data-parallel position per mesh with :meth:`_register_dispatch_collect_info`.
    """

    def __init__(self, cuda_visible_devices: str | None = None) -> None:
        missing = [key for key in _REQUIRED_ENV if key not in os.environ]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} needs the environment variables {missing}; a worker group sets them, "
                "or set WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT yourself for a single process"
            )
        self._world_size = int(os.environ["WORLD_SIZE"])
        self._rank = int(os.environ["RANK"])
        if not 0 <= self._rank < self._world_size:
            raise ValueError(f"RANK={self._rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={self._world_size})")
        self._master_addr = os.environ["MASTER_ADDR"]
        self._master_port = os.environ["MASTER_PORT"]
        self._local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self._local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._cuda_visible_devices = cuda_visible_devices or os.environ.get("CUDA_VISIBLE_DEVICES")
        self._dispatch_dp_rank: dict[str, int] = {}
        self._collect_flag: dict[str, bool] = {}
        self.fused_worker_dict: dict[str, Worker] = {}
        if os.environ.get("DISABLE_WORKER_INIT", "0") != "1":
            self._configure_process()

    def _configure_process(self) -> None:
        """Once per process: make the env contract visible to libraries that read ``os.environ`` directly."""
        from verl.utils.console import quiet_third_party

        quiet_third_party()  # engines started in this worker keep their start-up notes to themselves
        # ROCm exposes devices through its own variables; code downstream only looks at CUDA_VISIBLE_DEVICES.
        for key in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
            if key in os.environ and "CUDA_VISIBLE_DEVICES" not in os.environ:
                os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[key]
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(self._local_world_size))
        os.environ.setdefault("LOCAL_RANK", str(self._local_rank))
        if self._cuda_visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._cuda_visible_devices

    @classmethod
    def env_keys(cls) -> list[str]:
        """The environment variables of the worker contract."""
        return [
            "WORLD_SIZE",
            "RANK",
            "LOCAL_WORLD_SIZE",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
            "CUDA_VISIBLE_DEVICES",
        ]

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def local_world_size(self) -> int:
        return self._local_world_size

    def get_master_addr_port(self) -> tuple[str, str]:
        """Rank 0's ``(MASTER_ADDR, MASTER_PORT)`` as this worker was told."""
        return self._master_addr, self._master_port

    def get_cuda_visible_devices(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "not set")

    def get_available_master_addr_port(self) -> tuple[str, str]:
        """This node's address and a currently free port (e.g. for a second process group)."""
        return get_available_master_addr_port()

    # Upstream spells it this way too; kept so callers of either name work.
    get_availale_master_addr_port = get_available_master_addr_port

    def get_node_id(self) -> str:
        """Ray node id of this worker (Ray only)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def get_fused_worker_by_name(self, worker_name: str) -> Worker | None:
        """An inner role object of a fused worker, or None."""
        return self.fused_worker_dict.get(worker_name)

    # ------------------------------------------------------------------ per-mesh data-parallel layout

    def _register_dispatch_collect_info(self, mesh_name: str, dp_rank: int, is_collect: bool) -> None:
        """Declare this worker's data-parallel rank on ``mesh_name`` and whether its output is kept.

        Args:
            mesh_name: name used in ``make_nd_compute_dataproto_dispatch_fn(mesh_name)``.
            dp_rank: which data chunk this worker receives (workers of one TP/PP group share it).
            is_collect: True on exactly one worker per dp rank (e.g. TP rank 0 of the last PP stage).
        """
        if mesh_name in self._dispatch_dp_rank:
            raise ValueError(f"mesh {mesh_name!r} is already registered on rank {self.rank}")
        self._dispatch_dp_rank[mesh_name] = int(dp_rank)
        self._collect_flag[mesh_name] = bool(is_collect)

    def _check_mesh(self, mesh_name: str) -> None:
        if mesh_name not in self._dispatch_dp_rank:
            raise ValueError(
                f"mesh {mesh_name!r} was never registered on rank {self.rank} "
                f"(registered: {sorted(self._dispatch_dp_rank)}); call _register_dispatch_collect_info first"
            )

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def _query_dispatch_info(self, mesh_name: str) -> int:
        self._check_mesh(mesh_name)
        return self._dispatch_dp_rank[mesh_name]

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def _query_collect_info(self, mesh_name: str) -> bool:
        self._check_mesh(mesh_name)
        return self._collect_flag[mesh_name]

    def query_collect_info(self, mesh_name: str) -> bool:
        self._check_mesh(mesh_name)
        return self._collect_flag[mesh_name]

    def get_dispatch_collect(self) -> dict[str, dict[str, Any]]:
        """This worker's mesh layout, e.g. to copy onto another role object in the same process."""
        return {"dispatch": dict(self._dispatch_dp_rank), "collect": dict(self._collect_flag)}

    def set_dispatch_collect(self, info: dict[str, dict[str, Any]]) -> None:
        self._dispatch_dp_rank.update(info["dispatch"])
        self._collect_flag.update(info["collect"])

    # ------------------------------------------------------------------ driver-supplied functions

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO_WITH_FUNC)
    def execute_with_func_generator(self, func, *args, **kwargs):
        """Run ``func(self, *chunks)`` on every worker; the group concatenates the results."""
        return func(self, *args, **kwargs)

    @register(dispatch_mode=Dispatch.ALL_TO_ALL, execute_mode=Execute.RANK_ZERO)
    def execute_func_rank_zero(self, func, *args, **kwargs):
        """Run ``func(*args, **kwargs)`` on rank 0 only."""
        return func(*args, **kwargs)
