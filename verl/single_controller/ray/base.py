"""Worker groups on Ray: placement groups, actor start-up with the worker env contract, colocated roles.

* :class:`RayResourcePool` reserves one placement group per node, one bundle per worker process. A bundle is
  ``{"CPU": max_colocate_count, "GPU": 1}`` on GPUs and ``{"CPU": 1}`` on a CPU-only cluster, where one CPU
  plays the part of one GPU: worker groups colocated on the pool each ask ``1 / max_colocate_count`` of it.
* :class:`RayWorkerGroup` starts one actor per bundle with ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` (loopback
  on a single node), ``MASTER_PORT`` (free on rank 0's node) and friends, then binds every ``@register``-ed
  method: ``dispatch -> actor.method.remote -> ray.get (if blocking) -> collect -> strip padding``.
* :func:`create_colocated_worker_cls` puts several roles in one actor (methods exposed as ``{role}_{method}``;
  :meth:`RayWorkerGroup.spawn` gives one group per role). :func:`create_colocated_worker_raw_cls` builds a
  subclassable "fused" worker whose roles are attributes, reached from the driver through ``fuse``.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from tensordict import TensorDict

from verl.protocol import DataProto, DataProtoFuture, _padding_size_key
from verl.single_controller.base.worker import Worker, get_available_master_addr_port
from verl.single_controller.base.worker_group import (
    ClassWithInitArgs,
    ResourcePool,
    WorkerGroup,
    build_colocated_worker_cls,
    build_fused_worker_cls,
    strip_padding,
)
from verl.utils.device import get_device_name
from verl.utils.ray_utils import (
    check_bundles_feasible,
    is_single_local_node,
    parallel_put,
    sort_placement_groups_by_node_ip,
)

__all__ = [
    "RayClassWithInitArgs",
    "RayResourcePool",
    "RayWorkerGroup",
    "ResourcePoolManager",
    "SubRayResourcePool",
    "create_colocated_worker_cls",
    "create_colocated_worker_cls_fused",
    "create_colocated_worker_raw_cls",
    "node_targets",
    "split_resource_pool",
]

# Set by the worker group for every actor; ``worker_env`` may add variables but never change these.
PROTECTED_ENV_KEYS = (
    "WORLD_SIZE", "RANK", "WG_PREFIX", "WG_BACKEND", "RAY_LOCAL_WORLD_SIZE", "RAY_LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
)  # fmt: skip
# CPU workers share few cores; one intra-op thread each avoids oversubscription (override through worker_env).
CPU_WORKER_ENV_DEFAULTS = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
_ACCELERATOR_RESOURCE = {"cuda": "GPU", "npu": "NPU"}
_KNOWN_WG_KWARGS = {
    "device_name", "worker_env", "master_addr", "master_port", "use_gpu", "master_port_range", "profile_steps",
    "worker_nsight_options",
}  # fmt: skip


def func_generator(wg: WorkerGroup, method_name: str, dispatch_fn, collect_fn, execute_fn, blocking: bool):
    """The driver-side method: dispatch, run on the workers, wait (if blocking), collect, strip padding."""

    def method(*args: Any, **kwargs: Any) -> Any:
        if not _runs_as_coroutine(wg, method_name):
            _wait_for_future_inputs(args, kwargs)
        args, kwargs = dispatch_fn(wg, *args, **kwargs)
        pad_size = kwargs.pop(_padding_size_key, 0)
        output = execute_fn(method_name, *args, **kwargs)
        if blocking:
            output = ray.get(output)
        return strip_padding(collect_fn(wg, output), pad_size)

    method.__name__ = method_name
    return method


def _runs_as_coroutine(wg: WorkerGroup, method_name: str) -> bool:
    if wg._fused_prefix is not None:  # reached through the synchronous _fuw_execute
        return False
    return inspect.iscoroutinefunction(getattr(wg.ray_cls_with_init.user_cls, method_name, None))


def _wait_for_future_inputs(args: tuple, kwargs: dict) -> None:
    """Block until the tasks behind DataProtoFuture arguments finished (the data stays where it is).

    A synchronous method of an asyncio actor runs on the actor's event loop; resolving a future there would
    block the loop, and with it the coroutine on the same actor that is still producing the data.
    """
    refs = [ref for v in (*args, *kwargs.values()) if isinstance(v, DataProtoFuture) for ref in v.futures]
    if refs:
        ray.wait(refs, num_returns=len(refs), fetch_local=False)


# --------------------------------------------------------------------------------------------------- resources


def _accelerator(use_gpu: bool, device_name: str) -> str | None:
    return _ACCELERATOR_RESOURCE.get(device_name) if use_gpu else None


def node_targets(spec: dict[str, float], counts: list[int]) -> list[str | None]:
    """One node per placement group when there are several (``trainer.nnodes > 1``): the alive nodes that can hold a
    group, in (IP, node id) order, are suggested round-robin (Ray's soft target: it still packs elsewhere when the
    node is busy). Without it each group is packed independently, and with more CPUs per node than a group needs
    (CPU clusters, or a test cluster on one machine) every group could land on the first node."""
    if len(counts) <= 1:
        return [None] * len(counts)
    nodes = sorted(
        (n for n in ray.nodes() if n.get("Alive")),
        key=lambda n: (n.get("NodeManagerAddress", ""), n["NodeID"]),
    )
    fits = [
        n["NodeID"] for n in nodes if all(n.get("Resources", {}).get(k, 0) >= v * max(counts) for k, v in spec.items())
    ]
    if not fits:
        return [None] * len(counts)
    return [fits[i % len(fits)] for i in range(len(counts))]


class RayResourcePool(ResourcePool):
    """Placement groups for ``process_on_nodes`` worker processes (created on first use, then shared).

    Args:
        process_on_nodes: processes per node.
        use_gpu: reserve one accelerator per process (only when the group's device is ``cuda``/``npu``).
        name_prefix: prefix of the placement-group names.
        max_colocate_count: how many worker groups may share each process slot.
        detached: placement groups outlive the driver.
        accelerator_type: Ray accelerator type to pin, e.g. ``"H100"``.
    """

    def __init__(
        self,
        process_on_nodes: list[int] | None = None,
        use_gpu: bool = True,
        name_prefix: str | None = None,
        max_colocate_count: int = 10,
        detached: bool = False,
        accelerator_type: str | None = None,
    ) -> None:
        super().__init__(process_on_nodes, max_colocate_count)
        self.use_gpu = use_gpu
        self.name_prefix = name_prefix or ""
        self.detached = detached
        self.accelerator_type = accelerator_type
        self.pgs: list[PlacementGroup] | None = None

    def bundle(self, device_name: str) -> dict[str, float]:
        """Resources of one process slot."""
        accel = _accelerator(self.use_gpu, device_name)
        if accel is None:
            return {"CPU": 1}
        spec = {"CPU": self.max_colocate_count, accel: 1}
        if self.accelerator_type:
            spec[f"accelerator_type:{self.accelerator_type}"] = 1e-3
        return spec

    def get_placement_groups(
        self, strategy: str = "STRICT_PACK", name: str | None = None, device_name: str | None = None, timeout=300
    ) -> list[PlacementGroup]:
        """One ready placement group per node, ordered by node IP; created on the first call only."""
        if self.pgs is not None:
            return self.pgs
        device_name = device_name or get_device_name()
        spec = self.bundle(device_name)
        check_bundles_feasible(spec, self.world_size, f"resource pool {self.name_prefix or '(unnamed)'}")
        prefix = name or self.name_prefix or "verl_"
        # Placement-group names are unique per Ray namespace; only detached pools need names others can find.
        prefix = prefix if self.detached else f"{prefix}{secrets.token_hex(3)}_"
        lifetime = "detached" if self.detached else None
        counts = [n for n in self._store if n > 0]
        targets = node_targets(spec, counts) if strategy == "STRICT_PACK" else [None] * len(counts)
        pgs = [
            placement_group(
                [dict(spec) for _ in range(n)],
                strategy=strategy,
                name=f"{prefix}pg_{i}",
                lifetime=lifetime,
                _soft_target_node_id=target,
            )
            for i, (n, target) in enumerate(zip(counts, targets))
        ]
        ready, _ = ray.wait([pg.ready() for pg in pgs], num_returns=len(pgs), timeout=timeout)
        if len(ready) < len(pgs):
            for pg in pgs:
                remove_placement_group(pg)
            raise TimeoutError(
                f"placement groups for {self._store} processes of {spec} were not ready after {timeout} s; "
                f"the Ray cluster has {ray.available_resources()} available"
            )
        self.pgs = sort_placement_groups_by_node_ip(pgs)
        return self.pgs

    def slots(self, device_name: str, strategy: str = "STRICT_PACK", timeout=300) -> list[tuple]:
        """``(placement_group, bundle_index, pg_index, local_rank, local_world_size)`` for every process."""
        pgs = self.get_placement_groups(strategy=strategy, device_name=device_name, timeout=timeout)
        return [(pg, b, i, b, pg.bundle_count) for i, pg in enumerate(pgs) for b in range(pg.bundle_count)]

    def release(self) -> None:
        """Remove the placement groups; Ray ends every actor placed in them."""
        for pg in self.pgs or []:
            remove_placement_group(pg)
        self.pgs = None


class SubRayResourcePool(RayResourcePool):
    """A contiguous range of another pool's process slots (flattened over its placement groups)."""

    def __init__(
        self, placement_groups: list[PlacementGroup], start_bundle_index: int, subgroup_world_size: int, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.pgs = placement_groups
        self.start_bundle_index = start_bundle_index
        self.subgroup_world_size = subgroup_world_size
        total = sum(pg.bundle_count for pg in placement_groups)
        if start_bundle_index < 0 or start_bundle_index + subgroup_world_size > total:
            raise ValueError(
                f"bundles [{start_bundle_index}, {start_bundle_index + subgroup_world_size}) are outside the "
                f"{total} bundles of the parent pool"
            )

    @property
    def world_size(self) -> int:
        return self.subgroup_world_size

    def release(self) -> None:
        """Nothing to do: the parent pool owns the placement groups."""

    def slots(self, device_name: str, strategy: str = "STRICT_PACK", timeout=300) -> list[tuple]:
        flat = [(pg, b, i) for i, pg in enumerate(self.pgs) for b in range(pg.bundle_count)]
        chosen = flat[self.start_bundle_index : self.start_bundle_index + self.subgroup_world_size]
        per_pg: dict[int, int] = {}
        for _, _, i in chosen:
            per_pg[i] = per_pg.get(i, 0) + 1
        seen: dict[int, int] = {}
        out = []
        for pg, b, i in chosen:
            out.append((pg, b, i, seen.get(i, 0), per_pg[i]))
            seen[i] = seen.get(i, 0) + 1
        return out


def split_resource_pool(resource_pool: RayResourcePool, split_size: int | list[int]) -> list[SubRayResourcePool]:
    """Cut a pool's process slots into consecutive sub-pools (equal ``split_size`` or the listed sizes)."""
    total = resource_pool.world_size
    sizes = [split_size] * (total // split_size) if isinstance(split_size, int) else list(split_size)
    if sum(sizes) != total:
        raise ValueError(f"split sizes {sizes} do not add up to the pool's {total} processes")
    pgs = resource_pool.get_placement_groups()
    subs, start = [], 0
    for size in sizes:
        subs.append(
            SubRayResourcePool(
                pgs, start, size, use_gpu=resource_pool.use_gpu, max_colocate_count=resource_pool.max_colocate_count
            )
        )
        start += size
    return subs


# ---------------------------------------------------------------------------------------------------- classes


class RayClassWithInitArgs(ClassWithInitArgs):
    """A Ray actor class (plain classes are wrapped with ``ray.remote``) plus its constructor arguments."""

    def __init__(self, cls: Any, *args: Any, **kwargs: Any) -> None:
        if not hasattr(cls, "__ray_actor_class__"):
            cls = ray.remote(cls)
        super().__init__(cls, *args, **kwargs)
        self._options: dict[str, Any] = {}
        self._additional_resource: dict[str, float] = {}

    @property
    def user_cls(self) -> type:
        """The class the actor runs (the one given to ``ray.remote``)."""
        return self.cls.__ray_actor_class__

    def set_additional_resource(self, additional_resource: dict[str, float]) -> None:
        self._additional_resource = dict(additional_resource)

    def update_options(self, options: dict[str, Any]) -> None:
        """Extra ``actor.options(...)`` (e.g. ``runtime_env``); env vars merge with the worker contract."""
        self._options.update(options)

    def __call__(
        self,
        placement_group: PlacementGroup | None,
        placement_group_bundle_idx: int,
        use_gpu: bool = True,
        num_gpus: float = 1,
        sharing_with=None,
        device_name: str = "cuda",
        *,
        name: str | None = None,
        env_vars: dict[str, str] | None = None,
        detached: bool = False,
    ):
        """Start one actor in the given bundle (or on ``sharing_with``'s node); returns its handle.

        ``num_gpus`` is the share of the process slot: of the GPU on GPUs, of the slot's one CPU on CPU.
        """
        pg, bundle_idx = placement_group, placement_group_bundle_idx
        if sharing_with is not None:
            node_id = ray.get(sharing_with.get_node_id.remote())
            options: dict[str, Any] = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}
        else:
            options = {
                "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_idx)
            }
        accel = _accelerator(use_gpu, device_name)
        if accel == "GPU":
            options.update(num_gpus=num_gpus, num_cpus=1)
        elif accel is not None:
            options.update(resources={accel: num_gpus}, num_cpus=1)
        else:
            options["num_cpus"] = num_gpus  # the CPU bundle is the process slot; colocated groups share it
        if self._additional_resource:
            options["resources"] = {**options.get("resources", {}), **self._additional_resource}
        options.update({k: v for k, v in self._options.items() if k != "runtime_env"})
        runtime_env = dict(self._options.get("runtime_env") or {})
        if env_vars:
            runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
        if runtime_env:
            options["runtime_env"] = runtime_env
        if name:
            options["name"] = name
        if detached:
            options["lifetime"] = "detached"
        return self.cls.options(**options).remote(*self.args, **self.kwargs)


# ------------------------------------------------------------------------------------------------ worker group


class RayWorkerGroup(WorkerGroup):
    """``world_size`` Ray actors of one worker class, with the class's registered methods bound on the group.

    Args:
        resource_pool: where to start the actors; None to attach to existing ones (``worker_names``/``_handles``).
        ray_cls_with_init: the worker class and its constructor arguments.
        bin_pack: ``STRICT_PACK`` placement groups (else ``PACK``).
        name_prefix: prefix of the actor names ``{prefix}{Class}_{pg}:{local_rank}`` (random by default).
        detached: actors outlive the driver (reattach with :meth:`from_detached`).
        worker_names: names of existing actors to attach to.
        worker_handles: handles of existing actors to attach to.
        ray_wait_register_center_timeout: seconds to wait for the placement groups to be ready.
        **kwargs: ``device_name`` ("cuda"/"npu"/"cpu"; default: this machine's), ``worker_env`` (extra env vars
            for every actor; may not set the contract variables), ``master_addr``/``master_port`` (override),
            ``use_gpu``; ``profile_steps``, ``worker_nsight_options``, ``master_port_range`` are accepted, unused.
    """

    def __init__(
        self,
        resource_pool: RayResourcePool | None = None,
        ray_cls_with_init: RayClassWithInitArgs | None = None,
        bin_pack: bool = True,
        name_prefix: str | None = None,
        detached: bool = False,
        worker_names: list[str] | None = None,
        worker_handles: list | None = None,
        ray_wait_register_center_timeout: int = 300,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - _KNOWN_WG_KWARGS
        if unknown:
            raise TypeError(f"RayWorkerGroup got unknown keyword arguments {sorted(unknown)}")
        super().__init__(resource_pool=resource_pool)
        self.ray_cls_with_init = ray_cls_with_init
        self.name_prefix = name_prefix if name_prefix is not None else f"wg{secrets.token_hex(3)}_"
        self.device_name = kwargs.get("device_name") or get_device_name()
        self._timeout = ray_wait_register_center_timeout
        self._fused_prefix: str | None = None  # set on the role groups made by fuse()
        self._bound_methods: list[str] = []
        worker_env = _check_worker_env(kwargs.get("worker_env"))
        if ray_cls_with_init is not None:
            self.fused_worker_used = ray_cls_with_init.fused_worker_used
        if self._is_init_with_detached_workers:
            if worker_handles is None and worker_names is None:
                raise ValueError("RayWorkerGroup needs a resource_pool, or worker_names / worker_handles to attach to")
            self._workers = (
                list(worker_handles) if worker_handles is not None else [ray.get_actor(n) for n in worker_names]
            )
            self._worker_names = list(worker_names or [])
        else:
            if ray_cls_with_init is None:
                raise ValueError("RayWorkerGroup with a resource_pool needs ray_cls_with_init")
            self._master_addr, self._master_port = kwargs.get("master_addr"), kwargs.get("master_port")
            self._start_workers(resource_pool, bin_pack, detached, worker_env, kwargs.get("use_gpu"))
        if ray_cls_with_init is not None:
            self._bound_methods = self._bind_worker_method(ray_cls_with_init.user_cls, func_generator)

    def _start_workers(self, pool: RayResourcePool, bin_pack: bool, detached: bool, worker_env: dict, use_gpu) -> None:
        slots = pool.slots(self.device_name, strategy="STRICT_PACK" if bin_pack else "PACK", timeout=self._timeout)
        if self._master_addr is None or self._master_port is None:
            self._master_addr, self._master_port = _pick_master(slots[0][0], slots[0][1])
        use_gpu = pool.use_gpu if use_gpu is None else use_gpu
        defaults = {} if _accelerator(use_gpu, self.device_name) else dict(CPU_WORKER_ENV_DEFAULTS)
        # Defaults yield to env vars the user already chose for the job or for this class.
        for runtime_env in (ray.get_runtime_context().runtime_env, self.ray_cls_with_init._options.get("runtime_env")):
            for key in (runtime_env or {}).get("env_vars", {}):
                defaults.pop(key, None)
        cls_name = self.ray_cls_with_init.user_cls.__name__
        for rank, (pg, bundle_idx, pg_idx, local_rank, local_world_size) in enumerate(slots):
            env = {
                **defaults,
                **worker_env,
                "WORLD_SIZE": str(len(slots)),
                "RANK": str(rank),
                "WG_PREFIX": self.name_prefix,
                "WG_BACKEND": "ray",
                "RAY_LOCAL_WORLD_SIZE": str(local_world_size),
                "RAY_LOCAL_RANK": str(local_rank),
                "MASTER_ADDR": str(self._master_addr),
                "MASTER_PORT": str(self._master_port),
            }
            name = f"{self.name_prefix}{cls_name}_{pg_idx}:{local_rank}"
            share = 1 / pool.max_colocate_count
            handle = self.ray_cls_with_init(
                pg, bundle_idx, use_gpu, share, device_name=self.device_name, name=name, env_vars=env, detached=detached
            )
            self._workers.append(handle)
            self._worker_names.append(name)

    # ---------------------------------------------------------------------------------------- properties

    @property
    def workers(self) -> list:
        return self._workers

    @property
    def worker_names(self) -> list[str]:
        return self._worker_names

    @property
    def master_address(self) -> str | None:
        return self._master_addr

    @property
    def master_port(self) -> str | None:
        return self._master_port

    @classmethod
    def from_detached(cls, name_prefix=None, worker_names=None, worker_handles=None, ray_cls_with_init=None, **kwargs):
        """Attach to actors that already exist (by name or handle)."""
        return cls(
            resource_pool=None,
            ray_cls_with_init=ray_cls_with_init,
            name_prefix=name_prefix,
            worker_names=worker_names,
            worker_handles=worker_handles,
            **kwargs,
        )

    def _put_chunks(self, chunks: list) -> list:
        # Mesh dispatch sends one chunk to several workers (e.g. every TP rank): store each chunk once.
        if len(chunks) < self.world_size and all(isinstance(c, DataProto | TensorDict) for c in chunks):
            return parallel_put(chunks)
        return chunks

    # ------------------------------------------------------------------------------------------- execution

    def _remote(self, worker, method_name: str, *args: Any, **kwargs: Any):
        if self._fused_prefix is not None:
            fused_name = f"{self._fused_prefix}_fwmn_{method_name}"
            return getattr(worker, self.fused_worker_execute_fn_name).remote(fused_name, *args, **kwargs)
        return getattr(worker, method_name).remote(*args, **kwargs)

    def execute_all_async(self, method_name: str, *args: Any, **kwargs: Any) -> list:
        """Call ``method_name`` on every worker; list arguments of length ``world_size`` are split per worker."""
        n = len(self._workers)
        values = list(args) + list(kwargs.values())
        if values and all(isinstance(v, list) and len(v) == n for v in values):
            return [
                self._remote(w, method_name, *[a[i] for a in args], **{k: v[i] for k, v in kwargs.items()})
                for i, w in enumerate(self._workers)
            ]
        return [self._remote(w, method_name, *args, **kwargs) for w in self._workers]

    def execute_all_sync(self, method_name: str, *args: Any, **kwargs: Any) -> list:
        return ray.get(self.execute_all_async(method_name, *args, **kwargs))

    def execute_all(self, method_name: str, *args: Any, **kwargs: Any) -> list:
        return self.execute_all_async(method_name, *args, **kwargs)

    def execute_rank_zero_async(self, method_name: str, *args: Any, **kwargs: Any):
        return self._remote(self._workers[0], method_name, *args, **kwargs)

    def execute_rank_zero_sync(self, method_name: str, *args: Any, **kwargs: Any):
        return ray.get(self.execute_rank_zero_async(method_name, *args, **kwargs))

    def execute_rank_zero(self, method_name: str, *args: Any, **kwargs: Any):
        return self.execute_rank_zero_async(method_name, *args, **kwargs)

    # --------------------------------------------------------------------------------- roles of one actor

    def _sibling(self, ray_cls_with_init: RayClassWithInitArgs) -> RayWorkerGroup:
        wg = type(self).from_detached(
            name_prefix=self.name_prefix,
            worker_names=self._worker_names,
            worker_handles=self._workers,
            ray_cls_with_init=ray_cls_with_init,
            device_name=self.device_name,
        )
        wg._master_addr, wg._master_port = self._master_addr, self._master_port
        return wg

    def spawn(self, prefix_set: Iterable[str]) -> dict[str, RayWorkerGroup]:
        """One group per role of a :func:`create_colocated_worker_cls` actor, with ``{role}_{m}`` bound as ``m``."""
        groups = {}
        for prefix in prefix_set:
            wg = self._sibling(self.ray_cls_with_init)
            start = f"{prefix}_"
            for name in wg._bound_methods:
                if name.startswith(start):
                    short = name[len(start) :]
                    if hasattr(type(wg), short):
                        raise ValueError(f"role {prefix!r} method {short!r} clashes with a RayWorkerGroup attribute")
                    setattr(wg, short, getattr(wg, name))
            wg.sub_cls_name = prefix
            groups[prefix] = wg
        return groups

    def spawn_fused(self, prefix_set: Iterable[str]) -> dict[str, RayWorkerGroup]:
        """One group per role of a fused worker (:func:`create_colocated_worker_raw_cls`), called via ``_fuw_execute``."""
        roles = getattr(self.ray_cls_with_init.user_cls, "_fused_roles", None)
        if roles is None:
            raise ValueError("fuse()/spawn_fused() need a worker class built on create_colocated_worker_raw_cls")
        groups = {}
        for prefix in prefix_set:
            if prefix not in roles:
                raise ValueError(f"unknown fused role {prefix!r}; roles: {sorted(roles)}")
            wg = self._sibling(RayClassWithInitArgs(roles[prefix][0]))
            wg._fused_prefix = prefix
            wg.fused_worker_used = True
            groups[prefix] = wg
        return groups

    def fuse(self, prefix_set: Iterable[str]) -> None:
        """Set ``self.<role>`` to a group that calls that role's methods inside the fused actors."""
        for prefix, wg in self.spawn_fused(prefix_set).items():
            if hasattr(self, prefix):
                raise ValueError(f"fused role {prefix!r} clashes with an existing worker-group attribute")
            setattr(self, prefix, wg)


def _check_worker_env(worker_env: dict | None) -> dict[str, str]:
    worker_env = dict(worker_env or {})
    clash = sorted(set(worker_env) & set(PROTECTED_ENV_KEYS))
    if clash:
        raise ValueError(f"worker_env may not set {clash}: the worker group sets them for each actor")
    return {k: str(v) for k, v in worker_env.items()}


def _pick_master(pg: PlacementGroup, bundle_idx: int) -> tuple[str, str]:
    """Rank 0's address and a free port there; on this machine directly, else by a task in rank 0's bundle."""
    if is_single_local_node():
        return get_available_master_addr_port()
    task = ray.remote(num_cpus=0)(get_available_master_addr_port)
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_idx)
    return ray.get(task.options(scheduling_strategy=strategy).remote())


# ------------------------------------------------------------------------------------------ colocated classes


def _role_specs(class_dict: dict[str, RayClassWithInitArgs]) -> dict[str, tuple[type, tuple, dict]]:
    return {key: (cia.user_cls, cia.args, cia.kwargs) for key, cia in class_dict.items()}


def _merge_role_options(target: RayClassWithInitArgs, class_dict: dict[str, RayClassWithInitArgs]) -> None:
    """Carry the roles' actor options and extra resources over to the shared actor (they must agree)."""
    for key, cia in class_dict.items():
        for opt, val in cia._options.items():
            if opt in target._options and target._options[opt] != val:
                raise ValueError(f"colocated role {key!r} sets actor option {opt!r} differently from another role")
            target._options[opt] = val
        target._additional_resource.update(cia._additional_resource)


def create_colocated_worker_cls(class_dict: dict[str, RayClassWithInitArgs]) -> RayClassWithInitArgs:
    """One actor class holding every role of ``class_dict``; role methods appear as ``{role}_{method}``.

    Use ``RayWorkerGroup(pool, cls).spawn(class_dict.keys())`` to get one worker group per role.
    """
    cia = RayClassWithInitArgs(ray.remote(build_colocated_worker_cls(_role_specs(class_dict))))
    _merge_role_options(cia, class_dict)
    return cia


def create_colocated_worker_raw_cls(class_dict: dict[str, RayClassWithInitArgs]) -> type[Worker]:
    """A plain ``Worker`` subclass whose roles are attributes (``self.actor``, ``self.critic``...).

    Subclass it to add methods that use several roles at once, wrap with ``ray.remote``, start it with a
    ``RayClassWithInitArgs`` whose ``fused_worker_used`` is True, and call ``wg.fuse(roles)`` to reach each role
    as ``wg.<role>.<method>``.
    """
    return build_fused_worker_cls(_role_specs(class_dict))


def create_colocated_worker_cls_fused(class_dict: dict[str, RayClassWithInitArgs]) -> RayClassWithInitArgs:
    """:func:`create_colocated_worker_raw_cls` as a ready ``RayClassWithInitArgs`` (``fused_worker_used=True``)."""
    cia = RayClassWithInitArgs(ray.remote(create_colocated_worker_raw_cls(class_dict)))
    _merge_role_options(cia, class_dict)
    cia.fused_worker_used = True
    return cia


# ------------------------------------------------------------------------------------- resource pool manager


@dataclass
class ResourcePoolManager:
    """Named resource pools and which role runs in which pool.

    Args:
        resource_pool_spec: pool name -> processes per node, e.g. ``{"global_pool": [2]}``.
        mapping: role -> pool name.
        resource_pool_dict: filled by :meth:`create_resource_pool`.
    """

    resource_pool_spec: dict[str, list[int]]
    mapping: dict
    resource_pool_dict: dict[str, RayResourcePool] = field(default_factory=dict)

    def create_resource_pool(self) -> None:
        """Create every pool (placement groups come later, with the first worker group) after a capacity check."""
        self._check_resource_available()
        for name, process_on_nodes in self.resource_pool_spec.items():
            # Up to 3 worker groups (e.g. actor, critic, reference) may share each process slot of a pool.
            self.resource_pool_dict[name] = RayResourcePool(
                process_on_nodes=process_on_nodes, use_gpu=True, max_colocate_count=3, name_prefix=name
            )

    def get_resource_pool(self, role) -> RayResourcePool:
        if role not in self.mapping:
            raise ValueError(f"role {role!r} has no resource pool; mapped roles: {list(self.mapping)}")
        return self.resource_pool_dict[self.mapping[role]]

    def get_n_gpus(self) -> int:
        """Worker processes over all pools (GPUs on a GPU cluster, CPU process slots on CPU)."""
        return sum(sum(nodes) for nodes in self.resource_pool_spec.values())

    def _check_resource_available(self) -> None:
        resource = "CPU" if get_device_name() == "cpu" else _ACCELERATOR_RESOURCE.get(get_device_name(), "GPU")
        available = ray.available_resources().get(resource, 0)
        needed = 0
        for name, nodes in self.resource_pool_spec.items():
            if any(n < 0 for n in nodes):
                raise ValueError(f"resource pool {name!r}: negative process count in {nodes}")
            needed += sum(nodes)
            if needed > available + 1e-6:
                raise ValueError(
                    f"resource pool {name!r} needs {sum(nodes)} {resource} slot(s) {nodes}; with the pools before it "
                    f"that makes {needed}, but the Ray cluster has only {available:g} {resource} available"
                )
