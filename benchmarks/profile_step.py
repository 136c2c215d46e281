"""Instrumentation for ``benchmarks/train_step.py``: where one GRPO step's time goes, without changing verl.

Everything here is monkeypatching done from the outside, in the driver and (through a worker subclass that
``main_ppo``'s ``TaskRunner`` registers instead of ``ActorRolloutRefWorker``) inside the Ray worker processes:

* worker side, per call of ``generate_sequences`` / ``compute_log_prob`` / ``compute_ref_log_prob`` /
  ``update_actor``: the method's own time, split into exclusive buckets -- ``forward`` (the HF model class's
  ``forward``), ``backward`` (``Tensor.backward``), ``optimizer`` (``clip_grad_and_step``: clip + ``step``),
  ``generate`` (the hf engine's decode steps, ``HFEngine.step``, minus their forwards), ``weight_sync`` (``_sync_rollout_weights``), ``collective``
  (``torch.distributed`` calls and ``Work.wait``, which includes waiting for the other rank), ``fsdp`` (FSDP2's
  ``FSDPParamGroup`` pre/post forward/backward, unshard, reshard: copy-in/out and bookkeeping) -- and the rest (Python: ``DataProto`` moves, micro-batching,
  padding, log-prob gathers, metrics); plus the ``DataProto`` (de)serialisation Ray does around the call.
* driver side, per trainer stage (``marked_timer``): the worker-group call split into ``dispatch`` (chunking,
  padding), ``submit`` (``.remote``), ``wait`` (``ray.get``), ``collect`` (concat), and ``DataProto``
  (de)serialisation; the rest of the stage is driver Python (``union``, metrics, reward, advantages).
* peak RSS (``VmHWM``) of the driver and every process it started (Ray workers, raylet, GCS...).

The buckets are exclusive: a collective inside a forward counts as ``collective``, not ``forward``.
"""

from __future__ import annotations

import cProfile
import functools
import io
import os
import pstats
import resource
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from verl.single_controller.base.decorator import Dispatch, register
from verl.workers.fsdp_workers import ActorRolloutRefWorker

ACC: defaultdict[str, float] = defaultdict(float)  # exclusive seconds per bucket, this process
_STACK: list[list] = []  # [bucket, start, time of timed children]
_PATCHED: set[str] = set()
MODEL_BUCKETS = ("forward", "backward", "optimizer", "generate")
WORKER_BUCKETS = (*MODEL_BUCKETS, "collective", "fsdp", "weight_sync", "serialize", "deserialize")
COUNTERS = ("positions", "real_tokens")
DRIVER_BUCKETS = ("dispatch", "submit", "wait", "collect", "serialize", "deserialize")
METHOD_STAGE = {
    "generate_sequences": "gen",
    "compute_log_prob": "old_log_prob",
    "compute_ref_log_prob": "ref",
    "update_actor": "update_actor",
}
FSDP_GROUP_METHODS = (
    "pre_forward",
    "post_forward",
    "pre_backward",
    "post_backward",
    "unshard",
    "wait_for_unshard",
    "reshard",
    "finalize_backward",
)
COLLECTIVES = (
    "all_gather_single",
    "reduce_scatter_single",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_reduce",
    "all_gather",
    "all_gather_object",
    "broadcast",
    "broadcast_object_list",
    "reduce_scatter",
    "barrier",
)


def timed(bucket: str, fn):
    """``fn`` with its exclusive time added to ``ACC[bucket]`` (re-entry into the same bucket is not double-counted)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if any(entry[0] == bucket for entry in _STACK):
            return fn(*args, **kwargs)
        entry = [bucket, time.perf_counter(), 0.0]
        _STACK.append(entry)
        try:
            return fn(*args, **kwargs)
        finally:
            _STACK.pop()
            elapsed = time.perf_counter() - entry[1]
            ACC[bucket] += elapsed - entry[2]
            if _STACK:
                _STACK[-1][2] += elapsed

    return wrapper


def _patch(owner, name: str, bucket: str, key: str | None = None) -> None:
    key = key or f"{getattr(owner, '__name__', owner)}.{name}"
    if key in _PATCHED or not hasattr(owner, name):
        return
    _PATCHED.add(key)
    setattr(owner, name, timed(bucket, getattr(owner, name)))


def snapshot() -> dict[str, float]:
    return dict(ACC)


def delta(after: dict[str, float], before: dict[str, float], buckets) -> dict[str, float]:
    return {b: after.get(b, 0.0) - before.get(b, 0.0) for b in buckets}


def install_common() -> None:
    """DataProto (de)serialisation, torch.distributed collectives, backward: both driver and workers."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    from verl.protocol import DataProto

    _patch(DataProto, "__getstate__", "serialize")
    _patch(DataProto, "__setstate__", "deserialize")
    for name in COLLECTIVES:
        for owner in (dist, c10d):
            _patch(owner, name, "collective", key=f"{owner.__name__}.{name}")
    _patch(c10d.Work, "wait", "collective", key="Work.wait")
    _patch(torch.Tensor, "backward", "backward", key="Tensor.backward")


def _count_positions(fn):
    """Count, for scoring forwards (no KV cache), the positions computed and how many of them are real tokens."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if torch.is_tensor(ids) and kwargs.get("past_key_values") is None:
            ACC["positions"] += ids.numel()
            ACC["real_tokens"] += (
                float(mask.sum()) if torch.is_tensor(mask) and mask.shape == ids.shape else ids.numel()
            )
        return fn(self, *args, **kwargs)

    return wrapper


def patch_model_forward(module: torch.nn.Module) -> None:
    """Time the HF model class's own ``forward`` (FSDP subclasses inherit it, so the patch reaches them too)."""
    for cls in type(module).__mro__:
        if "forward" in cls.__dict__ and cls.__module__.startswith("transformers"):
            key = f"{cls.__module__}.{cls.__qualname__}.forward"
            if key not in _PATCHED:
                _PATCHED.add(key)
                cls.forward = _count_positions(timed("forward", cls.forward))
            return


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------------ worker side


class _WorkerState:
    records: list[dict] = []
    last_exit: dict[str, float] = {}
    last_record: dict | None = None
    profiler: cProfile.Profile | None = None
    profile_text: str = ""
    steps_done = 0


def _profile_step() -> int:
    return int(os.environ.get("BENCH_CPROFILE_STEP", "0") or 0)


def _record_method(worker, name: str) -> None:
    fn = getattr(worker, name)
    state = _WorkerState

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = snapshot()
        between = delta(before, state.last_exit, ("serialize", "deserialize"))
        if state.last_record is not None:  # Ray pickled the previous call's result after it returned
            state.last_record["serialize_out"] += between["serialize"]
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        total = time.perf_counter() - start
        after = snapshot()
        record = {"method": name, "stage": METHOD_STAGE[name], "total": total, "deserialize_in": between["deserialize"]}
        record.update(delta(after, before, WORKER_BUCKETS + COUNTERS))
        record["serialize_out"] = 0.0
        state.records.append(record)
        state.last_record, state.last_exit = record, after
        if name == "update_actor":
            state.steps_done += 1
            _toggle_profiler(state)
        return out

    setattr(worker, name, wrapper)


def _toggle_profiler(state) -> None:
    """Profile the worker from the end of step k-1 to the end of step k (k = ``BENCH_CPROFILE_STEP``)."""
    k = _profile_step()
    if not k or state.profile_text:
        return
    if state.steps_done == k - 1 and state.profiler is None:
        state.profiler = cProfile.Profile()
        state.profiler.enable()
    elif state.steps_done == k and state.profiler is not None:
        state.profiler.disable()
        state.profile_text = profile_summary(state.profiler)


def profile_summary(profiler: cProfile.Profile, limit: int = 22) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    for name in ("_sync_rollout_weights", "update_policy", r"\(compute_log_prob\)"):  # where the worker's time goes
        stats.print_callees(name)
    return out.getvalue()


def install_worker(worker: ActorRolloutRefWorker) -> None:
    install_common()
    from verl.workers.actor import dp_actor

    _patch(dp_actor, "clip_grad_and_step", "optimizer", key="dp_actor.clip_grad_and_step")
    try:  # FSDP2's per-module work around forward/backward: unshard copies, reshard, gradient reduce bookkeeping
        from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

        for name in FSDP_GROUP_METHODS:
            _patch(FSDPParamGroup, name, "fsdp", key=f"FSDPParamGroup.{name}")
    except ImportError:
        pass
    modules = {
        id(m): m for m in (worker.actor_module_fsdp, worker.ref_module_fsdp, worker.rollout_module) if m is not None
    }
    for module in modules.values():  # the hf rollout on FSDP2 generates with the actor module itself
        patch_model_forward(module)
    engine = getattr(worker.rollout, "engine", None)
    if engine is not None and hasattr(engine, "step"):
        engine.step = timed("generate", engine.step)  # the hf engine's decode loop, one token per call
    if worker.actor_module_fsdp is not None:
        worker._sync_rollout_weights = timed("weight_sync", worker._sync_rollout_weights)
    for name in METHOD_STAGE:
        _record_method(worker, name)


class ProfiledActorRolloutRefWorker(ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` with the timers above installed after ``init_model``; nothing else changes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        init_model = self.init_model

        @functools.wraps(init_model)
        def init_and_instrument(*a, **k):
            out = init_model(*a, **k)
            install_worker(self)
            return out

        self.init_model = init_and_instrument

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def bench_records(self) -> dict:
        state = _WorkerState
        if state.last_record is not None:
            state.last_record["serialize_out"] += delta(snapshot(), state.last_exit, ("serialize",))["serialize"]
            state.last_exit = snapshot()
        return {
            "rank": self.rank,
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(),
            "records": state.records,
            "profile": state.profile_text,
        }


# ------------------------------------------------------------------------------------------------ driver side


class _DriverState:
    stages: list[dict] = []  # one per marked_timer exit: {"step", "stage", "wall", buckets...}
    step = 0
    profiler: cProfile.Profile | None = None
    profile_text = ""


def _func_generator(wg, method_name, dispatch_fn, collect_fn, execute_fn, blocking):
    """``verl.single_controller.ray.base.func_generator`` with each phase timed."""
    import ray

    from verl.protocol import _padding_size_key
    from verl.single_controller.ray import base

    dispatch_t, collect_t = timed("dispatch", dispatch_fn), timed("collect", collect_fn)
    execute_t, get_t = timed("submit", execute_fn), timed("wait", ray.get)
    strip_t = timed("collect", base.strip_padding)

    def method(*args, **kwargs):
        if not base._runs_as_coroutine(wg, method_name):
            base._wait_for_future_inputs(args, kwargs)
        args, kwargs = dispatch_t(wg, *args, **kwargs)
        pad_size = kwargs.pop(_padding_size_key, 0)
        output = execute_t(method_name, *args, **kwargs)
        if blocking:
            output = get_t(output)
        return strip_t(collect_t(wg, output), pad_size)

    method.__name__ = method_name
    return method


def install_driver() -> None:
    install_common()
    from verl.single_controller.ray import base
    from verl.trainer.ppo import ray_trainer

    base.func_generator = _func_generator
    original = ray_trainer.marked_timer

    @contextmanager
    def marked_timer(name, timing_raw, *args, **kwargs):
        state = _DriverState
        if name == "step":
            state.step += 1
            k = _profile_step()
            if k and state.step == k:
                state.profiler = cProfile.Profile()
                state.profiler.enable()
        before, start = snapshot(), time.perf_counter()
        with original(name, timing_raw, *args, **kwargs):
            yield
        wall = time.perf_counter() - start
        state.stages.append(
            {"step": state.step, "stage": name, "wall": wall, **delta(snapshot(), before, DRIVER_BUCKETS)}
        )
        if name == "step" and state.profiler is not None:
            state.profiler.disable()
            state.profile_text = profile_summary(state.profiler)
            state.profiler = None

    ray_trainer.marked_timer = marked_timer


def process_tree_peak_rss() -> list[dict]:
    """``VmHWM`` (peak resident set) of this process and every descendant, with a short name."""
    import psutil

    me = psutil.Process()
    rows = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
            title = " ".join(proc.cmdline())[:80] or proc.name()
        except (OSError, psutil.Error):
            continue
        rows.append({"pid": proc.pid, "name": "driver" if proc.pid == me.pid else title, "peak_rss_mb": hwm / 1024})
    return rows


RESULT: dict = {}


def profiled_task_runner():
    """A ``TaskRunner`` subclass that registers the profiled worker and reads its records before shutdown."""
    from verl.trainer.main_ppo import TaskRunner
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class ProfiledTrainer(RayPPOTrainer):
        def fit(self):
            out = super().fit()
            RESULT["workers"] = self.actor_rollout_wg.bench_records()
            RESULT["memory"] = process_tree_peak_rss()
            RESULT["driver"] = {"stages": _DriverState.stages, "profile": _DriverState.profile_text}
            return out

    class ProfiledTaskRunner(TaskRunner):
        trainer_cls = ProfiledTrainer

        def add_actor_rollout_worker(self, config):
            import ray

            from verl.single_controller.ray import RayWorkerGroup
            from verl.trainer.ppo.utils import Role

            self.role_worker_mapping[Role.ActorRollout] = ray.remote(ProfiledActorRolloutRefWorker)
            self.mapping[Role.ActorRollout] = "global_pool"
            return ProfiledActorRolloutRefWorker, RayWorkerGroup

    return ProfiledTaskRunner
