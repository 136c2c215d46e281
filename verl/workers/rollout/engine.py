"""The one engine contract under every generation path: rollouts, multi-turn, the OpenAI server, SPD.

An engine turns token ids into token ids. Each backend (hf, vLLM, SGLang) implements :class:`InferenceEngine` once and
only translates; everything above it is shared:

* single-turn rollouts: ``EngineRollout.generate_sequences`` (``verl.workers.rollout.base``) maps a ``DataProto`` to
  one request per row and back (``engine_io``);
* multi-turn rollouts: ``verl.workers.rollout.multiturn`` sends each round's unfinished dialogues as one batch;
* the OpenAI-compatible server (``generation_backend``) streams tokens from a :class:`SteppableEngine`;
* the SPD target model is any such server; the SPD scorer's drafts come from the hf engine.

What an engine offers:

==========================  ===========================================================================================
``generate(prompts, params)``  one :class:`GenerationOutput` per prompt (sync; ``generate_async`` for event loops)
``update_weights(w, bytes)``   load HF-named ``(name, tensor)`` pairs, ``bytes`` per engine call (bucketed)
``sleep()`` / ``wake_up()``    release / re-acquire weights and KV cache around training (verl's hybrid engine)
``abort_all()``                stop the running ``generate``; rows keep what they generated (``finish_reason="abort"``)
``check_capture(spec)``        refuse, before generating, a logit capture the engine was not started for
==========================  ===========================================================================================

:class:`SteppableEngine` adds ``add_request`` / ``step`` / ``abort`` (hf and vLLM): ``generate`` is written once on top
of them, and the server drives them for continuous batching and streaming.

:class:`SamplingParams` is the one runtime sampling type; the rollout config (``RolloutConfig`` with ``val_kwargs``)
and the OpenAI request are translated into it once (``engine_io.rollout_sampling``, the server's handler), and each
engine translates it once into its own request.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl.workers.rollout.logit_capture import CaptureSpec, TokenCapture

__all__ = [
    "FINISH_REASONS",
    "GenerationOutput",
    "InferenceEngine",
    "SamplingParams",
    "SteppableEngine",
    "StepOutput",
]

FINISH_REASONS = ("stop", "length", "abort")


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request: the one runtime sampling type of every engine.

    ``temperature <= 0`` is greedy. ``top_k <= 0`` keeps every token, ``top_p = 1`` too. ``seed`` gives the request
    its own random stream (the same seed gives the same tokens whatever else is in the batch); None draws from the
    engine's stream. Generation stops after ``max_tokens`` tokens or at any of ``stop_token_ids`` (kept as the last
    token) unless ``ignore_eos``. ``capture`` asks for the logprobs / top-k / token-id logprobs / logits of every
    generated token (``logit_capture``); None asks for nothing.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    capture: CaptureSpec | None = None

    def __post_init__(self) -> None:
        if int(self.max_tokens) < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "max_tokens", int(self.max_tokens))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "top_k", -1 if self.top_k is None or int(self.top_k) <= 0 else int(self.top_k))
        object.__setattr__(self, "seed", None if self.seed is None else int(self.seed))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def distribution(self) -> tuple[float, int, float]:
        """``(temperature, top_k, top_p)`` of the distribution tokens are drawn from; greedy counts as
        ``(1.0, -1, 1.0)`` (what a captured logprob of a greedy token is taken under)."""
        return (1.0, -1, 1.0) if self.greedy else (self.temperature, self.top_k, self.top_p)

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)


@dataclass
class GenerationOutput:
    """What one request produced: the generated ids (ending with the stop token when one ended it), their capture
    (one row per id) when ``SamplingParams.capture`` asked for one, and why generation ended."""

    token_ids: list[int] = field(default_factory=list)
    capture: TokenCapture | None = None
    finish_reason: str = "length"
    """``"stop"`` (a stop token), ``"length"`` (``max_tokens``) or ``"abort"`` (``abort``/``abort_all``)."""


@dataclass
class StepOutput:
    """What one ``SteppableEngine.step`` produced for one request: the new ids and the engine's raw capture data
    for them (``parts``; turned into a ``TokenCapture`` by ``SteppableEngine.build_capture``)."""

    request_id: str
    token_ids: list[int]
    parts: Any = None
    finished: bool = False
    finish_reason: str | None = None


class InferenceEngine(ABC):
    """A token-in/token-out generation engine (module docstring). Subclasses set the four attributes below."""

    vocab_size: int
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    """The model's end-of-sequence id(s): the default stop tokens of a rollout."""
    pad_token_id: int

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[GenerationOutput]:
        """One output per prompt, in order (``params[i]`` for ``prompts[i]``)."""

    async def generate_async(
        self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]
    ) -> list[GenerationOutput]:
        """``generate`` for callers inside an event loop (the multi-turn loop). Engines whose blocking calls run an
        event loop of their own (SGLang) run it on a worker thread."""
        return self.generate(prompts, params)

    def check_request(self, prompt_ids: Sequence[int], params: SamplingParams, where: str = "a request") -> None:
        """Raise ``ValueError`` (with the numbers) when the prompt plus ``max_tokens`` exceeds ``max_model_len``."""
        total = len(prompt_ids) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"{where}: {len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} = {total} exceed the "
                f"engine's max_model_len {self.max_model_len}; raise actor_rollout_ref.rollout.max_model_len (or "
                "prompt_length), or shorten the prompt / response_length"
            )
        if params.capture is not None:
            self.check_capture(params.capture)

    def check_capture(self, spec: CaptureSpec) -> None:
        """Raise ``ValueError`` when this engine cannot serve ``spec`` as started (say what to change)."""
        return None  # nothing to do unless the engine says otherwise

    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> None:
        """Load HF-named ``(name, tensor)`` pairs (DTensors are gathered one bucket at a time)."""
        raise NotImplementedError(f"{type(self).__name__} does not take weight updates")

    def sleep(self) -> None:
        """Release what the engine holds between generations (KV cache, and weights where they are re-synced)."""
        return None  # nothing to do unless the engine says otherwise

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-acquire ``tags`` (``"weights"``, ``"kv_cache"``; None = all) after ``sleep``."""
        return None  # nothing to do unless the engine says otherwise

    def abort_all(self) -> None:
        """Stop the ``generate`` call in flight (safe from another thread); rows keep their tokens so far."""
        return None  # nothing to do unless the engine says otherwise

    def close(self) -> None:
        """Free the engine (threads, processes, device memory)."""
        return None  # nothing to do unless the engine says otherwise


@dataclass
class _Tracked:
    params: SamplingParams
    output: GenerationOutput = field(default_factory=GenerationOutput)
    parts: list[Any] = field(default_factory=list)


class SteppableEngine(InferenceEngine):
    """An engine driven one step at a time: requests join with ``add_request``, each ``step`` generates (at most) one
    more token per running request, ``abort`` drops requests. ``generate`` is this loop, written once."""

    def __init__(self) -> None:
        self._abort = threading.Event()
        self._batch_ids = itertools.count()

    @abstractmethod
    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Queue a request; it runs from a coming ``step``."""

    @abstractmethod
    def step(self) -> list[StepOutput]:
        """Advance the running requests by one token each; report the new tokens and the requests that ended."""

    @abstractmethod
    def abort(self, request_ids: Iterable[str]) -> None:
        """Drop requests (queued or running); they produce no more output."""

    @abstractmethod
    def has_unfinished(self) -> bool:
        """Whether any request is queued or running."""

    def build_capture(self, parts: list[Any], token_ids: list[int], params: SamplingParams) -> TokenCapture | None:
        """The ``TokenCapture`` of ``token_ids`` from the ``StepOutput.parts`` collected for them (in order)."""
        return None

    def abort_all(self) -> None:
        self._abort.set()

    def generate(self, prompts: Sequence[Sequence[int]], params: Sequence[SamplingParams]) -> list[GenerationOutput]:
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} SamplingParams")
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            self.check_request(prompt, p, where=f"request {i}")
        self._abort.clear()
        batch = next(self._batch_ids)
        ids = [f"g{batch}-{i}" for i in range(len(prompts))]
        tracked = {rid: _Tracked(p) for rid, p in zip(ids, params)}
        for rid, prompt, p in zip(ids, prompts, params):
            if p.max_tokens == 0:
                tracked[rid].output.finish_reason = "length"
                continue
            self.add_request(rid, list(prompt), p)
        pending = {rid for rid, p in zip(ids, params) if p.max_tokens > 0}
        while pending:
            if self._abort.is_set():
                self.abort(sorted(pending))
                for rid in pending:
                    tracked[rid].output.finish_reason = "abort"
                break
            for out in self.step():
                state = tracked.get(out.request_id)
                if state is None:
                    continue
                state.output.token_ids.extend(out.token_ids)
                if out.parts is not None:
                    state.parts.append(out.parts)
                if out.finished:
                    state.output.finish_reason = out.finish_reason or "length"
                    pending.discard(out.request_id)
        results = []
        for rid in ids:
            state = tracked[rid]
            if state.params.capture is not None:
                state.output.capture = self.build_capture(state.parts, state.output.token_ids, state.params)
            results.append(state.output)
        return results
