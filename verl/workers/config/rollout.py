"""Typed views of ``actor_rollout_ref.rollout``: the generation engine, sampling, multi-turn and logit capture.

``name`` picks the engine (hf, vllm, sglang, sglang_with_logit, spd) and ``mode`` sync or async; the registry in
``verl.workers.rollout.base`` maps the pair to a class. ``logit_capture`` is this project's addition (DESIGN.md
section 5): what the engine hands back per generated token besides the token itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.workers.config.actor import check_micro_batch_exclusive

__all__ = [
    "LOGIT_CAPTURE_MODES",
    "AgentLoopConfig",
    "LogitCaptureConfig",
    "MultiTurnConfig",
    "RolloutConfig",
    "SamplingConfig",
    "TraceConfig",
]

LOGIT_CAPTURE_MODES = ("logprob", "topk", "full", "token_ids")
_P = "actor_rollout_ref.rollout"


@dataclass
class SamplingConfig(BaseConfig):
    """Sampling parameters (``rollout.val_kwargs``: used for validation generations)."""

    temperature: float = 0.0
    """Softmax temperature; 0 is greedy."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 keeps all."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    do_sample: bool = False
    """Sample (true) or decode greedily (false)."""
    n: int = 1
    """Responses per prompt."""

    def __post_init__(self) -> None:
        check_sampling(f"{_P}.val_kwargs", self.temperature, self.top_p, self.n)
        if self.n > 1 and (self.temperature == 0 or not self.do_sample):
            raise ValueError(
                f"{_P}.val_kwargs.n={self.n} with temperature={self.temperature} and do_sample={self.do_sample} "
                f"produces {self.n} identical greedy answers; set {_P}.val_kwargs.do_sample=True and a temperature "
                f"> 0, or val_kwargs.n=1"
            )


def check_sampling(prefix: str, temperature: float, top_p: float, n: int) -> None:
    """Shared checks of temperature, top_p and n."""
    if temperature < 0:
        raise ValueError(f"{prefix}.temperature={temperature} must be >= 0 (0 means greedy)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"{prefix}.top_p={top_p} must lie in (0, 1]")
    if n < 1:
        raise ValueError(f"{prefix}.n={n} must be >= 1 (responses per prompt)")


@dataclass
class MultiTurnConfig(BaseConfig):
    """``rollout.multi_turn``: tool calls and interactions between assistant turns."""

    enable: bool = False
    """Run the multi-turn loop (tools / interactions)."""
    max_assistant_turns: int | None = None
    """Stop after this many assistant turns; null means until the response budget runs out."""
    max_user_turns: int | None = None
    """Stop after this many user (interaction) turns."""
    tool_config_path: str | None = None
    """YAML listing the tools."""
    interaction_config_path: str | None = None
    """YAML listing the interactions (user simulators)."""
    max_parallel_calls: int = 1
    """Tool calls executed per assistant turn."""
    max_tool_response_length: int = 256
    """Characters kept from a tool response."""
    tool_response_truncate_side: str = "middle"
    """Where long tool responses are cut: left, right or middle."""
    use_inference_chat_template: bool = False
    """Render with the inference chat template (may drop reasoning) instead of the training one."""
    tokenization_sanity_check_mode: str = "strict"
    """Check incremental tokenization against a full re-tokenization: strict, ignore_strippable or disable."""
    format: str = "hermes"
    """Tool-call format of the chat template."""
    num_repeat_rollouts: int | None = None
    """Repeat each multi-turn rollout this many times (interaction-driven sampling)."""

    def __post_init__(self) -> None:
        p = f"{_P}.multi_turn"
        check_choice(f"{p}.tool_response_truncate_side", self.tool_response_truncate_side, ("left", "right", "middle"))
        check_choice(
            f"{p}.tokenization_sanity_check_mode",
            self.tokenization_sanity_check_mode,
            ("strict", "ignore_strippable", "disable"),
        )
        if self.max_parallel_calls < 1:
            raise ValueError(f"{p}.max_parallel_calls={self.max_parallel_calls} must be >= 1")


@dataclass
class AgentLoopConfig(BaseConfig):
    """``rollout.agent``: the async agent-loop workers."""

    num_workers: int = 8
    """Agent-loop worker actors."""
    default_agent_loop: str = "single_turn_agent"
    """Agent loop used when a sample names none (single_turn_agent, tool_agent, ...)."""
    agent_loop_config_path: str | None = None
    """YAML registering custom agent loops."""
    custom_async_server: dict[str, Any] = field(default_factory=lambda: {"path": None, "name": None})
    """Custom async server class: file path and class name."""


@dataclass
class TraceConfig(BaseConfig):
    """``rollout.trace``: tracing of rollouts to an observability backend."""

    backend: str | None = None
    """weave, mlflow or null (off)."""
    token2text: bool = False
    """Decode token ids in the traces."""


@dataclass
class LogitCaptureConfig(BaseConfig):
    """``rollout.logit_capture``: what the engine returns per generated token (DESIGN.md section 5)."""

    enable: bool = False
    """Capture and carry the values into DataProto, interactions and rewards."""
    mode: str = "logprob"
    """logprob: sampled token's logprob; topk: k best logprobs + ids; full: all logits; token_ids: logprobs of ids."""
    k: int = 20
    """Number of alternatives kept in topk mode."""
    ids: list[int] = field(default_factory=list)
    """Token ids whose logprobs are kept in token_ids mode (e.g. the label tokens)."""
    max_bytes: int = 1073741824
    """full mode refuses to run when one batch's captured logits would exceed this many bytes."""
    dtype: str = "float32"
    """Storage dtype of captured values: float32, float16 or bfloat16."""
    raw: bool = False
    """false: values after temperature / top-p processing (what was sampled from); true: the model's raw logits."""

    def __post_init__(self) -> None:
        p = f"{_P}.logit_capture"
        check_choice(f"{p}.mode", self.mode, LOGIT_CAPTURE_MODES)
        check_choice(f"{p}.dtype", self.dtype, ("float32", "float16", "bfloat16"))
        if self.k < 1:
            raise ValueError(f"{p}.k={self.k} must be >= 1 (alternatives kept per token in topk mode)")
        if self.max_bytes <= 0:
            raise ValueError(f"{p}.max_bytes={self.max_bytes} must be > 0")
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.ids):
            raise ValueError(f"{p}.ids={list(self.ids)} must be non-negative integer token ids")
        if self.enable and self.mode == "token_ids" and not self.ids:
            raise ValueError(f"{p}.mode=token_ids needs token ids; set {p}.ids='[id1,id2]'")

    @property
    def values_per_token(self) -> int | None:
        """Captured values per generated token, or None for full mode (one per vocabulary entry)."""
        return {"logprob": 1, "topk": self.k, "token_ids": len(self.ids), "full": None}[self.mode]


@dataclass
class RolloutConfig(BaseConfig):
    """``actor_rollout_ref.rollout``: the generation engine and its sampling settings."""

    _mutable_fields = BaseConfig._mutable_fields | {"log_prob_micro_batch_size", "log_prob_micro_batch_size_per_gpu"}

    name: str = "hf"
    """Engine: hf, vllm, sglang, sglang_with_logit or spd (mandatory in the YAML)."""
    mode: str = "sync"
    """sync: the worker generates the batch in one call; async: request-level servers and agent loops."""
    temperature: float = 1.0
    """Training-time sampling temperature."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 keeps all."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false)."""
    n: int = 1
    """Responses per prompt (the GRPO group size)."""
    prompt_length: int = 512
    """Maximum prompt tokens (follows data.max_prompt_length)."""
    response_length: int = 512
    """Maximum generated tokens (follows data.max_response_length)."""
    dtype: str = "bfloat16"
    """Engine compute dtype."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory the engine may take (weights + KV cache)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarking)."""
    enforce_eager: bool = False
    """Disable CUDA graphs."""
    cudagraph_capture_sizes: list[int] | None = None
    """Batch sizes captured as CUDA graphs."""
    free_cache_engine: bool = True
    """Release the KV cache between rollouts (hybrid engine)."""
    tensor_model_parallel_size: int = 2
    """Tensor-parallel ranks of one engine replica."""
    data_parallel_size: int = 1
    """Data-parallel ranks inside one replica."""
    expert_parallel_size: int = 1
    """Expert-parallel ranks (MoE)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline stages of one replica."""
    max_num_batched_tokens: int = 8192
    """Tokens per engine scheduling step."""
    max_model_len: int | None = None
    """Context length of the engine; null uses prompt_length + response_length."""
    max_num_seqs: int = 1024
    """Concurrent sequences per engine."""
    enable_chunked_prefill: bool = True
    """Split long prefills into chunks."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prefixes."""
    load_format: str = "dummy"
    """How the engine gets its first weights (dummy: random, then synced from the actor)."""
    layered_summon: bool = False
    """Gather FSDP weights layer by layer when syncing to the engine."""
    log_prob_micro_batch_size: int | None = None
    """Deprecated global micro batch of log-prob recomputation."""
    log_prob_micro_batch_size_per_gpu: int | None = None
    """Sequences per rank in one log-prob forward (old_log_prob)."""
    log_prob_use_dynamic_bsz: bool = False
    """Pack log-prob micro batches by token count."""
    log_prob_max_token_len_per_gpu: int = 16384
    """Token budget of a log-prob micro batch with dynamic bsz."""
    disable_log_stats: bool = True
    """Silence the engine's periodic statistics."""
    over_sample_rate: float = 0.0
    """Fraction of extra requests sent so slow ones can be aborted."""
    multi_stage_wake_up: bool = False
    """Wake weights and KV cache in separate stages to lower peak memory."""
    calculate_log_probs: bool = False
    """Return the engine's logprobs of the sampled tokens as rollout_log_probs."""
    logprobs_mode: str = "processed_logprobs"
    """vLLM: raw_logprobs or processed_logprobs (after temperature / top-p)."""
    scheduling_policy: str = "fcfs"
    """Engine request scheduling: fcfs or priority."""
    skip_tokenizer_init: bool = True
    """Engine works on token ids only."""
    quantization: str | None = None
    """Engine weight quantization (e.g. fp8)."""
    enable_rollout_routing_replay: bool = False
    """MoE: record expert routing for replay in training."""
    nnodes: int = 0
    """Standalone mode: nodes of the rollout pool (0: share the trainer's)."""
    n_gpus_per_node: int = 8
    """Standalone mode: devices per node of the rollout pool."""
    update_weights_bucket_megabytes: int = 512
    """Size of each weight-sync bucket."""
    checkpoint_engine: dict[str, Any] = field(default_factory=dict)
    """Weight-sync backend settings (backend, update_weights_bucket_megabytes, engine_kwargs)."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Engine-specific keyword arguments, per engine (vllm, sglang, trtllm)."""
    val_kwargs: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling for validation."""
    multi_turn: MultiTurnConfig = field(default_factory=MultiTurnConfig)
    """Multi-turn / tool settings."""
    agent: AgentLoopConfig = field(default_factory=AgentLoopConfig)
    """Agent-loop settings (async mode)."""
    trace: TraceConfig = field(default_factory=TraceConfig)
    """Rollout tracing."""
    logit_capture: LogitCaptureConfig = field(default_factory=LogitCaptureConfig)
    """Per-token logit capture (this project's addition)."""
    skip_rollout: bool = False
    """Replay dumped rollouts from skip_dump_dir instead of generating (debugging)."""
    skip_dump_dir: str = "/tmp/rollout_dump"
    """Where skip_rollout dumps and reads generations."""
    prometheus: dict[str, Any] = field(default_factory=dict)
    """Prometheus metrics export of the engine servers."""
    profiler: dict[str, Any] = field(default_factory=dict)
    """Per-role profiler settings."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"{_P}.name is empty; set {_P}.name=hf (CPU), vllm or sglang")
        check_choice(f"{_P}.mode", self.mode, ("sync", "async"))
        check_sampling(_P, self.temperature, self.top_p, self.n)
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"{_P}.temperature=0 with {_P}.n={self.n} generates {self.n} identical greedy responses per prompt "
                f"(zero advantage for GRPO); set {_P}.temperature > 0 or {_P}.n=1"
            )
        for key in ("prompt_length", "response_length", "tensor_model_parallel_size"):
            if getattr(self, key) is None or getattr(self, key) < 1:
                raise ValueError(f"{_P}.{key}={getattr(self, key)} must be set to an integer >= 1")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"{_P}.gpu_memory_utilization={self.gpu_memory_utilization} must lie in (0, 1]")
        check_choice(
            f"{_P}.logprobs_mode",
            self.logprobs_mode,
            ("raw_logprobs", "processed_logprobs", "raw_logits", "processed_logits"),
        )
        if not self.log_prob_use_dynamic_bsz:
            check_micro_batch_exclusive(
                _P, self.log_prob_micro_batch_size, self.log_prob_micro_batch_size_per_gpu, "log_prob_micro_batch_size"
            )
