"""SGLang rollout: the engine contract over ``sglang.Engine`` (``SGLangEngine``) and the rollout on it. Imports without
SGLang.

The engine object is a seam: ``SGLangEngine(engine=...)`` takes anything with SGLang's offline-engine methods; the
tests pass a double whose outputs are shaped as SGLang 0.5.23 builds them and check every call against the installed
package's source (``tests/workers/rollout/test_sglang_contract.py``). Without one, ``sglang.Engine`` is started.

Facts from SGLang 0.5.23's source (``sglang/srt/entrypoints/engine.py``, ``managers/tokenizer_manager.py``):

* ``Engine.generate``, ``update_weights_from_tensor``, ``flush_cache``, ``release_memory_occupation`` and
  ``resume_memory_occupation`` are plain methods that run the engine's own event loop
  (``self.loop.run_until_complete``): they must not be called from a thread whose event loop is running. This adapter
  calls them from plain code; inside an event loop (the multi-turn loop, verl's ``async`` faces) they run on a worker
  thread. ``async_generate`` is the only ``async def`` we could use and is not (it is bound to the loop the engine was
  started in).
* Request: ``generate(input_ids=[[ids] per row], sampling_params=[{...} per row], return_logprob=...,
  top_logprobs_num=..., token_ids_logprob=...)``; ``sampling_params`` holds ``max_new_tokens``, ``temperature``
  (0 = greedy), ``top_p``, ``top_k``, ``stop_token_ids``, ``ignore_eos``, ``skip_special_tokens=False``,
  ``sampling_seed`` (per request; SGLang honours it only when started with ``enable_deterministic_inference``, so it
  is sent only then).
* Response, with ``skip_tokenizer_init=True``: one dict per row, ``output_ids`` (generated ids including the stop
  token) and ``meta_info`` (``id``, ``finish_reason`` = ``{"type": "stop"|"length"|"abort", ...}``,
  ``prompt_tokens``, ``completion_tokens``, ...; with ``return_logprob``: ``output_token_logprobs`` =
  ``[(logprob, token_id, None), ...]`` of the same length, ``output_top_logprobs``, ``output_token_ids_logprobs``;
  ``input_token_logprobs`` starts with ``None`` and is ignored).
* Logprob semantics: SGLang returns ``log_softmax(z / T)`` without top-k/top-p renormalisation (greedy:
  ``log_softmax(z)``), or of the raw logits with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1``. It never returns logits, so
  capture mode ``full`` is refused (``check_capture``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from verl.workers.rollout.base import EngineRollout
from verl.workers.rollout.engine import GenerationOutput, InferenceEngine, SamplingParams
from verl.workers.rollout.hf_rollout import as_rollout_config
from verl.workers.rollout.sglang_rollout.utils import get_named_tensor_buckets

__all__ = ["SGLangAdapter", "SGLangEngine", "parse_generate_output", "sglang_generate_kwargs", "sglang_server_kwargs"]


def sglang_server_kwargs(model_path: str, cfg: Any, seed: int, trust_remote_code: bool) -> dict[str, Any]:
    """``sglang.Engine(**kwargs)`` (``ServerArgs`` fields) for ``actor_rollout_ref.rollout`` (typed ``RolloutConfig``).

    Maps ``dtype``, ``gpu_memory_utilization`` (``mem_fraction_static``), ``free_cache_engine``
    (``enable_memory_saver``), ``load_format``, ``skip_tokenizer_init``, ``max_model_len`` (``context_length``),
    ``enforce_eager`` (``disable_cuda_graph``), ``enable_prefix_caching`` (``disable_radix_cache``),
    ``max_num_batched_tokens`` / ``enable_chunked_prefill`` (``chunked_prefill_size``) and ``max_num_seqs``
    (``max_running_requests``); ``engine_kwargs.sglang`` is applied last (it wins). The hybrid engine runs one engine
    per training rank, so its ``tp_size`` is 1 (``rollout.tensor_model_parallel_size > 1`` is refused before Ray).
    """
    kwargs = {
        "model_path": os.fspath(model_path),
        "dtype": cfg.dtype,
        "mem_fraction_static": cfg.gpu_memory_utilization,
        "enable_memory_saver": cfg.free_cache_engine,
        "tp_size": 1,
        "load_format": cfg.load_format,
        "skip_tokenizer_init": cfg.skip_tokenizer_init,
        "random_seed": seed,
        "trust_remote_code": trust_remote_code,
        "context_length": cfg.max_model_len or cfg.prompt_length + cfg.response_length,
        "disable_cuda_graph": cfg.enforce_eager,
        "disable_radix_cache": not cfg.enable_prefix_caching,
        "chunked_prefill_size": cfg.max_num_batched_tokens if cfg.enable_chunked_prefill else -1,
    }
    if cfg.max_num_seqs:
        kwargs["max_running_requests"] = cfg.max_num_seqs
    kwargs.update((cfg.engine_kwargs or {}).get("sglang") or {})
    return kwargs


def sglang_generate_kwargs(
    prompts: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    vocab_size: int | None = None,
    seeded: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of ``Engine.generate`` for one batch: one request per row, per-row lists.

    ``seeded``: the engine honours ``sampling_seed`` (started with ``enable_deterministic_inference``)."""
    from verl.workers.rollout.logit_capture import sglang_sampling_kwargs

    sampling, return_logprob, top_num, token_ids = [], [], [], []
    for p in params:
        row = {
            "max_new_tokens": p.max_tokens,
            "temperature": 0.0 if p.greedy else p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "stop_token_ids": list(p.stop_token_ids),
            "ignore_eos": p.ignore_eos,
            "skip_special_tokens": False,
            "n": 1,
        }
        if seeded and p.seed is not None:
            row["sampling_seed"] = p.seed
        sampling.append(row)
        request = {"return_logprob": False, "top_logprobs_num": 0, "token_ids_logprob": None}
        if p.capture is not None:
            request = sglang_sampling_kwargs(p.capture, vocab_size)
        return_logprob.append(request["return_logprob"])
        top_num.append(request["top_logprobs_num"])
        token_ids.append(request["token_ids_logprob"])
    kwargs: dict[str, Any] = {"input_ids": [list(p) for p in prompts], "sampling_params": sampling}
    if any(return_logprob):
        kwargs.update(return_logprob=return_logprob, top_logprobs_num=top_num)
        if any(ids is not None for ids in token_ids):
            kwargs["token_ids_logprob"] = token_ids
    return kwargs


def parse_generate_output(output: Mapping[str, Any], params: SamplingParams) -> GenerationOutput:
    """One response dict -> ``GenerationOutput`` (capture per ``params.capture``).

    Raises:
        ValueError: more ids than ``max_tokens``, or logprobs that do not line up with ``output_ids``.
    """
    tokens = [int(t) for t in output["output_ids"]]
    if len(tokens) > params.max_tokens:
        raise ValueError(f"SGLang returned {len(tokens)} tokens for max_new_tokens={params.max_tokens}")
    meta = output.get("meta_info") or {}
    reason = (meta.get("finish_reason") or {}).get("type")
    result = GenerationOutput(tokens, None, reason if reason in ("stop", "length", "abort") else "length")
    if params.capture is None:
        return result
    pairs = meta.get("output_token_logprobs")
    if pairs is None or len(pairs) != len(tokens) or any(int(p[1]) != t for p, t in zip(pairs, tokens)):
        got = "none" if pairs is None else f"{len(pairs)} entries"
        raise ValueError(
            f"SGLang output_token_logprobs ({got}) do not match output_ids ({len(tokens)} ids); see "
            "reference/engine_logprobs.md pitfall 5"
        )
    from verl.workers.rollout.logit_capture import capture_from_sglang

    result.capture = capture_from_sglang(output, params.capture)
    return result


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call one of SGLang's blocking methods; from a thread whose event loop runs, on a worker thread instead."""
    if not _in_running_loop():
        return fn(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


class SGLangEngine(InferenceEngine):
    """``sglang.Engine`` behind the engine contract (``verl.workers.rollout.engine``).

    Args:
        engine: an ``sglang.Engine`` (or a double with its methods).
        vocab_size, max_model_len, eos_token_ids, pad_token_id: the model's.
        memory_saver: the engine was started with ``enable_memory_saver`` (``sleep``/``wake_up`` reach it).
        seeded: the engine was started with ``enable_deterministic_inference`` (per-request seeds are honoured).
    """

    def __init__(
        self,
        engine: Any,
        vocab_size: int,
        max_model_len: int,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        memory_saver: bool = False,
        seeded: bool = False,
    ):
        self.engine = engine
        self.seeded = bool(seeded)
        self.vocab_size = int(vocab_size)
        self.max_model_len = int(max_model_len)
        self.eos_token_ids = tuple(int(e) for e in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        self.memory_saver = bool(memory_saver)
        self.asleep = False

    @classmethod
    def from_rollout_config(
        cls, model_path: str, cfg: Any, seed: int, trust_remote_code: bool, engine: Any = None
    ) -> SGLangEngine:
        """Start ``sglang.Engine`` for ``model_path`` (or wrap ``engine``), reading the model's facts from its files."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        path = os.fspath(model_path)
        server_kwargs = sglang_server_kwargs(path, cfg, seed, trust_remote_code)
        if engine is None:
            import sglang

            engine = sglang.Engine(**server_kwargs)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        eos = tokenizer.eos_token_id
        try:
            eos = GenerationConfig.from_pretrained(path).eos_token_id or eos
        except OSError:
            pass
        eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        max_len = cfg.max_model_len or cfg.prompt_length + cfg.response_length
        seeded = bool(server_kwargs.get("enable_deterministic_inference", False))
        return cls(engine, text.vocab_size, max_len, eos_ids, pad, memory_saver=cfg.free_cache_engine, seeded=seeded)

    # ------------------------------------------------------------------ generation
    def check_capture(self, spec: Any) -> None:
        if spec.mode == "full":
            raise ValueError(
                "actor_rollout_ref.rollout.logit_capture.mode=full: SGLang returns log-probabilities, never logits; "
                f"use mode=topk with k={self.vocab_size} for the whole log-distribution, or rollout.name=vllm / hf "
                "for logits"
            )

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[GenerationOutput]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            self.check_request(prompt, p, where=f"request {i}")
        rows = [i for i, p in enumerate(params) if p.max_tokens > 0]
        results = [GenerationOutput() for _ in prompts]
        if not rows:
            return results
        kwargs = sglang_generate_kwargs(
            [prompts[i] for i in rows], [params[i] for i in rows], self.vocab_size, self.seeded
        )
        outputs = _blocking(self.engine.generate, **kwargs)
        if isinstance(outputs, Mapping):
            outputs = [outputs]
        if len(outputs) != len(rows):
            raise ValueError(f"SGLang returned {len(outputs)} outputs for {len(rows)} prompts")
        for i, output in zip(rows, outputs):
            results[i] = parse_generate_output(output, params[i])
        return results

    async def generate_async(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[GenerationOutput]:
        return await asyncio.get_running_loop().run_in_executor(None, self.generate, prompts, params)

    # ------------------------------------------------------------------ weights and memory
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> None:
        """HF-named weights bucket by bucket (``update_weights_from_tensor``), then one ``flush_cache``."""
        for bucket in get_named_tensor_buckets(weights, bucket_bytes):
            named = [(n, t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in bucket]
            _blocking(self.engine.update_weights_from_tensor, named_tensors=named, load_format=None, flush_cache=False)
        _blocking(self.engine.flush_cache)

    def sleep(self) -> None:
        """Release weights and KV cache (``release_memory_occupation``; engine started with the memory saver)."""
        if self.memory_saver and not self.asleep:
            _blocking(self.engine.release_memory_occupation, tags=None)
            self.asleep = True

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-acquire ``tags`` (``weights``, ``kv_cache``; None = all) after ``sleep``."""
        if self.memory_saver and self.asleep:
            tag_list = list(tags) if tags else None
            _blocking(self.engine.resume_memory_occupation, tags=tag_list)
            if tag_list is None or "kv_cache" in tag_list:
                self.asleep = False

    def close(self) -> None:
        if hasattr(self.engine, "shutdown"):
            self.engine.shutdown()


class SGLangAdapter(EngineRollout):
    """The SGLang rollout: ``EngineRollout`` over :class:`SGLangEngine`; ``ServerAdapter`` / ``SGLangRolloutWithLogit``
    subclass it.

    Args:
        model: the HF model directory (or None with ``model_config.path``).
        config: typed ``RolloutConfig`` (a DictConfig or dict is converted).
        model_config: ``actor_rollout_ref.model``, optional.
        device_mesh: unused.
        engine: an engine object (the seam); None starts ``sglang.Engine``.
        seed: the engine's ``random_seed``.
    """

    def __init__(
        self,
        model: Any = None,
        config: Any = None,
        model_config: Any = None,
        device_mesh: Any = None,
        engine: Any = None,
        seed: int = 0,
        **_,
    ):
        typed, _micro = as_rollout_config(config)
        super().__init__(typed, model_config, device_mesh)
        self.path = model if isinstance(model, (str, os.PathLike)) else getattr(model_config, "path", None)
        if not self.path:
            raise ValueError("the SGLang rollout needs the model directory (first argument or model_config.path)")
        trust = model_config is not None and bool(model_config.trust_remote_code)
        self.engine = SGLangEngine.from_rollout_config(self.path, typed, seed, trust, engine=engine)
        if self.capture_spec is not None:
            self.engine.check_capture(self.capture_spec)
        self.vocab_size = self.engine.vocab_size
