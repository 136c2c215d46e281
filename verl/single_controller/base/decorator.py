"""How a worker-group call is split across workers and how the answers are put back together.

A worker method marked with :func:`register` carries, under the attribute :data:`MAGIC_ATTR`, three facts:
its *dispatch mode* (how the driver's arguments become one set of arguments per worker, and how the
per-worker results become one result), its *execute mode* (which workers run it) and whether the driver
blocks on the result. The worker group reads those facts once, at construction, and builds a driver-side
method of the same name: ``dispatch -> execute -> (ray.get) -> collect -> strip padding``.

Dispatch modes (``Dispatch.X``) and what they do with ``world_size`` workers:

=========================== ===================================================== ==========================
mode                        dispatch                                              collect
=========================== ===================================================== ==========================
RANK_ZERO                   arguments unchanged                                   the first worker's result
ONE_TO_ALL                  every argument repeated ``world_size`` times          list of results
ALL_TO_ALL                  arguments unchanged                                   results unchanged
DP_COMPUTE                  arguments must already be lists of ``world_size``     list of results
DP_COMPUTE_PROTO            DataProto / TensorDict / future arguments chunked     one concatenated result
DP_COMPUTE_PROTO_WITH_FUNC  first argument (a function) repeated, rest chunked    one concatenated result
DP_COMPUTE_METRIC           chunked like DP_COMPUTE_PROTO                         list of results
DIRECT_ROLLOUT_METHOD       not callable through a worker group                   --
=========================== ===================================================== ==========================

``make_nd_compute_dataproto_dispatch_fn(mesh)`` builds a mode for n-d parallel workers (TP/PP/CP inside DP):
each worker declares its data-parallel rank and whether its output counts (see
``Worker._register_dispatch_collect_info``).

Auto padding: when a DataProto argument has padding enabled (``DataProtoConfig.auto_padding`` or the per-batch
flag) and its length does not divide by the number of pieces, rows are appended so it does; the number of
appended rows rides along under ``verl.protocol._padding_size_key`` and the worker group strips that many rows
from the collected result.

This module imports no Ray; the worker group hands chunks to Ray through ``WorkerGroup._put_chunks``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict

from verl.protocol import DataProto, DataProtoFuture, _padding_size_key, pad_dataproto_to_divisor
from verl.utils.py_functional import DynamicEnum

# Attribute name under which ``register`` stores its facts on the wrapped method (upstream-compatible).
MAGIC_ATTR = "attrs_3141562937"

__all__ = [
    "DISPATCH_MODE_FN_REGISTRY",
    "MAGIC_ATTR",
    "Dispatch",
    "Execute",
    "get_predefined_dispatch_fn",
    "get_predefined_execute_fn",
    "make_nd_compute_dataproto_dispatch_fn",
    "register",
    "register_dispatch_mode",
    "update_dispatch_mode",
]


class Dispatch(DynamicEnum):
    """How arguments are spread over workers and results gathered; extend with :func:`register_dispatch_mode`."""


class Execute(DynamicEnum):
    """Which workers run a method: ``ALL`` or ``RANK_ZERO``."""


for _name in (
    "RANK_ZERO",
    "ONE_TO_ALL",
    "ALL_TO_ALL",
    "DP_COMPUTE",
    "DP_COMPUTE_PROTO",
    "DP_COMPUTE_PROTO_WITH_FUNC",
    "DP_COMPUTE_METRIC",
    "DIRECT_ROLLOUT_METHOD",
):
    Dispatch.register(_name)
Execute.register("ALL")
Execute.register("RANK_ZERO")


# ----------------------------------------------------------------------------------------------- chunking helpers


def _is_object_ref(value: Any) -> bool:
    # Ray is only loaded when a Ray worker group exists, so "ray not imported" means "not a ref".
    ray = sys.modules.get("ray")
    return ray is not None and isinstance(value, ray.ObjectRef)


def _chunk_one(value: Any, chunks: int, where: str) -> tuple[list, int]:
    """Split one DP argument into ``chunks`` pieces; returns the pieces and the number of padding rows added."""
    if isinstance(value, DataProto):
        pad = 0
        if value.is_padding_enabled() and len(value) % chunks != 0:
            value, pad = pad_dataproto_to_divisor(value, chunks)
        return value.chunk(chunks), pad
    if isinstance(value, DataProtoFuture):
        return value.chunk(chunks), 0
    if isinstance(value, TensorDict):
        if value.batch_size[0] % chunks != 0:
            raise ValueError(
                f"{where}: a TensorDict of {value.batch_size[0]} rows cannot be split into {chunks} pieces"
            )
        return list(value.chunk(chunks)), 0
    raise TypeError(
        f"{where}: data-parallel dispatch needs DataProto, DataProtoFuture or TensorDict arguments, "
        f"got {type(value).__name__}"
    )


def _split_args_kwargs_data_proto(chunks: int, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    """Chunk every argument into ``chunks`` pieces; records the padding (if any) under ``_padding_size_key``."""
    pads: set[int] = set()
    split_args = []
    for i, arg in enumerate(args):
        pieces, pad = _chunk_one(arg, chunks, f"positional argument {i}")
        split_args.append(pieces)
        pads.add(pad)
    split_kwargs = {}
    for key, val in kwargs.items():
        pieces, pad = _chunk_one(val, chunks, f"keyword argument {key!r}")
        split_kwargs[key] = pieces
        pads.add(pad)
    if len(pads) > 1:
        raise ValueError(f"data-parallel arguments of different lengths needed different padding: {sorted(pads)}")
    pad = pads.pop() if pads else 0
    if pad:
        split_kwargs[_padding_size_key] = pad
    return tuple(split_args), split_kwargs


def _concat(outputs: list, mode_name: str) -> Any:
    """Join per-worker results: DataProto / TensorDict by concatenation, Ray refs into one DataProtoFuture."""
    if not outputs:
        raise ValueError(f"{mode_name}: no worker output to collect")
    first = outputs[0]
    if isinstance(first, DataProto):
        return DataProto.concat(outputs)
    if isinstance(first, TensorDict):
        return torch.cat(outputs, dim=0)
    if _is_object_ref(first):
        return DataProtoFuture.concat(outputs)
    raise TypeError(f"{mode_name}: workers must return DataProto or TensorDict, got {type(first).__name__}")


# ------------------------------------------------------------------------------------- dispatch / collect pairs


def dispatch_rank_zero(worker_group, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    return args, kwargs


def collect_rank_zero(worker_group, output: Any) -> Any:
    return output[0] if isinstance(output, list) else output


def dispatch_one_to_all(worker_group, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    n = worker_group.world_size
    return tuple([arg] * n for arg in args), {k: [v] * n for k, v in kwargs.items()}


def dispatch_all_to_all(worker_group, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    return args, kwargs


def collect_all_to_all(worker_group, output: Any) -> Any:
    return output


def dispatch_dp_compute(worker_group, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    n = worker_group.world_size
    for where, val in [(f"positional argument {i}", a) for i, a in enumerate(args)] + list(kwargs.items()):
        if not isinstance(val, list | tuple) or len(val) != n:
            raise ValueError(f"DP_COMPUTE: {where} must be a list with one entry per worker ({n})")
    return args, kwargs


def collect_dp_compute(worker_group, output: list) -> list:
    if len(output) != worker_group.world_size:
        raise ValueError(f"DP_COMPUTE: expected {worker_group.world_size} outputs, got {len(output)}")
    return output


def dispatch_dp_compute_data_proto(worker_group, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
    return _split_args_kwargs_data_proto(worker_group.world_size, *args, **kwargs)


def dispatch_dp_compute_data_proto_with_func(worker_group, func: Callable, *args: Any, **kwargs: Any):
    if not callable(func):
        raise TypeError(f"DP_COMPUTE_PROTO_WITH_FUNC: the first argument must be a function, got {type(func)}")
    split_args, split_kwargs = _split_args_kwargs_data_proto(worker_group.world_size, *args, **kwargs)
    return ([func] * worker_group.world_size, *split_args), split_kwargs


def collect_dp_compute_data_proto(worker_group, output: list) -> Any:
    return _concat(output, "DP_COMPUTE_PROTO")


def dispatch_direct_rollout_method(worker_group, *args: Any, **kwargs: Any):
    raise NotImplementedError(
        "methods registered with Dispatch.DIRECT_ROLLOUT_METHOD are not callable through a worker group; "
        "call them on the actor handles in `worker_group.workers`"
    )


# --------------------------------------------------------------------------------------------- n-d mesh dispatch


def _mesh_layout(worker_group, mesh_name: str) -> tuple[list[int], list[bool]]:
    """Per-worker dp rank and collect flag for ``mesh_name``, asked of the workers once and cached on the group."""
    if mesh_name not in worker_group._dispatch_info:
        worker_group._dispatch_info[mesh_name] = list(worker_group._query_dispatch_info(mesh_name))
    if mesh_name not in worker_group._collect_info:
        worker_group._collect_info[mesh_name] = [bool(c) for c in worker_group._query_collect_info(mesh_name)]
    dp_ranks = worker_group._dispatch_info[mesh_name]
    collect = worker_group._collect_info[mesh_name]
    dp_size = max(dp_ranks) + 1
    if sorted(set(dp_ranks)) != list(range(dp_size)):
        raise ValueError(f"mesh {mesh_name!r}: dp ranks {dp_ranks} do not cover 0..{dp_size - 1}")
    collected = sorted(r for r, c in zip(dp_ranks, collect) if c)
    if collected != list(range(dp_size)):
        raise ValueError(
            f"mesh {mesh_name!r}: exactly one collecting worker per dp rank is needed, "
            f"got dp ranks {dp_ranks} with collect flags {collect}"
        )
    return dp_ranks, collect


def dispatch_nd_compute_dataproto(mesh_name: str, worker_group, *args: Any, **kwargs: Any):
    """Chunk into dp_size pieces and give worker i the piece of its dp rank (shared pieces are put once)."""
    dp_ranks, _ = _mesh_layout(worker_group, mesh_name)
    split_args, split_kwargs = _split_args_kwargs_data_proto(max(dp_ranks) + 1, *args, **kwargs)
    pad = split_kwargs.pop(_padding_size_key, 0)

    def spread(pieces: list) -> list:
        pieces = worker_group._put_chunks(pieces)
        return [pieces[r] for r in dp_ranks]

    out_args = tuple(spread(p) for p in split_args)
    out_kwargs = {k: spread(p) for k, p in split_kwargs.items()}
    if pad:
        out_kwargs[_padding_size_key] = pad
    return out_args, out_kwargs


def collect_nd_compute_dataproto(mesh_name: str, worker_group, output: list) -> Any:
    """Keep the outputs of collecting workers, ordered by dp rank, and concatenate them."""
    dp_ranks, collect = _mesh_layout(worker_group, mesh_name)
    if len(output) != len(dp_ranks):
        raise ValueError(f"mesh {mesh_name!r}: expected {len(dp_ranks)} outputs, got {len(output)}")
    kept = sorted((r, o) for r, c, o in zip(dp_ranks, collect, output, strict=True) if c)
    return _concat([o for _, o in kept], f"mesh {mesh_name!r}")


def make_nd_compute_dataproto_dispatch_fn(mesh_name: str) -> dict[str, Callable]:
    """A dispatch mode (``{"dispatch_fn", "collect_fn"}``) for workers that declared their dp rank on ``mesh_name``.

    Example:
        ``@register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))``
    """
    return {
        "dispatch_fn": functools.partial(dispatch_nd_compute_dataproto, mesh_name),
        "collect_fn": functools.partial(collect_nd_compute_dataproto, mesh_name),
    }


# ------------------------------------------------------------------------------------------------- the registry

DISPATCH_MODE_FN_REGISTRY: dict[Any, dict[str, Callable]] = {
    Dispatch.RANK_ZERO: {"dispatch_fn": dispatch_rank_zero, "collect_fn": collect_rank_zero},
    Dispatch.ONE_TO_ALL: {"dispatch_fn": dispatch_one_to_all, "collect_fn": collect_all_to_all},
    Dispatch.ALL_TO_ALL: {"dispatch_fn": dispatch_all_to_all, "collect_fn": collect_all_to_all},
    Dispatch.DP_COMPUTE: {"dispatch_fn": dispatch_dp_compute, "collect_fn": collect_dp_compute},
    Dispatch.DP_COMPUTE_PROTO: {
        "dispatch_fn": dispatch_dp_compute_data_proto,
        "collect_fn": collect_dp_compute_data_proto,
    },
    Dispatch.DP_COMPUTE_PROTO_WITH_FUNC: {
        "dispatch_fn": dispatch_dp_compute_data_proto_with_func,
        "collect_fn": collect_dp_compute_data_proto,
    },
    Dispatch.DP_COMPUTE_METRIC: {"dispatch_fn": dispatch_dp_compute_data_proto, "collect_fn": collect_all_to_all},
    Dispatch.DIRECT_ROLLOUT_METHOD: {
        "dispatch_fn": dispatch_direct_rollout_method,
        "collect_fn": collect_all_to_all,
    },
}

_EXECUTE_FN_NAMES = {Execute.ALL: "execute_all", Execute.RANK_ZERO: "execute_rank_zero"}


def get_predefined_dispatch_fn(dispatch_mode) -> dict[str, Callable]:
    """The ``{"dispatch_fn", "collect_fn"}`` pair of a registered :class:`Dispatch` member."""
    if dispatch_mode not in DISPATCH_MODE_FN_REGISTRY:
        raise ValueError(f"unknown dispatch mode {dispatch_mode!r}; registered: {Dispatch.names()}")
    return DISPATCH_MODE_FN_REGISTRY[dispatch_mode]


def get_predefined_execute_fn(execute_mode) -> dict[str, str]:
    """``{"execute_fn_name": ...}``: the worker-group method that runs an :class:`Execute` mode."""
    if execute_mode not in _EXECUTE_FN_NAMES:
        raise ValueError(f"unknown execute mode {execute_mode!r}; valid: {Execute.names()}")
    return {"execute_fn_name": _EXECUTE_FN_NAMES[execute_mode]}


def register_dispatch_mode(dispatch_mode_name: str, dispatch_fn: Callable, collect_fn: Callable) -> None:
    """Add a new ``Dispatch.<NAME>`` with its dispatch and collect functions."""
    if Dispatch.from_name(dispatch_mode_name) in DISPATCH_MODE_FN_REGISTRY:
        raise ValueError(f"dispatch mode {dispatch_mode_name!r} already exists; use update_dispatch_mode")
    member = Dispatch.register(dispatch_mode_name)
    DISPATCH_MODE_FN_REGISTRY[member] = {"dispatch_fn": dispatch_fn, "collect_fn": collect_fn}


def update_dispatch_mode(dispatch_mode, dispatch_fn: Callable, collect_fn: Callable) -> None:
    """Replace the dispatch and collect functions of an existing mode."""
    get_predefined_dispatch_fn(dispatch_mode)
    DISPATCH_MODE_FN_REGISTRY[dispatch_mode] = {"dispatch_fn": dispatch_fn, "collect_fn": collect_fn}


def resolve_dispatch_mode(dispatch_mode) -> dict[str, Callable]:
    """A mode as ``{"dispatch_fn", "collect_fn"}``, whether given as a member or already as such a dict."""
    if isinstance(dispatch_mode, dict):
        missing = {"dispatch_fn", "collect_fn"} - set(dispatch_mode)
        if missing:
            raise ValueError(f"a dispatch mode given as a dict needs the keys {sorted(missing)}")
        return dispatch_mode
    return get_predefined_dispatch_fn(dispatch_mode)


# ------------------------------------------------------------------------------------------------- the decorator


def _has_future(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(v, DataProtoFuture) for v in (*args, *kwargs.values()))


def _materialize_futures(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    args = tuple(a.get() if isinstance(a, DataProtoFuture) else a for a in args)
    kwargs = {k: v.get() if isinstance(v, DataProtoFuture) else v for k, v in kwargs.items()}
    return args, kwargs


def register(
    dispatch_mode=Dispatch.ALL_TO_ALL,
    execute_mode=Execute.ALL,
    blocking: bool = True,
    materialize_futures: bool = True,
) -> Callable:
    """Mark a worker method as callable through a worker group.

    Args:
        dispatch_mode: a :class:`Dispatch` member, or ``{"dispatch_fn": f, "collect_fn": g}``.
        execute_mode: :class:`Execute` member: every worker runs it, or only rank 0.
        blocking: if False the worker-group call returns at once (a ``DataProtoFuture`` or Ray refs).
        materialize_futures: resolve ``DataProtoFuture`` arguments inside the worker before the call.

    Returns:
        A decorator for plain or ``async def`` methods.
    """
    resolve_dispatch_mode(dispatch_mode)
    get_predefined_execute_fn(execute_mode)
    attrs = {"dispatch_mode": dispatch_mode, "execute_mode": execute_mode, "blocking": blocking}

    def decorator(func: Callable) -> Callable:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def inner(*args, **kwargs):
                if materialize_futures and _has_future(args, kwargs):
                    # Wait in a thread: a blocking wait on the actor's event loop would starve the very
                    # coroutines (earlier calls on this actor) that produce the awaited data.
                    args, kwargs = await asyncio.to_thread(_materialize_futures, args, kwargs)
                return await func(*args, **kwargs)

        else:

            @functools.wraps(func)
            def inner(*args, **kwargs):
                if materialize_futures:
                    args, kwargs = _materialize_futures(args, kwargs)
                return func(*args, **kwargs)

        setattr(inner, MAGIC_ATTR, attrs)
        return inner

    return decorator
