"""Worker groups on a local Ray cluster: every dispatch mode, futures, padding, colocation, the env contract.

Starting actors is the expensive part (each imports torch), so one pool hosts three worker groups of two CPU
actors each for the whole module, and each test asks several things of them.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
import torch

from verl.protocol import DataProto, DataProtoFuture
from verl.single_controller.base import Worker
from verl.single_controller.base.decorator import Dispatch, Execute, make_nd_compute_dataproto_dispatch_fn, register

pytestmark = pytest.mark.ray


class ProbeWorker(Worker):
    """Answers with its rank so every test can tell which worker produced which row."""

    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        # "dp": every worker its own chunk. "tp": one chunk shared by both (a TP pair), only rank 0's output kept.
        self._register_dispatch_collect_info("dp", dp_rank=self.rank, is_collect=True)
        self._register_dispatch_collect_info("tp", dp_rank=0, is_collect=self.rank == 0)

    def getenv(self, key: str) -> str | None:
        return os.environ.get(key)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def add_rank(self, x):
        return x + self.rank

    @register(dispatch_mode=Dispatch.ALL_TO_ALL)
    def echo(self, x):
        return (self.rank, x)

    @register(dispatch_mode=Dispatch.DP_COMPUTE)
    def scale(self, x):
        return x * 10 + self.rank

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    def tag_rows(self, data: DataProto) -> DataProto:
        data.batch["out"] = data.batch["x"] + self.offset + 100 * self.rank
        return data

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO, blocking=False)
    async def tag_rows_later(self, data: DataProto) -> DataProto:
        await asyncio.sleep(0)
        data.batch["out"] = data.batch["x"] + self.offset + 100 * self.rank
        return data

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    async def double_out(self, data: DataProto) -> DataProto:
        await asyncio.sleep(0)
        data.batch["out"] = data.batch["out"] * 2
        return data

    @register(dispatch_mode=Dispatch.DP_COMPUTE_METRIC)
    def row_count(self, data: DataProto) -> dict:
        return {"rows": len(data), "rank": self.rank}

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="tp"))
    def tp_rows(self, data: DataProto) -> DataProto:
        data.batch["out"] = torch.full((len(data),), float(self.rank))
        return data

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="dp"))
    def dp_rows(self, data: DataProto) -> DataProto:
        data.batch["out"] = torch.full((len(data),), float(self.rank))
        return data

    @register(dispatch_mode=Dispatch.ALL_TO_ALL, execute_mode=Execute.RANK_ZERO)
    def whoami(self) -> int:
        return self.rank

    @register(dispatch_mode=Dispatch.DIRECT_ROLLOUT_METHOD)
    async def direct_only(self) -> str:
        return "direct"

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def gloo_all_reduce(self, value: float) -> float:
        """What an FSDP worker does first: join a gloo process group from the env contract alone."""
        import torch.distributed as dist

        dist.init_process_group(backend="gloo")
        t = torch.tensor([value + self.rank])
        dist.all_reduce(t)
        dist.destroy_process_group()
        return t.item()


class RoleA(Worker):
    def __init__(self, bias: int) -> None:
        super().__init__()
        self.bias = bias

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def value(self, x):
        return x + self.bias + self.rank

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def pid(self) -> int:
        return os.getpid()

    @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
    async def shift(self, data: DataProto) -> DataProto:
        data.batch["x"] = data.batch["x"] + self.bias
        return data


class RoleB(Worker):
    def __init__(self) -> None:
        super().__init__()
        self._register_dispatch_collect_info("b", dp_rank=0, is_collect=self.rank == 1)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def value(self, x):
        return x * 2

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def pid(self) -> int:
        return os.getpid()

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="b"))
    def mark(self, data: DataProto) -> DataProto:
        data.batch["who"] = torch.full((len(data),), float(self.rank))
        return data


COLOCATED_ROLES = {"a": (RoleA, {"bias": 5}), "b": (RoleB, {})}
FUSED_ROLES = {"a": (RoleA, {"bias": 1}), "b": (RoleB, {})}


def _class_dict(roles: dict) -> dict:
    from verl.single_controller.ray import RayClassWithInitArgs

    return {key: RayClassWithInitArgs(cls, **kwargs) for key, (cls, kwargs) in roles.items()}


def _hybrid_cls():
    from verl.single_controller.ray import create_colocated_worker_raw_cls

    class Hybrid(create_colocated_worker_raw_cls(_class_dict(FUSED_ROLES))):
        @register(dispatch_mode=Dispatch.ONE_TO_ALL)
        def both(self, x):
            return self.b.value(self.a.value(x))

    return Hybrid


def _add_rank_column(worker: Worker, data: DataProto) -> DataProto:
    data.batch["r"] = torch.full((len(data),), float(worker.rank))
    return data


def _rows(n: int, auto_padding: bool = False) -> DataProto:
    return DataProto.from_dict(
        {"x": torch.arange(n, dtype=torch.float32)}, {"id": np.arange(n).astype(object)}, auto_padding=auto_padding
    )


@pytest.fixture(scope="module")
def pool(ray_cluster):
    from verl.single_controller.ray import RayResourcePool

    pool = RayResourcePool([2], use_gpu=False, max_colocate_count=3, name_prefix="sc_test_")
    yield pool
    pool.release()  # ends every actor of the module


@pytest.fixture(scope="module")
def groups(pool):
    """All worker groups of the module, created together so that their actors boot in parallel."""
    from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup, create_colocated_worker_cls

    probe = RayWorkerGroup(
        pool, RayClassWithInitArgs(cls=ProbeWorker, offset=0.5), device_name="cpu", worker_env={"SC_TEST_KEY": "hello"}
    )
    colocated = RayWorkerGroup(pool, create_colocated_worker_cls(_class_dict(COLOCATED_ROLES)), device_name="cpu")
    hybrid = RayClassWithInitArgs(cls=_hybrid_cls())
    hybrid.fused_worker_used = True
    fused = RayWorkerGroup(pool, hybrid, device_name="cpu")
    return {"probe": probe, "colocated": colocated, "fused": fused}


@pytest.fixture(scope="module")
def probe_wg(groups):
    return groups["probe"]


def test_env_contract_is_injected_and_protected(probe_wg, pool):
    from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup

    assert probe_wg.world_size == 2
    assert probe_wg.execute_all_sync("getenv", "RANK") == ["0", "1"]
    for key, want in [
        ("WORLD_SIZE", "2"),
        ("RAY_LOCAL_WORLD_SIZE", "2"),
        ("WG_BACKEND", "ray"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(probe_wg.master_port)),
        ("OMP_NUM_THREADS", "1"),
        ("SC_TEST_KEY", "hello"),
    ]:
        assert probe_wg.execute_all_sync("getenv", key=key) == [want, want], key
    assert sorted(probe_wg.execute_all_sync("getenv", key="RAY_LOCAL_RANK")) == ["0", "1"]
    assert probe_wg.execute_rank_zero_sync("getenv", "RANK") == "0"
    assert len(probe_wg.worker_names) == 2 and probe_wg.worker_names[0].endswith("ProbeWorker_0:0")
    # Overriding a contract variable is refused before any actor starts.
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        RayWorkerGroup(pool, RayClassWithInitArgs(cls=ProbeWorker), worker_env={"WORLD_SIZE": "100"})


def test_gloo_process_group_forms_from_the_env_contract(probe_wg):
    # Ranks contribute 1.0 and 2.0; all_reduce sums them on both.
    assert probe_wg.gloo_all_reduce(1.0) == [3.0, 3.0]


def test_simple_dispatch_modes(probe_wg):
    assert probe_wg.add_rank(1) == [1, 2]  # ONE_TO_ALL
    assert probe_wg.echo([10, 20]) == [(0, 10), (1, 20)]  # ALL_TO_ALL: a list of world_size is split
    assert probe_wg.echo(5) == [(0, 5), (1, 5)]
    assert probe_wg.scale([1, 2]) == [10, 21]  # DP_COMPUTE
    with pytest.raises(ValueError, match="DP_COMPUTE"):
        probe_wg.scale(1)
    assert probe_wg.whoami() == 0  # Execute.RANK_ZERO: one answer, not a list
    with pytest.raises(NotImplementedError):
        probe_wg.direct_only()


def test_dp_compute_proto_modes(probe_wg):
    out = probe_wg.tag_rows(_rows(4))
    # rows 0-1 on rank 0, rows 2-3 on rank 1 (+100); offset 0.5 from the constructor
    assert out.batch["out"].tolist() == [0.5, 1.5, 102.5, 103.5]
    assert list(out.non_tensor_batch["id"]) == [0, 1, 2, 3]

    out = probe_wg.execute_with_func_generator(_add_rank_column, _rows(4))  # DP_COMPUTE_PROTO_WITH_FUNC
    assert out.batch["r"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert probe_wg.execute_func_rank_zero(int, "7") == 7

    assert probe_wg.row_count(_rows(6)) == [{"rows": 3, "rank": 0}, {"rows": 3, "rank": 1}]  # DP_COMPUTE_METRIC
    assert probe_wg.double_out(data=probe_wg.tag_rows(_rows(2))).batch["out"].tolist() == [1.0, 203.0]  # async def


def test_auto_padding_strips_the_pad_rows(probe_wg):
    out = probe_wg.tag_rows(_rows(7, auto_padding=True))
    # 7 rows padded to 8 (row 0 appended): ranks get rows 0-3 and 4-6 + pad; the pad row is dropped again
    assert len(out) == 7
    assert out.batch["out"].tolist() == [0.5, 1.5, 2.5, 3.5, 104.5, 105.5, 106.5]
    fut = probe_wg.tag_rows_later(_rows(7, auto_padding=True))
    assert len(fut.get()) == 7
    assert len(probe_wg.tag_rows(_rows(1, auto_padding=True))) == 1
    with pytest.raises(Exception, match="chunk|divis"):
        probe_wg.tag_rows(_rows(7))  # without padding 7 rows cannot be split in two


def test_non_blocking_returns_future_that_chains(probe_wg):
    fut = probe_wg.tag_rows_later(_rows(4))
    assert isinstance(fut, DataProtoFuture)
    # The future goes straight into the next call; each worker resolves its own chunk.
    out = probe_wg.double_out(fut)
    assert out.batch["out"].tolist() == [1.0, 3.0, 205.0, 207.0]
    assert fut.get().batch["out"].tolist() == [0.5, 1.5, 102.5, 103.5]
    # a sync method resolving a future produced by an async method of the same actors
    assert probe_wg.tag_rows(probe_wg.tag_rows_later(_rows(2))).batch["out"].tolist() == [0.5, 101.5]
    # a padded, still-running result chained on: its pad row is stripped before the next split (4 + 3 rows)
    chained = probe_wg.double_out(probe_wg.tag_rows_later(_rows(7, auto_padding=True)))
    assert chained.batch["out"].tolist() == [1.0, 3.0, 5.0, 7.0, 209.0, 211.0, 213.0]


def test_nd_dispatch_sends_shared_chunks_and_keeps_collect_workers(probe_wg):
    out = probe_wg.tp_rows(_rows(4))
    # both workers got all 4 rows (one dp rank); only rank 0's copy is collected
    assert out.batch["out"].tolist() == [0.0] * 4 and out.batch["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert probe_wg._dispatch_info["tp"] == [0, 0] and probe_wg._collect_info["tp"] == [True, False]
    assert probe_wg.dp_rows(_rows(4)).batch["out"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert len(probe_wg.dp_rows(_rows(5, auto_padding=True))) == 5


def test_colocated_roles_share_one_actor_and_spawn_per_role(groups):
    wg = groups["colocated"]
    assert wg.a_value(1) == [6, 7] and wg.b_value(1) == [2, 2]
    roles = wg.spawn(prefix_set=COLOCATED_ROLES.keys())
    assert roles["a"].value(1) == [6, 7]
    assert roles["b"].value(1) == [2, 2]
    assert roles["a"].pid() == roles["b"].pid()  # same processes
    assert roles["a"].shift(_rows(2)).batch["x"].tolist() == [5.0, 6.0]  # async role method
    # role b declared a TP-like mesh where rank 1 collects
    assert roles["b"].mark(_rows(2)).batch["who"].tolist() == [1.0, 1.0]


def test_fused_worker_roles_reachable_through_fuse(groups):
    wg = groups["fused"]
    wg.fuse(FUSED_ROLES.keys())
    assert wg.a.value(1) == [2, 3]
    assert wg.b.value(wg.a.value(1)) == [[2, 3, 2, 3], [2, 3, 2, 3]]  # ONE_TO_ALL sends the whole list to each
    assert wg.both(1) == [4, 6]


def test_attach_to_existing_workers_by_name(probe_wg):
    from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup

    again = RayWorkerGroup.from_detached(
        worker_names=probe_wg.worker_names, ray_cls_with_init=RayClassWithInitArgs(cls=ProbeWorker)
    )
    assert again.world_size == 2 and again.add_rank(1) == [1, 2]


def test_pools_split_and_check_capacity(pool):
    from verl.single_controller.ray import RayResourcePool, ResourcePoolManager
    from verl.single_controller.ray.base import split_resource_pool

    # One CPU is one process slot; with a GPU device a slot is one GPU plus max_colocate_count CPUs.
    assert RayResourcePool([1]).bundle("cpu") == {"CPU": 1}
    assert RayResourcePool([1], max_colocate_count=3).bundle("cuda") == {"CPU": 3, "GPU": 1}
    halves = split_resource_pool(pool, 1)
    assert [h.world_size for h in halves] == [1, 1]
    assert [slot[1:] for slot in halves[1].slots("cpu")] == [(1, 0, 0, 1)]  # bundle 1 of pg 0, alone there
    with pytest.raises(ValueError, match="needs 100 CPU"):
        RayResourcePool([100], use_gpu=False).get_placement_groups(device_name="cpu")

    manager = ResourcePoolManager({"global_pool": [2], "side": [1]}, mapping={"actor": "global_pool", "critic": "side"})
    assert manager.get_n_gpus() == 3
    manager.create_resource_pool()
    assert manager.get_resource_pool("critic").world_size == 1
    # two live pools with the same name (e.g. two trainers in one Ray session) do not collide
    twins = [RayResourcePool([1], use_gpu=False, name_prefix="twin") for _ in range(2)]
    assert all(len(p.get_placement_groups(device_name="cpu")) == 1 for p in twins)
    for p in twins:
        p.release()
    with pytest.raises(ValueError, match="'ref'"):
        manager.get_resource_pool("ref")
    with pytest.raises(ValueError, match="'huge' needs 100 CPU"):
        ResourcePoolManager({"huge": [100]}, mapping={}).create_resource_pool()


def test_parallel_put_keeps_order(ray_cluster):
    from verl.utils.ray_utils import parallel_put

    data = [1, "two", {"three": 3}, [4]]
    assert ray_cluster.get(parallel_put(data, max_workers=2)) == data
    with pytest.raises(AssertionError):
        parallel_put([])
