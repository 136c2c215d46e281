"""Token-in/token-out generation behind the OpenAI server (``verl.workers.rollout.openai_server``).

One backend, :class:`EngineBackend`, drives any :class:`~verl.workers.rollout.engine.SteppableEngine` on a
background thread: requests arrive concurrently from the HTTP server's event loop, join the engine with
``add_request``, and every ``step``'s new tokens are streamed back to their requests. Stop strings are matched on the
decoded text here (engines only know token ids); a client that goes away aborts its request.

* ``hf``: ``HFEngine`` (``hf_engine.py``). The requests that arrive within ``max_wait_ms`` of an idle engine (up to
  ``max_batch_size``) are decoded together; requests arriving meanwhile form the next batch. Each request without a
  seed gets one from the backend's own stream, so every answer has its own reproducible random stream.
* ``vllm``: ``VLLMEngine`` (``vllm_rollout``), in process; new requests join the running engine at every step (vLLM's
  continuous batching).

Logprobs are ``log_softmax(raw logits)`` at each generated position (vLLM's ``raw_logprobs``; equal to the processed
ones for greedy decoding), with the top-k alternatives when asked: the engine's logit capture in mode ``logprob`` /
``topk`` with ``raw=True``.

Usage::

    backend = make_backend("hf", model_dir)
    job = GenerationJob(SamplingParams(max_tokens=16, temperature=0.0, capture=logprobs_capture(2)))
    result = await backend.generate(prompt_ids, job)
    result.token_ids, result.logprobs, result.top_logprobs, result.finish_reason
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from verl.workers.rollout.engine import SamplingParams, StepOutput, SteppableEngine

__all__ = [
    "BACKENDS",
    "EngineBackend",
    "GenerationJob",
    "GenerationResult",
    "TokenStep",
    "logprobs_capture",
    "make_backend",
]


def logprobs_capture(k: int | None) -> Any:
    """The capture of OpenAI's ``logprobs`` / ``top_logprobs``: None (no logprobs), 0 (the sampled token's raw
    logprob) or k > 0 (also the k most likely alternatives)."""
    from verl.workers.rollout.logit_capture import CaptureSpec

    if k is None:
        return None
    return CaptureSpec(mode="topk", k=int(k), raw=True) if k > 0 else CaptureSpec(mode="logprob", raw=True)


@dataclass(frozen=True)
class GenerationJob:
    """One OpenAI choice: the engine's sampling parameters plus the stop strings matched on the decoded text."""

    params: SamplingParams
    stop: tuple[str, ...] = ()

    @property
    def logprobs(self) -> int | None:
        """How many alternatives per token were asked for (None: no logprobs)."""
        capture = self.params.capture
        if capture is None:
            return None
        return capture.k if capture.mode == "topk" else 0


@dataclass
class TokenStep:
    """One generated token as streamed by ``generate_stream``."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    """``(token_id, logprob)`` best first, when the job asked for them."""


@dataclass
class GenerationResult:
    """Everything one generation produced."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: str = "length"
    """``"stop"`` (EOS or a stop string) or ``"length"`` (``max_tokens`` reached)."""
    prompt_tokens: int = 0


class _Request:
    """A request in flight: its inputs and the asyncio queue the engine thread feeds."""

    def __init__(self, prompt_ids: list[int], job: GenerationJob, loop: asyncio.AbstractEventLoop):
        self.prompt_ids = list(prompt_ids)
        self.job = job
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.generated: list[int] = []

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class EngineBackend:
    """A ``SteppableEngine`` served to concurrent async callers from one engine thread.

    Args:
        engine: the engine (it must have a ``tokenizer`` for stop strings and the server's text).
        model_name: the name the server reports.
        max_batch_size: requests admitted into the engine at once (the rest wait in the inbox).
        max_wait_ms: how long a request arriving at an idle engine waits for others to join it.
        seed: seeds the stream of per-request seeds (``seed_requests``).
        seed_requests: give every request without a seed its own (hf: per-request generators).
    """

    def __init__(
        self,
        engine: SteppableEngine,
        model_name: str,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        seed: int = 0,
        seed_requests: bool = False,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.max_model_len = int(engine.max_model_len)
        self.eos_ids = tuple(engine.eos_token_ids)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._seeds = itertools.count(seed * 1_000_003) if seed_requests else None
        self._ids = itertools.count()
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self._own_batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._serve_forever, name=type(engine).__name__, daemon=True)
        self._thread.start()

    @property
    def batch_sizes(self) -> list[int]:
        """Rows decoded together: one entry per engine batch (hf) or per engine step with >1 row (vLLM)."""
        own = getattr(self.engine, "batch_sizes", None)
        return own if own is not None else self._own_batch_sizes

    def check_prompt(self, prompt_ids: list[int], job: GenerationJob) -> None:
        """Raise ``ValueError`` (with the numbers) when the prompt plus ``max_tokens`` exceeds ``max_model_len``."""
        max_tokens = job.params.max_tokens
        if len(prompt_ids) + max_tokens > self.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the prompt, {max_tokens} "
                "for the completion). Please reduce the length of the prompt or max_tokens."
            )
        if job.params.capture is not None:
            self.engine.check_capture(job.params.capture)

    async def generate_stream(self, prompt_ids: list[int], job: GenerationJob) -> AsyncIterator[TokenStep | str]:
        """Yield each ``TokenStep`` as it is generated, then the finish reason (a str) last."""
        self.check_prompt(prompt_ids, job)
        if self._closed.is_set():
            raise RuntimeError("the generation backend is closed")
        request = _Request(prompt_ids, job, asyncio.get_running_loop())
        self._inbox.put(request)
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, str):
                    return
        finally:
            request.cancelled = True  # a client that went away stops costing compute

    async def generate(self, prompt_ids: list[int], job: GenerationJob) -> GenerationResult:
        """Generate one completion; see ``GenerationResult``."""
        want = job.logprobs is not None
        result = GenerationResult(
            logprobs=[] if want else None, top_logprobs=[] if want else None, prompt_tokens=len(prompt_ids)
        )
        async for step in self.generate_stream(prompt_ids, job):
            if isinstance(step, str):
                result.finish_reason = step
            else:
                result.token_ids.append(step.token_id)
                if want:
                    result.logprobs.append(step.logprob)
                    result.top_logprobs.append(step.top_logprobs or [])
        return result

    def close(self) -> None:
        """Stop the engine thread (requests in flight finish first), then the engine."""
        self._closed.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.engine.close()

    # ------------------------------------------------------------ engine thread
    def _admit(self, running: dict[str, _Request], request: _Request) -> None:
        params = request.job.params
        if params.seed is None and self._seeds is not None:
            params = params.replace(seed=next(self._seeds))
        rid = f"r{next(self._ids)}"
        try:
            self.engine.add_request(rid, request.prompt_ids, params)
        except Exception as exc:
            request.put(exc)
            return
        request.job = GenerationJob(params, request.job.stop)
        running[rid] = request

    def _take(self, running: dict[str, _Request]) -> None:
        """Admit waiting requests; block only when nothing runs, then wait ``max_wait_ms`` for company."""
        idle = not running
        deadline = None
        while len(running) < self.max_batch_size:
            try:
                if idle and deadline is None:
                    request = self._inbox.get()
                    deadline = time.monotonic() + self.max_wait_s
                elif deadline is not None:
                    request = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    request = self._inbox.get_nowait()
            except queue.Empty:
                return
            if request is None:
                self._closed.set()
                return
            if not request.cancelled:
                self._admit(running, request)

    def _serve_forever(self) -> None:
        running: dict[str, _Request] = {}
        while True:
            if not (self._closed.is_set() and self._inbox.empty()):
                self._take(running)
            cancelled = [rid for rid, r in running.items() if r.cancelled]
            if cancelled:
                self.engine.abort(cancelled)
                for rid in cancelled:
                    running.pop(rid)
            if not running:
                if self._closed.is_set():
                    return
                continue
            if len(running) > 1:
                self._own_batch_sizes.append(len(running))
            try:
                outputs = self.engine.step()
            except Exception as exc:  # answer every waiting request instead of hanging them
                self.engine.abort(list(running))
                for r in running.values():
                    r.put(exc)
                running.clear()
                continue
            for out in outputs:
                request = running.get(out.request_id)
                if request is not None and self._forward(request, out):
                    running.pop(out.request_id)

    def _forward(self, request: _Request, out: StepOutput) -> bool:
        """Send one step's tokens to the request; True when the request is over (finished or stop string hit)."""
        params = request.job.params
        capture = self.engine.build_capture([out.parts], out.token_ids, params) if params.capture else None
        k = request.job.logprobs
        for j, token in enumerate(out.token_ids):
            step = TokenStep(token_id=int(token))
            if capture is not None:
                step.logprob = float(capture.logprobs[j])
                if k:
                    ids, values = capture.topk_ids[j].tolist(), capture.topk_logprobs[j].tolist()
                    step.top_logprobs = [(int(t), float(v)) for t, v in zip(ids, values)]
                else:
                    step.top_logprobs = []
            request.put(step)
            request.generated.append(int(token))
            if self._stop_hit(request):
                if not out.finished:
                    self.engine.abort([out.request_id])
                request.put("stop")
                return True
        if out.finished:
            request.put("length" if out.finish_reason == "length" else "stop")
            return True
        return False

    def _stop_hit(self, request: _Request) -> bool:
        """Whether the decoded completion contains one of the request's stop strings."""
        stops = request.job.stop
        if not stops:
            return False
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        return any(s in text for s in stops)


def _hf_backend(
    model_path: str,
    device: str = "auto",
    dtype: str = "float32",
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    seed: int = 0,
    max_model_len: int | None = None,
) -> EngineBackend:
    """``HFEngine`` on ``model_path`` (``device``: ``auto`` = CUDA when present; ``dtype`` float32/bfloat16/float16)."""
    from verl.workers.rollout.hf_engine import HFEngine

    engine = HFEngine.from_pretrained(
        model_path,
        device,
        dtype,
        trust_remote_code=False,  # the OpenAI server loads plain checkpoints
        max_batch_size=max_batch_size,
        max_model_len=max_model_len,
    )
    return EngineBackend(engine, model_path, max_batch_size, max_wait_ms, seed, seed_requests=True)


def _vllm_backend(
    model_path: str,
    device: str = "auto",
    dtype: str = "float32",
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    seed: int = 0,
    max_model_len: int | None = None,
    engine_kwargs: dict | None = None,
) -> EngineBackend:
    """``VLLMEngine`` on ``model_path`` (``device`` and ``max_wait_ms`` unused: vLLM picks its platform and batches
    continuously; CPU always runs float32; ``max_model_len`` default min(2048, the model's); ``engine_kwargs`` go to
    ``vllm.LLM``)."""
    import torch
    from transformers import AutoConfig

    from verl.workers.rollout.vllm_rollout.vllm_rollout import VLLMEngine

    if max_model_len is None:
        max_model_len = min(2048, int(AutoConfig.from_pretrained(model_path).max_position_embeddings))
    on_cpu = not torch.cuda.is_available()
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": "float32" if on_cpu else dtype,
        "enforce_eager": on_cpu,
        "max_model_len": max_model_len,
        "seed": seed,
        "load_format": "auto",
        "max_num_seqs": max_batch_size,
        "max_num_batched_tokens": max(8192, max_model_len),
        "logprobs_mode": "raw_logprobs",
        "enable_prefix_caching": True,
        **dict(engine_kwargs or {}),
    }
    return EngineBackend(VLLMEngine(kwargs), model_path, max_batch_size, max_wait_ms, seed)


BackendFactory = Callable[..., EngineBackend]
BACKENDS: dict[str, BackendFactory] = {"hf": _hf_backend, "vllm": _vllm_backend}


def make_backend(name: str, model_path: str, **kwargs: Any) -> EngineBackend:
    """The backend registered as ``name`` (``hf`` or ``vllm``) for ``model_path``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; valid: {sorted(BACKENDS)}")
    return BACKENDS[name](model_path, **kwargs)
