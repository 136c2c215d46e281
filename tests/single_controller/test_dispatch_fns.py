"""Dispatch / collect functions, the register decorator, the Worker env contract and colocated classes, without Ray.

An in-process worker group (workers are plain objects, calls are direct) runs the real binding path, so the
dispatch -> execute -> collect -> strip-padding chain is checked here in milliseconds.
"""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from verl.protocol import DataProto, _padding_size_key
from verl.single_controller.base import ResourcePool, Worker, WorkerGroup
from verl.single_controller.base.decorator import (
    DISPATCH_MODE_FN_REGISTRY,
    MAGIC_ATTR,
    Dispatch,
    Execute,
    get_predefined_dispatch_fn,
    get_predefined_execute_fn,
    make_nd_compute_dataproto_dispatch_fn,
    register,
    register_dispatch_mode,
    update_dispatch_mode,
)
from verl.single_controller.base.worker_group import build_colocated_worker_cls, build_fused_worker_cls, strip_padding


def _rows(n: int, auto_padding: bool = False) -> DataProto:
    return DataProto.from_dict(
        {"x": torch.arange(n, dtype=torch.float32)}, {"id": np.arange(n).astype(object)}, auto_padding=auto_padding
    )


def _set_contract(monkeypatch, rank: int, world_size: int) -> None:
    for key, val in {"WORLD_SIZE": world_size, "RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}.items():
        monkeypatch.setenv(key, str(val))
    # Worker exports LOCAL_* defaults to os.environ; owning them here makes monkeypatch restore them.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")


class Tagger(Worker):
    def __init__(self) -> None:
        super().__init__()
        self._register_dispatch_collect_info("tp", dp_rank=self.rank // 2, is_collect=self.rank % 2 == 1)

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def tag(self, data: DataProto) -> DataProto:
        data.batch["r"] = torch.full((len(data),), float(self.rank))
        return data

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn("tp"))
    def tp_tag(self, data: DataProto) -> DataProto:
        return self.tag(data)

    @register(execute_mode=Execute.RANK_ZERO)
    def first(self, x):
        return (self.rank, x)

    @register(dispatch_mode=Dispatch.ALL_TO_ALL, blocking=False)
    async def later(self, x):
        return x


class LocalWorkerGroup(WorkerGroup):
    """Workers as plain objects in this process; enough to run the real binding and dispatch code."""

    def __init__(self, cls: type, world_size: int, monkeypatch) -> None:
        super().__init__(resource_pool=ResourcePool([world_size]))
        for rank in range(world_size):
            _set_contract(monkeypatch, rank, world_size)
            self._workers.append(cls())
        self._bind_worker_method(cls, _local_func_generator)

    def execute_all(self, method_name, *args, **kwargs):
        n = self.world_size
        if all(isinstance(v, list) and len(v) == n for v in (*args, *kwargs.values())):
            return [
                getattr(w, method_name)(*[a[i] for a in args], **{k: v[i] for k, v in kwargs.items()})
                for i, w in enumerate(self._workers)
            ]
        return [getattr(w, method_name)(*args, **kwargs) for w in self._workers]

    def execute_rank_zero(self, method_name, *args, **kwargs):
        return getattr(self._workers[0], method_name)(*args, **kwargs)


def _local_func_generator(wg, method_name, dispatch_fn, collect_fn, execute_fn, blocking):
    def method(*args, **kwargs):
        args, kwargs = dispatch_fn(wg, *args, **kwargs)
        pad = kwargs.pop(_padding_size_key, 0)
        return strip_padding(collect_fn(wg, execute_fn(method_name, *args, **kwargs)), pad)

    return method


def test_register_records_modes_and_keeps_async_methods_async():
    attrs = getattr(Tagger.tag, MAGIC_ATTR)
    assert attrs == {"dispatch_mode": Dispatch.DP_COMPUTE_PROTO, "execute_mode": Execute.ALL, "blocking": True}
    assert getattr(Tagger.later, MAGIC_ATTR)["blocking"] is False
    assert inspect.iscoroutinefunction(Tagger.later) and not inspect.iscoroutinefunction(Tagger.tag)
    assert getattr(Worker._query_dispatch_info, MAGIC_ATTR)["dispatch_mode"] == Dispatch.ONE_TO_ALL

    @register()
    def plain(self):
        return 1

    assert getattr(plain, MAGIC_ATTR) == {
        "dispatch_mode": Dispatch.ALL_TO_ALL,
        "execute_mode": Execute.ALL,
        "blocking": True,
    }
    with pytest.raises(ValueError, match="dispatch mode"):
        register(dispatch_mode="DP_COMPUTE_PROTO")
    with pytest.raises(ValueError, match="collect_fn"):
        register(dispatch_mode={"dispatch_fn": lambda wg: None})
    with pytest.raises(ValueError, match="execute mode"):
        register(execute_mode=Dispatch.ONE_TO_ALL)


def test_modes_are_registered_and_pickle_by_name():
    expected = {"RANK_ZERO", "ONE_TO_ALL", "ALL_TO_ALL", "DP_COMPUTE", "DP_COMPUTE_PROTO", "DP_COMPUTE_PROTO_WITH_FUNC"}
    assert expected | {"DP_COMPUTE_METRIC", "DIRECT_ROLLOUT_METHOD"} <= set(Dispatch.names())
    assert all(m in DISPATCH_MODE_FN_REGISTRY for m in Dispatch)
    assert pickle.loads(pickle.dumps(Dispatch.DP_COMPUTE_PROTO)) == Dispatch.DP_COMPUTE_PROTO
    assert get_predefined_execute_fn(Execute.RANK_ZERO) == {"execute_fn_name": "execute_rank_zero"}
    assert get_predefined_execute_fn(Execute.ALL) == {"execute_fn_name": "execute_all"}


def test_register_and_update_dispatch_mode():
    def dispatch(wg, *args, **kwargs):
        return args, kwargs

    def collect(wg, output):
        return output[-1]

    try:
        register_dispatch_mode("LAST_ONLY", dispatch, collect)
        assert get_predefined_dispatch_fn(Dispatch.LAST_ONLY)["collect_fn"] is collect
        with pytest.raises(ValueError, match="already exists"):
            register_dispatch_mode("last_only", dispatch, collect)
        update_dispatch_mode(Dispatch.LAST_ONLY, dispatch, dispatch)
        assert get_predefined_dispatch_fn(Dispatch.LAST_ONLY)["collect_fn"] is dispatch
    finally:
        DISPATCH_MODE_FN_REGISTRY.pop(Dispatch.from_name("LAST_ONLY"), None)
        Dispatch.remove("LAST_ONLY")


def test_one_to_all_and_dp_compute_spread_arguments():
    wg = SimpleNamespace(world_size=3)
    fns = get_predefined_dispatch_fn(Dispatch.ONE_TO_ALL)
    assert fns["dispatch_fn"](wg, 1, k="v") == (([1, 1, 1],), {"k": ["v", "v", "v"]})
    fns = get_predefined_dispatch_fn(Dispatch.DP_COMPUTE)
    assert fns["dispatch_fn"](wg, [1, 2, 3]) == (([1, 2, 3],), {})
    with pytest.raises(ValueError, match="one entry per worker"):
        fns["dispatch_fn"](wg, [1, 2])
    assert get_predefined_dispatch_fn(Dispatch.RANK_ZERO)["collect_fn"](wg, ["a", "b", "c"]) == "a"
    with pytest.raises(NotImplementedError):
        get_predefined_dispatch_fn(Dispatch.DIRECT_ROLLOUT_METHOD)["dispatch_fn"](wg)


def test_dp_compute_proto_chunks_pads_and_concats():
    wg = SimpleNamespace(world_size=2)
    fns = get_predefined_dispatch_fn(Dispatch.DP_COMPUTE_PROTO)
    (chunks,), kwargs = fns["dispatch_fn"](wg, _rows(4))
    assert [c.batch["x"].tolist() for c in chunks] == [[0.0, 1.0], [2.0, 3.0]] and kwargs == {}
    # 3 rows with padding on: padded to 4 by repeating row 0; the pad count travels in the kwargs
    args, kwargs = fns["dispatch_fn"](wg, data=_rows(3, auto_padding=True))
    assert [c.batch["x"].tolist() for c in kwargs["data"]] == [[0.0, 1.0], [2.0, 0.0]]
    assert kwargs[_padding_size_key] == 1
    assert fns["collect_fn"](wg, [_rows(2), _rows(1)]).batch["x"].tolist() == [0.0, 1.0, 0.0]
    td = TensorDict({"x": torch.arange(4.0)}, batch_size=[4])
    (td_chunks,), _ = fns["dispatch_fn"](wg, td)
    assert fns["collect_fn"](wg, td_chunks)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="positional argument 0"):
        fns["dispatch_fn"](wg, [1, 2])
    with_func = get_predefined_dispatch_fn(Dispatch.DP_COMPUTE_PROTO_WITH_FUNC)["dispatch_fn"]
    (funcs, pieces), _ = with_func(wg, len, _rows(2))
    assert funcs == [len, len] and [len(p) for p in pieces] == [1, 1]


def test_nd_dispatch_follows_declared_dp_ranks_and_collect_flags():
    # 4 workers as 2 (dp) x 2 (tp); the second worker of each tp pair is the one whose output counts
    wg = SimpleNamespace(
        world_size=4,
        _dispatch_info={},
        _collect_info={},
        _query_dispatch_info=lambda mesh: [0, 0, 1, 1],
        _query_collect_info=lambda mesh: [False, True, False, True],
        _put_chunks=lambda pieces: pieces,
    )
    fns = make_nd_compute_dataproto_dispatch_fn("tp")
    (per_worker,), _ = fns["dispatch_fn"](wg, _rows(4))
    assert [p.batch["x"].tolist() for p in per_worker] == [[0.0, 1.0], [0.0, 1.0], [2.0, 3.0], [2.0, 3.0]]
    out = fns["collect_fn"](wg, ["junk0", _rows(2), "junk2", _rows(1)])
    assert out.batch["x"].tolist() == [0.0, 1.0, 0.0]
    assert wg._dispatch_info == {"tp": [0, 0, 1, 1]}
    wg._collect_info["tp"] = [True, True, False, True]  # dp rank 0 collected twice
    with pytest.raises(ValueError, match="exactly one collecting worker"):
        fns["collect_fn"](wg, [_rows(1)] * 4)


def test_local_group_binds_methods_and_strips_padding(monkeypatch):
    wg = LocalWorkerGroup(Tagger, world_size=4, monkeypatch=monkeypatch)
    out = wg.tag(_rows(6, auto_padding=True))  # padded to 8 -> 2 rows per worker -> 6 rows back
    assert out.batch["r"].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
    # tp mesh: dp rank = rank // 2, ranks 1 and 3 collect
    assert wg.tp_tag(_rows(4)).batch["r"].tolist() == [1.0, 1.0, 3.0, 3.0]
    assert wg.first("x") == (0, "x")
    assert {"tag", "tp_tag", "first", "later", "_query_dispatch_info", "execute_with_func_generator"} <= set(vars(wg))
    assert wg.execute_with_func_generator(lambda w, d: d, _rows(4)).batch["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_worker_reads_env_contract(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="WORLD_SIZE"):
        Worker()
    _set_contract(monkeypatch, rank=1, world_size=2)
    worker = Worker()
    assert (worker.rank, worker.world_size, worker.local_rank) == (1, 2, 0)
    assert worker.get_master_addr_port() == ("127.0.0.1", "29500")
    assert {"WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"} <= set(Worker.env_keys())
    addr, port = worker.get_available_master_addr_port()
    assert addr == "127.0.0.1" and int(port) > 0
    worker._register_dispatch_collect_info("m", dp_rank=3, is_collect=False)
    assert (worker._query_dispatch_info("m"), worker._query_collect_info("m")) == (3, False)
    with pytest.raises(ValueError, match="already registered"):
        worker._register_dispatch_collect_info("m", dp_rank=0, is_collect=True)
    with pytest.raises(ValueError, match="never registered"):
        worker._query_dispatch_info("other")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        Worker()


class RoleX(Worker):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.saw_disable = os.environ.get("DISABLE_WORKER_INIT")

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def go(self, x):
        return x * self.scale

    @register(dispatch_mode=Dispatch.DIRECT_ROLLOUT_METHOD)
    async def chat(self, x):
        return x


class RoleY(Worker):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def go(self, x):
        return x * self.scale


def test_colocated_and_fused_classes_route_to_roles(monkeypatch):
    _set_contract(monkeypatch, rank=0, world_size=1)
    worker_dict_cls = build_colocated_worker_cls({"x": (RoleX, (3,), {}), "y": (RoleY, (), {"scale": 5})})
    assert getattr(worker_dict_cls.x_go, MAGIC_ATTR)["dispatch_mode"] == Dispatch.ONE_TO_ALL
    assert inspect.iscoroutinefunction(worker_dict_cls.chat)  # direct methods keep their plain name
    obj = worker_dict_cls()
    assert (obj.x_go(2), obj.y_go(2)) == (6, 10)
    assert obj.worker_dict["x"].saw_disable == "1" and os.environ.get("DISABLE_WORKER_INIT") is None
    with pytest.raises(ValueError, match="chat"):  # both roles would expose the direct method as plain "chat"
        build_colocated_worker_cls({"x": (RoleX, (1,), {}), "y": (RoleX, (1,), {})})

    fused = build_fused_worker_cls({"x": (RoleX, (3,), {})})()
    assert fused.x.go(2) == 6 and fused.get_fused_worker_by_name("x") is fused.x
    assert fused._fuw_execute("x_fwmn_go", 2) == 6
    assert fused._fuw_execute("x_fwmn_chat", 7) == 7  # async role method run to completion
    with pytest.raises(ValueError, match="bad fused method name"):
        fused._fuw_execute("z_fwmn_go", 1)
    with pytest.raises(ValueError, match="clash"):
        build_fused_worker_cls({"rank": (RoleX, (1,), {})})


def test_strip_padding_and_resource_pool_bookkeeping():
    assert strip_padding([1, 2, 3], 1) == [1, 2]
    assert len(strip_padding(_rows(5), 2)) == 3
    assert strip_padding(TensorDict({"x": torch.arange(4)}, batch_size=[4]), 1)["x"].tolist() == [0, 1, 2]
    pool = ResourcePool([2, 3])
    assert pool.world_size == 5 and pool() == [2, 3]
    assert pool.local_world_size_list() == [2, 2, 3, 3, 3] and pool.local_rank_list() == [0, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="non-negative"):
        ResourcePool([-1])


def test_base_package_imports_no_ray():
    code = "import sys, verl.single_controller, verl.single_controller.base; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
