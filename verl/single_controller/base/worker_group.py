"""Backend-neutral parts of a worker group: resource pools, deferred constructors and method binding.

A :class:`WorkerGroup` is the driver's handle on ``world_size`` workers of one class. At construction it scans
the worker class for ``@register``-ed methods and sets, on itself, a method of the same name that dispatches
the arguments, runs the workers, collects the results and strips auto-padding rows. The backend (Ray) supplies
how workers are started, how a call reaches them and how a pending result is awaited.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from tensordict import TensorDict

from verl.protocol import DataProto, DataProtoFuture, unpad_dataproto
from verl.single_controller.base.decorator import (
    MAGIC_ATTR,
    Dispatch,
    get_predefined_execute_fn,
    resolve_dispatch_mode,
)
from verl.single_controller.base.worker import Worker
from verl.utils.py_functional import temp_env_var


class ResourcePool:
    """How many worker processes run on each node.

    Args:
        process_on_nodes: processes per node, e.g. ``[8, 8]`` for two nodes of eight.
        max_colocate_count: how many worker groups may share one process slot (one per role, colocated).
        n_gpus_per_node: accelerators per node (informational).
    """

    def __init__(
        self, process_on_nodes: list[int] | None = None, max_colocate_count: int = 10, n_gpus_per_node: int = 8
    ) -> None:
        process_on_nodes = list(process_on_nodes or [])
        if any(int(n) < 0 for n in process_on_nodes):
            raise ValueError(f"process_on_nodes must hold non-negative counts, got {process_on_nodes}")
        if max_colocate_count < 1:
            raise ValueError(f"max_colocate_count must be >= 1, got {max_colocate_count}")
        self._store = [int(n) for n in process_on_nodes]
        self.max_colocate_count = max_colocate_count
        self.n_gpus_per_node = n_gpus_per_node

    def add_node(self, process_count: int) -> None:
        self._store.append(int(process_count))

    @property
    def world_size(self) -> int:
        return sum(self._store)

    @property
    def store(self) -> list[int]:
        return self._store

    def __call__(self) -> list[int]:
        return self._store

    def local_world_size_list(self) -> list[int]:
        """For every process, how many processes share its node."""
        return [n for n in self._store for _ in range(n)]

    def local_rank_list(self) -> list[int]:
        """For every process, its index on its node."""
        return [i for n in self._store for i in range(n)]


class ClassWithInitArgs:
    """A class plus the arguments to build it with later, in the worker's process.

    Args:
        cls: the class to build.
        *args: positional constructor arguments.
        **kwargs: keyword constructor arguments.
    """

    def __init__(self, cls: type, *args: Any, **kwargs: Any) -> None:
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        # True when ``cls`` is a fused worker reached through ``_fuw_execute`` (see ray.base.fuse).
        self.fused_worker_used = False

    def __call__(self) -> Any:
        return self.cls(*self.args, **self.kwargs)


def strip_padding(output: Any, pad_size: int) -> Any:
    """Drop the last ``pad_size`` rows that auto padding added (DataProto, TensorDict, future or list)."""
    if not pad_size:
        return output
    if isinstance(output, DataProto):
        return unpad_dataproto(output, pad_size)
    if isinstance(output, TensorDict):
        return output[: output.batch_size[0] - pad_size]
    if isinstance(output, DataProtoFuture):
        inner = output.dispatch_fn

        def unpad_after(data):
            data = inner(data) if inner is not None else data
            return strip_padding(data, pad_size)

        return DataProtoFuture(collect_fn=output.collect_fn, futures=output.futures, dispatch_fn=unpad_after)
    if isinstance(output, list):
        return output[:-pad_size]
    return output


class WorkerGroup:
    """The driver-side handle on a set of workers; backends subclass it.

    Args:
        resource_pool: where the workers run, or None when attaching to workers that already exist.
    """

    fused_worker_execute_fn_name = "_fuw_execute"

    def __init__(self, resource_pool: ResourcePool | None, **kwargs: Any) -> None:
        self._is_init_with_detached_workers = resource_pool is None
        self.fused_worker_used = False
        self._procecss_dispatch_config = resource_pool() if resource_pool is not None else None
        self._workers: list = []
        self._worker_names: list[str] = []
        # Per mesh name: each worker's dp rank / collect flag, filled on first use by mesh dispatch.
        self._dispatch_info: dict[str, list[int]] = {}
        self._collect_info: dict[str, list[bool]] = {}
        self._master_addr: str | None = None
        self._master_port: str | None = None

    @property
    def world_size(self) -> int:
        return len(self._workers)

    def _put_chunks(self, chunks: list) -> list:
        """Hook for mesh dispatch: store pieces shared by several workers once. Default: pass through."""
        return chunks

    def execute_all(self, method_name: str, *args: Any, **kwargs: Any):
        raise NotImplementedError

    def execute_rank_zero(self, method_name: str, *args: Any, **kwargs: Any):
        raise NotImplementedError

    def _bind_worker_method(self, user_defined_cls: type, func_generator: Callable) -> list[str]:
        """Set a group method for every ``@register``-ed method of ``user_defined_cls``; returns their names.

        ``func_generator(group, method_name, dispatch_fn, collect_fn, execute_fn, blocking)`` builds each one.
        """
        bound = []
        for name in dir(user_defined_cls):
            if name.startswith("__"):
                continue
            attrs = getattr(getattr(user_defined_cls, name, None), MAGIC_ATTR, None)
            if not isinstance(attrs, dict):
                continue
            if hasattr(type(self), name):
                raise ValueError(
                    f"{user_defined_cls.__name__}.{name} is registered but {type(self).__name__} already has an "
                    f"attribute of that name; rename the worker method"
                )
            fns = resolve_dispatch_mode(attrs["dispatch_mode"])
            execute_fn = getattr(self, get_predefined_execute_fn(attrs["execute_mode"])["execute_fn_name"])
            method = func_generator(
                self,
                name,
                dispatch_fn=fns["dispatch_fn"],
                collect_fn=fns["collect_fn"],
                execute_fn=execute_fn,
                blocking=attrs["blocking"],
            )
            setattr(self, name, method)
            bound.append(name)
        return bound


# ------------------------------------------------------------------------- several roles in one worker process
# ``roles`` below maps a role name to ``(worker class, constructor args, constructor kwargs)``.


def _registered_methods(cls: type) -> list[tuple[str, dict]]:
    out = []
    for name in dir(cls):
        attrs = getattr(getattr(cls, name, None), MAGIC_ATTR, None)
        if not name.startswith("__") and isinstance(attrs, dict):
            out.append((name, attrs))
    return out


def _build_roles(roles: dict[str, tuple[type, tuple, dict]]) -> dict[str, Any]:
    # The outer worker already did the once-per-process setup; the role objects only read the env contract.
    with temp_env_var("DISABLE_WORKER_INIT", "1"):
        return {key: cls(*args, **kwargs) for key, (cls, args, kwargs) in roles.items()}


def _make_forwarder(key: str, name: str, attrs: dict, is_async: bool) -> Callable:
    if is_async:

        async def forward(self, *args, **kwargs):
            return await getattr(self.worker_dict[key], name)(*args, **kwargs)

    else:

        def forward(self, *args, **kwargs):
            return getattr(self.worker_dict[key], name)(*args, **kwargs)

    forward.__name__ = f"{key}_{name}"
    setattr(forward, MAGIC_ATTR, attrs)
    return forward


def build_colocated_worker_cls(roles: dict[str, tuple[type, tuple, dict]]) -> type[Worker]:
    """A ``WorkerDict`` worker class that builds every role in its process and exposes ``{role}_{method}``.

    Methods registered with ``Dispatch.DIRECT_ROLLOUT_METHOD`` keep their plain name, so callers can reach them
    on the actor handle directly.
    """
    if not roles:
        raise ValueError("a colocated worker needs at least one role")

    class WorkerDict(Worker):
        def __init__(self) -> None:
            super().__init__()
            self.worker_dict = _build_roles(roles)

    for key, (user_cls, _, _) in roles.items():
        for name, attrs in _registered_methods(user_cls):
            exposed = name if attrs["dispatch_mode"] == Dispatch.DIRECT_ROLLOUT_METHOD else f"{key}_{name}"
            if exposed in WorkerDict.__dict__:
                raise ValueError(f"colocated roles both expose a method named {exposed!r}")
            is_async = inspect.iscoroutinefunction(getattr(user_cls, name))
            setattr(WorkerDict, exposed, _make_forwarder(key, name, attrs, is_async))
    return WorkerDict


def build_fused_worker_cls(roles: dict[str, tuple[type, tuple, dict]]) -> type[Worker]:
    """A ``FusedWorker`` class: roles are attributes, and ``_fuw_execute("{role}_fwmn_{method}")`` calls them."""
    if not roles:
        raise ValueError("a fused worker needs at least one role")
    clash = sorted(k for k in roles if hasattr(Worker, k))
    if clash:
        raise ValueError(f"fused role names {clash} clash with Worker attributes")

    class FusedWorker(Worker):
        _fused_roles = roles

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()
            self.fused_worker_dict = _build_roles(self._fused_roles)
            for key, obj in self.fused_worker_dict.items():
                setattr(self, key, obj)

        def _fuw_execute(self, method_name: str, *args, **kwargs):
            role, sep, method = method_name.partition("_fwmn_")
            if not sep or role not in self.fused_worker_dict:
                raise ValueError(f"bad fused method name {method_name!r}; roles: {sorted(self.fused_worker_dict)}")
            out = getattr(self.fused_worker_dict[role], method)(*args, **kwargs)
            # This entry point is synchronous, so an async role method is driven to completion here.
            return asyncio.run(out) if inspect.iscoroutine(out) else out

    return FusedWorker
