"""The agent loop: one coroutine per sample, chosen by the sample's ``agent_name`` (verl's design).

Built in: ``single_turn_agent`` (one generation) and ``tool_agent`` (generate -> parse tool calls -> run the tools
-> append their responses -> generate ..., ``tool_agent_loop``). Users subclass :class:`AgentLoopBase`, implement
``async run(sampling_params, **sample) -> AgentLoopOutput`` and register it with ``@register("my_agent")`` in an
imported module or list it in ``actor_rollout_ref.rollout.agent.agent_loop_config_path``::

    - name: my_agent
      _target_: my_pkg.agents.MyAgentLoop

Every loop generates through :class:`AsyncLLMServerManager`: ``await server_manager.generate(request_id,
prompt_ids=..., sampling_params={...})`` returns the engine's own token ids (and log-probs), so the trajectory the
policy trains on is exactly what it sampled. Concurrent calls from different samples are sent to the engine as one
batch (the engine contract's ``generate_async``), so per-sample coroutines cost no throughput.

A loop's :class:`AgentLoopOutput` gives ``prompt_ids``, ``response_ids`` and ``response_mask`` (1 on tokens the
policy generated, 0 on tool / user tokens, which are then never trained on); ``run_agent_loops`` pads the outputs
into the rollout contract (``pack_rollouts``) with ``__num_turns__``, ``tool_call_counts``, ``tool_error_counts`` and
the per-sample generation / tool seconds behind ``timing_s/agent_loop/*``.
"""

from __future__ import annotations

import asyncio
import importlib
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from verl.workers.rollout.engine import InferenceEngine, SamplingParams

__all__ = [
    "AgentLoopBase",
    "AgentLoopMetrics",
    "AgentLoopOutput",
    "AsyncLLMServerManager",
    "TokenOutput",
    "get_agent_loop_class",
    "register",
    "run_agent_loops",
]

_agent_loop_registry: dict[str, dict[str, str]] = {}
_CALL_STRIDE = 1_000_003  # > any batch size: the seeds of a sample's later turns never collide with other rows'


def register(agent_name: str):
    """Class decorator: make an ``AgentLoopBase`` subclass selectable by ``agent_name``."""

    def decorator(cls: type[AgentLoopBase]) -> type[AgentLoopBase]:
        _agent_loop_registry[agent_name] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
        return cls

    return decorator


def _import_target(target: str) -> type:
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ImportError(f"agent loop _target_ {target!r} cannot be imported: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, AgentLoopBase)):
        raise TypeError(f"agent loop _target_ {target!r} is not a subclass of AgentLoopBase")
    return cls


def load_agent_loop_config(path: str | None) -> None:
    """Add the entries of ``rollout.agent.agent_loop_config_path`` (a YAML list of ``{name, _target_}``)."""
    if not path:
        return
    from omegaconf import OmegaConf

    entries = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    where = f"agent loop config {path!r} (actor_rollout_ref.rollout.agent.agent_loop_config_path)"
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list of {{name, _target_}} entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("_target_"):
            raise ValueError(f"{where}: entry {i} needs 'name' and '_target_'")
        cls = _import_target(entry["_target_"])  # fail now, naming the file, not at the first rollout
        check = getattr(cls, "check_entry", None)
        if check is not None:
            try:
                check(entry)
            except (ValueError, ImportError, OSError, AttributeError) as err:
                raise ValueError(f"{where}: entry {i}: {err}") from err
        _agent_loop_registry[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}


def agent_loop_kwargs(agent_name: str) -> dict[str, Any]:
    """The extra keys of ``agent_name``'s YAML entry (besides ``_target_``): constructor arguments of the loop."""
    return {k: v for k, v in _agent_loop_registry.get(agent_name, {}).items() if k != "_target_"}


def get_agent_loop_class(agent_name: str) -> type[AgentLoopBase]:
    if agent_name not in _agent_loop_registry:
        raise ValueError(
            f"unknown agent_name {agent_name!r}; registered agent loops: {sorted(_agent_loop_registry)} (register "
            "one with @register or actor_rollout_ref.rollout.agent.agent_loop_config_path)"
        )
    return _import_target(_agent_loop_registry[agent_name]["_target_"])


class AgentLoopMetrics(BaseModel):
    """Seconds one sample spent generating and running tools."""

    generate_sequences: float = 0.0
    tool_calls: float = 0.0
    num_preempted: int = -1


class AgentLoopOutput(BaseModel):
    """One sample's trajectory (module docstring). ``extra_fields`` may carry ``generation_logits`` (one
    ``TokenCapture`` per assistant turn), ``tool_call_count``, ``tool_error_count`` and ``reward_scores``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float] | None = None
    multi_modal_data: dict[str, Any] | None = None
    reward_score: float | None = None
    num_turns: int = 0
    metrics: AgentLoopMetrics = Field(default_factory=AgentLoopMetrics)
    extra_fields: dict[str, Any] = Field(default_factory=dict)


@dataclass
class TokenOutput:
    """What the engine generated for one call: ids, their log-probs (when the rollout captures them), why it
    stopped (``stop``, ``length``, ``abort``), and the full capture (``TokenCapture`` or None)."""

    token_ids: list[int]
    log_probs: list[float] | None
    stop_reason: str
    capture: Any = None


class AsyncLLMServerManager:
    """``generate`` for agent loops over one :class:`InferenceEngine`, batching concurrent calls.

    Args:
        engine: the rollout engine.
        base_params: the turn's ``SamplingParams`` (config sampling, stop ids, capture); per-call
            ``sampling_params`` override ``temperature``, ``top_p``, ``top_k``, ``max_tokens``, ``seed``,
            ``stop_token_ids`` and ``capture`` (a ``CaptureSpec``; other keys, e.g. verl's ``logprobs``, are accepted and ignored: log-probs follow the
            rollout's capture).
        rows: request id -> batch row, for the per-call seeds (``seed + call * 1_000_003 + row``).
    """

    _OVERRIDES = ("temperature", "top_p", "top_k", "max_tokens", "seed", "stop_token_ids", "capture")

    def __init__(self, engine: InferenceEngine, base_params: SamplingParams, rows: dict[str, int] | None = None):
        self.engine = engine
        self.base_params = base_params
        self.rows = rows or {}
        self._calls: dict[str, int] = defaultdict(int)
        self._pending: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.engine_calls = 0

    def params_for(self, request_id: str, sampling_params: dict[str, Any] | None) -> SamplingParams:
        changes = {k: v for k, v in (sampling_params or {}).items() if k in self._OVERRIDES and v is not None}
        params = self.base_params.replace(**changes)
        call = self._calls[request_id]
        self._calls[request_id] += 1
        if params.seed is not None and "seed" not in changes:
            params = params.replace(seed=params.seed + call * _CALL_STRIDE + self.rows.get(request_id, 0))
        return params

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any] | None = None, **unused: Any
    ) -> TokenOutput:
        params = self.params_for(request_id, sampling_params)
        self.engine.check_request(prompt_ids, params, where=f"agent request {request_id}")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((list(prompt_ids), params, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush())
        out = await future
        log_probs = None if out.capture is None else [float(x) for x in out.capture.logprobs.tolist()]
        return TokenOutput(list(out.token_ids), log_probs, out.finish_reason, out.capture)

    async def _flush(self) -> None:
        async with self._lock:
            for _ in range(4):  # let the other samples' coroutines reach their generate call first
                await asyncio.sleep(0)
            while self._pending:
                batch, self._pending = self._pending, []
                self.engine_calls += 1
                try:
                    outputs = await self.engine.generate_async([b[0] for b in batch], [b[1] for b in batch])
                except Exception as err:  # every waiting sample sees the engine's error
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, _, future), out in zip(batch, outputs, strict=True):
                    if not future.done():
                        future.set_result(out)
                for _ in range(4):
                    await asyncio.sleep(0)


class AgentLoopBase(ABC):
    """One sample's rollout (module docstring).

    Args:
        trainer_config: the worker's ``actor_rollout_ref`` config (typed; ``.rollout`` holds the rollout keys).
        server_manager: :class:`AsyncLLMServerManager`.
        tokenizer: the policy's tokenizer.
        processor: multimodal processor (None: text only).
        kwargs: ``tools`` (name -> ``BaseTool``), ``session_server`` (for loops that serve the policy over HTTP),
            the extra keys of the loop's agent-loop YAML entry, and what subclasses take.
    """

    def __init__(
        self,
        trainer_config: Any,
        server_manager: AsyncLLMServerManager,
        tokenizer: Any,
        processor: Any = None,
        **kwargs: Any,
    ):
        self.config = trainer_config
        self.server_manager = server_manager
        self.tokenizer = tokenizer
        self.processor = processor
        self.kwargs = kwargs

    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None, **kwargs: Any) -> list[int]:
        """The prompt ids of ``messages`` with the generation prompt (and the tool schemas, for templates that
        render them)."""
        extra = {"tools": tools} if tools else {}
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @abstractmethod
    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Roll out one sample; ``kwargs`` are its non-tensor fields (``raw_prompt``, ``raw_prompt_ids``,
        ``tools_kwargs``, ``extra_info``, ``index``, ``agent_name``, ...) plus ``request_id``."""


def _sample_fields(prompts: Any, i: int) -> dict[str, Any]:
    fields = {key: values[i] for key, values in prompts.non_tensor_batch.items()}
    if "raw_prompt_ids" not in fields or fields["raw_prompt_ids"] is None:
        ids, mask = prompts.batch["input_ids"][i], prompts.batch["attention_mask"][i]
        fields["raw_prompt_ids"] = ids[mask.bool()].tolist()
    return fields


def run_agent_loops(
    prompts: Any,
    engine: InferenceEngine,
    tokenizer: Any,
    trainer_config: Any,
    base_params: SamplingParams,
    default_agent: str,
    capture_spec: Any = None,
    **loop_kwargs: Any,
) -> Any:
    """Run every row of ``prompts`` through its agent loop concurrently; returns the rollout ``DataProto``.

    ``default_agent`` serves rows without an ``agent_name``; ``loop_kwargs`` (``tools``) and the
    loop's own entry of the agent-loop YAML reach every loop's constructor. ``trainer_config.rollout.response_length`` bounds the responses, the prompt
    tensor's width the prompts.
    """
    from verl.protocol import DataProto
    from verl.workers.rollout.multiturn import pack_rollouts

    n = len(prompts)
    names = prompts.non_tensor_batch.get("agent_name")
    agent_names = [str(names[i]) if names is not None and names[i] else default_agent for i in range(n)]
    classes = {name: get_agent_loop_class(name) for name in set(agent_names)}
    request_ids = [f"row{i}" for i in range(n)]
    manager = AsyncLLMServerManager(engine, base_params, {rid: i for i, rid in enumerate(request_ids)})
    sampling = {"temperature": base_params.temperature, "top_p": base_params.top_p, "top_k": base_params.top_k}

    async def run_all() -> list[AgentLoopOutput]:
        session_server = None
        serving = [cls for cls in classes.values() if getattr(cls, "needs_session_server", False)]
        if serving:  # one per-sample OpenAI endpoint for every loop that wants one (openai_agent_loop)
            session_server = serving[0].create_session_server(manager, tokenizer, trainer_config)
            await session_server.start()
        try:
            loops = {
                name: cls(
                    trainer_config,
                    manager,
                    tokenizer,
                    None,
                    session_server=session_server,
                    **loop_kwargs,
                    **agent_loop_kwargs(name),
                )
                for name, cls in classes.items()
            }
            tasks = [
                loops[agent_names[i]].run(dict(sampling), request_id=request_ids[i], **_sample_fields(prompts, i))
                for i in range(n)
            ]
            return list(await asyncio.gather(*tasks))
        finally:
            if session_server is not None:
                await session_server.stop()

    outputs = asyncio.run(run_all())
    response_length = int(trainer_config.rollout.response_length)
    tensors, generation_logits = pack_rollouts(
        [o.prompt_ids for o in outputs],
        [o.response_ids[:response_length] for o in outputs],
        [o.response_mask[:response_length] for o in outputs],
        prompts.batch["input_ids"].shape[1],
        response_length,
        int(prompts.meta_info.get("pad_token_id", tokenizer.pad_token_id)),
        names=[f"sample {rid} ({agent_names[i]})" for i, rid in enumerate(request_ids)],
        captures=[o.extra_fields.get("generation_logits") for o in outputs],
        capture_spec=capture_spec,
        response_logprobs=[
            None if o.response_logprobs is None else o.response_logprobs[:response_length] for o in outputs
        ],
    )

    def column(values: list[Any], dtype: Any = object) -> np.ndarray:
        arr = np.empty(n, dtype=dtype) if dtype is object else np.asarray(values, dtype=dtype)
        if dtype is object:
            arr[:] = values
        return arr

    non_tensors = {
        "__num_turns__": column([o.num_turns for o in outputs], np.int32),
        "tool_call_counts": column([int(o.extra_fields.get("tool_call_count", 0)) for o in outputs], np.int32),
        "tool_error_counts": column([int(o.extra_fields.get("tool_error_count", 0)) for o in outputs], np.int32),
        "__agent_generate_s__": column([o.metrics.generate_sequences for o in outputs], np.float64),
        "__agent_tool_s__": column([o.metrics.tool_calls for o in outputs], np.float64),
        "reward_scores": column([dict(o.extra_fields.get("reward_scores", {})) for o in outputs]),
        "generation_logits": generation_logits,
    }
    if any(o.reward_score is not None for o in outputs):
        non_tensors["agent_reward_score"] = column([o.reward_score for o in outputs])
    out = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    out.meta_info["agent_engine_calls"] = manager.engine_calls
    return out
