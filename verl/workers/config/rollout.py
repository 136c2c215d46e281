"""Typed views of ``actor_rollout_ref.rollout``: the generation engine, sampling, multi-turn and logit capture.

``name`` picks the engine (hf, vllm, sglang, sglang_with_logit, spd) and ``mode`` sync or async; the registry in
``verl.workers.rollout.base`` maps the pair to a class. ``logit_capture`` is this project's addition (DESIGN.md
section 5): what the engine hands back per generated token besides the token itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.utils.config_keys import Refuse, key
from verl.utils.profiler.config import ProfilerConfig
from verl.workers.config.actor import check_micro_batch_exclusive

__all__ = [
    "LOGIT_CAPTURE_MODES",
    "AgentLoopConfig",
    "CheckpointEngineConfig",
    "CustomAsyncServerConfig",
    "DisaggregationConfig",
    "LogitCaptureConfig",
    "MultiTurnConfig",
    "PrometheusConfig",
    "RolloutConfig",
    "SamplingConfig",
    "TraceConfig",
]

LOGIT_CAPTURE_MODES = ("logprob", "topk", "full", "token_ids")
_P = "actor_rollout_ref.rollout"
_ENGINE = "the hf rollout has no such setting"
_CHECKPOINT_ENGINE = (
    "verl's checkpoint engine moves weights to rollout servers outside the training processes (standalone or "
    "disaggregated rollouts, refused here); the hybrid engine syncs in process, rollout.update_weights_bucket_megabytes "
    "per engine call"
)


def _off(value: Any) -> bool:
    return not value


def _unset(value: Any) -> bool:
    return value is None or value == ""


def _zero(value: Any) -> bool:
    return value in (0, None)


def _one(value: Any) -> bool:
    return value in (1, None)


def _rollout_name(data: dict) -> str:
    return str(((data.get("actor_rollout_ref") or {}).get("rollout") or {}).get("name") or "")


def _sglang_rollout(data: dict) -> bool:
    return _rollout_name(data).startswith("sglang")


def _server_rollout(data: dict) -> bool:
    return _rollout_name(data).startswith(("vllm", "sglang"))


def _one_for_server_engines(what: str, verl: str) -> Refuse:
    return Refuse(
        _one,
        "1 with rollout.name=vllm or sglang",
        f"{what} is not implemented in the hybrid engine (its data parallelism is the training ranks divided by "
        "tensor_model_parallel_size); set 1",
        verl,
        2,
        applies=_server_rollout,
        example_extra=("actor_rollout_ref.rollout.name=vllm",),
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
class SamplingConfig(BaseConfig):
    """Sampling parameters (``rollout.val_kwargs``: used for validation generations)."""

    _path = "actor_rollout_ref.rollout.val_kwargs"

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
        super().__post_init__()
        check_sampling(f"{_P}.val_kwargs", self.temperature, self.top_p, self.n)
        if self.n > 1 and (self.temperature == 0 or not self.do_sample):
            raise ValueError(
                f"{_P}.val_kwargs.n={self.n} with temperature={self.temperature} and do_sample={self.do_sample} "
                f"produces {self.n} identical greedy answers; set {_P}.val_kwargs.do_sample=True and a temperature "
                f"> 0, or val_kwargs.n=1"
            )


@dataclass
class MultiTurnConfig(BaseConfig):
    """``rollout.multi_turn``: interactions (and, in verl, tools) between assistant turns."""

    _path = "actor_rollout_ref.rollout.multi_turn"

    enable: bool = False
    """Run the multi-turn loop (generate -> interaction -> append)."""
    max_assistant_turns: int | None = None
    """Stop after this many assistant turns; null means until the response budget runs out."""
    tool_config_path: str | None = None
    """YAML listing the tools (verl.tools; used by the tool_agent loop, which it makes the default agent)."""
    max_user_turns: int | None = None
    """Stop after this many user (interaction) turns."""
    max_parallel_calls: int = 1
    """Tool calls executed per assistant turn."""
    max_tool_response_length: int = 256
    """Characters kept from a tool response."""
    tool_response_truncate_side: str = key("middle", choices=("left", "right", "middle"))
    """Where long tool responses are cut: left, right or middle."""
    interaction_config_path: str | None = None
    """YAML listing the interactions (user simulators)."""
    use_inference_chat_template: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "multi-turn prompts use the training chat template; set false",
            "renders turns with the inference chat template (may drop reasoning)",
            True,
        ),
    )
    """Render with the inference chat template (may drop reasoning) instead of the training one."""
    tokenization_sanity_check_mode: str = key("strict", choices=("strict", "ignore_strippable", "disable"))
    """Check incremental tokenization against a full re-tokenization: strict, ignore_strippable or disable."""
    format: str = key("hermes", choices=("hermes",))
    """Tool-call format of the chat template."""
    num_repeat_rollouts: int | None = key(
        None,
        refuse=Refuse(
            lambda v: v in (None, 1),
            "null or 1",
            "each prompt is rolled out rollout.n times; use rollout.n for more samples",
            "repeats each multi-turn rollout this many times",
            2,
        ),
    )
    """Repeat each multi-turn rollout this many times (interaction-driven sampling)."""
    function_tool_path: str | None = key(
        None,
        since="0.9",
        refuse=Refuse(
            _unset,
            "null",
            "function tools are not implemented; set null",
            "registers Python functions as tools the model may call",
            "/tools/fns.py",
        ),
    )
    """Python file of function tools (verl v0.9)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_parallel_calls < 1:
            raise ValueError(f"{_P}.multi_turn.max_parallel_calls={self.max_parallel_calls} must be >= 1")


@dataclass
class CustomAsyncServerConfig(BaseConfig):
    """``rollout.agent.custom_async_server``: a user rollout-server class."""

    path: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "custom async rollout servers are not implemented; set null",
            "loads a user rollout-server class for the agent loop",
            "/srv/server.py",
        ),
    )
    """File of the server class."""
    name: str | None = key(None, effect="inert", reason="only used with custom_async_server.path set, which is refused")
    """Class name in that file."""


@dataclass
class AgentLoopConfig(BaseConfig):
    """``rollout.agent``: the async agent-loop workers."""

    _path = "actor_rollout_ref.rollout.agent"

    num_workers: int = key(
        8,
        effect="inert",
        reason="worker processes of verl's agent loop; here the hybrid workers drive their engines themselves (the "
        "same rollouts)",
    )
    """Agent-loop worker actors."""
    default_agent_loop: str = "single_turn_agent"
    """Agent loop used when a sample names none (single_turn_agent, tool_agent, ...)."""
    agent_loop_config_path: str | None = None
    """YAML list of {name, _target_} registering custom agent loops (AgentLoopBase subclasses)."""
    custom_async_server: CustomAsyncServerConfig = key(factory=CustomAsyncServerConfig)
    """Custom async server class: file path and class name."""


@dataclass
class TraceConfig(BaseConfig):
    """``rollout.trace``: tracing of rollouts to an observability backend."""

    _path = "actor_rollout_ref.rollout.trace"

    backend: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "rollout tracing is not implemented; set null",
            "traces rollouts to weave or mlflow",
            "weave",
        ),
    )
    """weave, mlflow or null (off)."""
    token2text: bool = key(False, effect="inert", reason="only used with trace.backend set, which is refused")
    """Decode token ids in the traces."""


@dataclass
class PrometheusConfig(BaseConfig):
    """``rollout.prometheus``: metrics export of the rollout servers."""

    _emit_target = False

    enable: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "the Prometheus exporter of the rollout servers is not implemented; set false",
            "exports rollout-server metrics to Prometheus",
            True,
        ),
    )
    """Export the servers' metrics."""
    port: int = key(9090, effect="inert", reason="only used with prometheus.enable=true, which is refused")
    """Port of the exporter."""
    file: str = key(
        "/tmp/ray/session_latest/metrics/prometheus/prometheus.yml",
        effect="inert",
        reason="only used with prometheus.enable=true, which is refused",
    )
    """Prometheus service-discovery file."""
    served_model_name: str | None = key(
        None,
        follows="actor_rollout_ref.model.path",
        effect="inert",
        reason="only used with prometheus.enable=true, which is refused",
    )
    """Model name in the metrics (follows the model path)."""


@dataclass
class CheckpointEngineConfig(BaseConfig):
    """``rollout.checkpoint_engine`` (verl v0.7): how the actor's weights reach the rollout engine."""

    _path = "actor_rollout_ref.rollout.checkpoint_engine"

    _emit_target = False

    backend: str = key("naive", effect="inert", reason=_CHECKPOINT_ENGINE)
    """naive: bucketed in-process tensors."""
    update_weights_bucket_megabytes: int = key(2048, effect="inert", reason=_CHECKPOINT_ENGINE)
    """Bucket size of the checkpoint engine's transfer."""
    engine_kwargs: dict[str, Any] = key(factory=dict, effect="inert", reason=_CHECKPOINT_ENGINE)
    """Arguments of the transfer backend."""
    custom_backend_module: str | None = key(
        None,
        since="0.9",
        refuse=Refuse(
            _unset,
            "null",
            "custom weight-transfer backends are not implemented; set null",
            "imports a module registering a checkpoint-engine backend",
            "my.backend",
        ),
    )
    """Module registering a custom backend (verl v0.9)."""


@dataclass
class DisaggregationConfig(BaseConfig):
    """``rollout.disaggregation`` (verl v0.9): prefill/decode on separate replicas."""

    _emit_target = False

    enabled: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(
            lambda v: not v,
            "false",
            "prefill/decode disaggregation is not implemented; set false",
            "runs prefill and decode on separate replicas",
            True,
        ),
    )
    """Split prefill and decode (null: false)."""
    prefill_replicas: int | None = key(
        None,
        since="0.9",
        v09_default=1,
        effect="inert",
        reason="only used with disaggregation.enabled=true, which is refused",
    )
    """Prefill replicas."""
    decode_replicas: int | None = key(
        None,
        since="0.9",
        v09_default=1,
        effect="inert",
        reason="only used with disaggregation.enabled=true, which is refused",
    )
    """Decode replicas."""
    decode_tensor_model_parallel_size: int | None = key(
        None, since="0.9", effect="inert", reason="only used with disaggregation.enabled=true, which is refused"
    )
    """TP of the decode replicas."""
    transfer_backend: str | None = key(
        None,
        since="0.9",
        v09_default="nixl",
        effect="inert",
        reason="only used with disaggregation.enabled=true, which is refused",
    )
    """KV transfer backend."""
    bootstrap_port: int | None = key(
        None, since="0.9", effect="inert", reason="only used with disaggregation.enabled=true, which is refused"
    )
    """Bootstrap port of the KV transfer."""
    ib_device: str | None = key(
        None, since="0.9", effect="inert", reason="only used with disaggregation.enabled=true, which is refused"
    )
    """InfiniBand device of the KV transfer."""


@dataclass
class LogitCaptureConfig(BaseConfig):
    """``rollout.logit_capture`` (not a verl key): what the engine returns per generated token (DESIGN.md §5)."""

    _path = "actor_rollout_ref.rollout.logit_capture"

    enable: bool = key(False, ours=True)
    """Capture and carry the values into DataProto, interactions and rewards."""
    mode: str = key("logprob", choices=LOGIT_CAPTURE_MODES, ours=True)
    """logprob (sampled token) | topk (k best + ids) | full (all logits) | token_ids (logprobs of `ids`)."""
    k: int = key(20, ours=True)
    """Number of alternatives kept in topk mode."""
    ids: list[int] = key(factory=list, ours=True)
    """Token ids whose logprobs are kept in token_ids mode (e.g. the label tokens)."""
    max_bytes: int = key(1073741824, ours=True)
    """full mode refuses to run when a batch's captured logits would exceed this many bytes."""
    dtype: str = key("float32", choices=("float32", "float16", "bfloat16"), ours=True)
    """Storage dtype of captured values: float32 | float16 | bfloat16."""
    raw: bool = key(False, ours=True)
    """false: values after temperature / top-p (what was sampled from); true: the model's raw logits."""

    def __post_init__(self) -> None:
        super().__post_init__()
        p = f"{_P}.logit_capture"
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


def _engine(default: Any, what: str, **kwargs: Any) -> Any:
    reason = what if "hf rollout" in what else f"{what}; {_ENGINE}"
    return key(default, effect="engine", reason=reason, **kwargs)


@dataclass
class RolloutConfig(BaseConfig):
    """``actor_rollout_ref.rollout``: the generation engine and its sampling settings."""

    _path = "actor_rollout_ref.rollout"

    _mutable_fields = BaseConfig._mutable_fields | {"log_prob_micro_batch_size", "log_prob_micro_batch_size_per_gpu"}

    name: str = key("hf", mandatory=True)
    """Mandatory: hf (runs on CPU), vllm, sglang, sglang_with_logit or spd."""
    mode: str = key("sync", choices=("sync", "async"))
    """sync: one generate call per batch; async: request-level servers and agent loops."""
    temperature: float = 1.0
    """Training-time sampling temperature."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 keeps all."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    do_sample: bool = True
    """Sample (true) or decode greedily (false)."""
    n: int = 1
    """Responses per prompt: the GRPO group size."""
    prompt_length: int = key(512, follows="data.max_prompt_length")
    """Maximum prompt tokens (follows data.max_prompt_length)."""
    response_length: int = key(512, follows="data.max_response_length")
    """Maximum generated tokens (follows data.max_response_length)."""
    dtype: str = _engine("bfloat16", "engine weight dtype; the hf rollout generates with the actor's own module")
    """Engine compute dtype."""
    gpu_memory_utilization: float = _engine(0.5, "share of GPU memory for the engine's weights and KV cache")
    """Fraction of GPU memory the engine may use for weights and KV cache."""
    ignore_eos: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "the rollouts always stop at EOS; set false",
            "keeps generating past EOS up to response_length",
            True,
        ),
    )
    """Keep generating past EOS (benchmarking)."""
    enforce_eager: bool = _engine(False, "disables CUDA graphs")
    """Disable CUDA graphs."""
    cudagraph_capture_sizes: list[int] | None = _engine(
        None, "batch sizes captured as CUDA graphs (vLLM; SGLang: engine_kwargs.sglang.cuda_graph_bs_decode)"
    )
    """Batch sizes captured as CUDA graphs."""
    free_cache_engine: bool = _engine(True, "frees the KV cache between steps")
    """Release the KV cache between rollouts (hybrid engine)."""
    tensor_model_parallel_size: int = key(
        2,
        effect="implemented",
        refuse=Refuse(
            _one,
            "1 with rollout.name=sglang / sglang_with_logit",
            "the hybrid SGLang engine runs one engine per training rank; set 1 (vLLM shards its engines over "
            "consecutive training ranks)",
            "shards each engine replica over tensor_model_parallel_size devices",
            2,
            applies=_sglang_rollout,
            example_extra=("actor_rollout_ref.rollout.name=sglang",),
        ),
    )
    """Tensor-parallel ranks of one engine replica. vLLM: each group of this many consecutive training ranks runs one
    sharded engine (external_launcher; the group generates its ranks' prompts together). The hf rollout has no
    tensor parallelism (every rank generates with the whole model); SGLang: 1."""
    data_parallel_size: int = key(
        1,
        refuse=_one_for_server_engines(
            "engine-internal data parallelism", "vLLM/SGLang data parallel inside a replica"
        ),
    )
    """Data-parallel ranks inside one replica."""
    expert_parallel_size: int = key(
        1, refuse=_one_for_server_engines("expert parallelism", "shards MoE experts over the replica's ranks")
    )
    """Expert-parallel ranks (MoE)."""
    pipeline_model_parallel_size: int = key(
        1, refuse=_one_for_server_engines("pipeline parallelism", "splits the engine's layers into stages")
    )
    """Pipeline stages of one replica."""
    max_num_batched_tokens: int = _engine(8192, "scheduler token budget per iteration")
    """Tokens per engine scheduling step."""
    max_model_len: int | None = _engine(None, "engine context length (KV cache sizing)")
    """null: prompt_length + response_length."""
    max_num_seqs: int | None = _engine(None, "scheduler concurrency", v07_default=1024, v09_default=256)
    """Concurrent sequences per engine (null: 1024 with v0.7 keys, 256 with v0.9 keys)."""
    enable_chunked_prefill: bool = _engine(True, "scheduler option")
    """Split long prefills into chunks."""
    enable_prefix_caching: bool = _engine(True, "KV-cache reuse across requests")
    """Reuse the KV cache of shared prefixes."""
    load_format: str = _engine("dummy", "how the engine loads its first weights before the actor's arrive")
    """dummy: start from random weights, then receive the actor's."""
    layered_summon: bool = key(
        False,
        effect="inert",
        reason="memory only: the sync streams the gathered weights to the engine bucket by bucket "
        "(update_weights_bucket_megabytes); the same weights arrive",
    )
    """Gather FSDP weights layer by layer when syncing to the engine."""
    log_prob_micro_batch_size: int | None = None
    """Deprecated global micro batch of the old_log_prob recomputation."""
    log_prob_micro_batch_size_per_gpu: int | None = None
    """Sequences per rank in one old_log_prob forward (one of the two, unless log_prob_use_dynamic_bsz)."""
    log_prob_use_dynamic_bsz: bool = key(False, follows="actor_rollout_ref.actor.use_dynamic_bsz")
    """Pack log-prob micro batches by token count (follows the actor's use_dynamic_bsz)."""
    log_prob_max_token_len_per_gpu: int = key(16384, follows="actor_rollout_ref.actor.ppo_max_token_len_per_gpu")
    """Token budget of a log-prob micro batch with dynamic bsz (follows the actor's)."""
    disable_log_stats: bool = _engine(True, "engine statistics logging")
    """Silence the engine's periodic statistics."""
    over_sample_rate: float = key(
        0.0,
        refuse=Refuse(
            _zero,
            "0",
            "over-sampling with early abort is not implemented; set 0",
            "launches extra requests and aborts the slowest ones once enough finished",
            0.1,
        ),
    )
    """Fraction of extra requests sent so slow ones can be aborted."""
    multi_stage_wake_up: bool = key(
        False,
        effect="inert",
        reason="the hybrid worker always wakes the engine in stages (weights, sync, then KV cache), verl's multi-stage "
        "order; the same rollouts",
    )
    """Wake weights and KV cache in separate stages to lower peak memory."""
    calculate_log_probs: bool | None = key(None, v07_default=False, v09_default=True)
    """Return the engine's logprob of each sampled token as rollout_log_probs (null: false with v0.7 keys, true
    with v0.9 keys)."""
    logprobs_mode: str = key(
        "processed_logprobs",
        effect="implemented",
        refuse=Refuse(
            lambda v: v in ("processed_logprobs", "raw_logprobs"),
            "processed_logprobs or raw_logprobs",
            "rollout_log_probs are log-probs (processed: after temperature/top-k/top-p; raw: of the raw logits); "
            "for logits use rollout.logit_capture.mode=full",
            "processed_logits / raw_logits put logit values in the logprob field",
            "raw_logits",
        ),
    )
    """raw_logprobs | processed_logprobs (after temperature / top-p)."""
    scheduling_policy: str = _engine(
        "fcfs", "vLLM's request scheduling (fcfs/priority); SGLang keeps its own (engine_kwargs.sglang.schedule_policy)"
    )
    """Engine request scheduling: fcfs or priority."""
    skip_tokenizer_init: bool = _engine(True, "engine tokenizer loading")
    """Engine works on token ids only."""
    quantization: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "quantised rollouts are not implemented; set null",
            "fp8 (or other) quantised weights in the rollout engine",
            "fp8",
        ),
    )
    """Engine weight quantization (e.g. fp8)."""
    enable_rollout_routing_replay: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "MoE routing replay is not implemented; set false",
            "records the rollout's MoE expert routing and replays it in training",
            True,
        ),
    )
    """MoE: record expert routing for replay in training."""
    nnodes: int = key(
        0,
        refuse=Refuse(
            _zero,
            "0",
            "a standalone rollout pool is not implemented; set 0 (the rollout shares the trainer's devices)",
            "> 0 runs the rollout engines on their own nodes",
            1,
        ),
    )
    """Standalone rollout pool; 0 nodes shares the trainer's devices."""
    n_gpus_per_node: int = key(
        8,
        follows="trainer.n_gpus_per_node",
        effect="inert",
        reason="only used with rollout.nnodes > 0 (a standalone rollout pool), which is refused",
    )
    """Devices per node of a standalone rollout pool (follows trainer.n_gpus_per_node)."""
    update_weights_bucket_megabytes: int = _engine(512, "bucket size of the actor-to-engine weight transfer")
    """Size of each weight-sync bucket."""
    checkpoint_engine: CheckpointEngineConfig = key(factory=CheckpointEngineConfig)
    """Weight-sync backend settings (verl v0.7)."""
    engine_kwargs: dict[str, Any] = key(
        factory=lambda: {"vllm": {}, "sglang": {}, "trtllm": {}},
        effect="engine",
        reason="constructor arguments of the engine named by rollout.name",
    )
    """Per-engine constructor arguments, e.g. +actor_rollout_ref.rollout.engine_kwargs.vllm.swap_space=4."""
    val_kwargs: SamplingConfig = key(factory=SamplingConfig)
    """Sampling used for validation (greedy by default)."""
    multi_turn: MultiTurnConfig = key(factory=MultiTurnConfig)
    """Multi-turn settings."""
    agent: AgentLoopConfig = key(factory=AgentLoopConfig)
    """Agent-loop settings (async mode)."""
    trace: TraceConfig = key(factory=TraceConfig)
    """Rollout tracing."""
    logit_capture: LogitCaptureConfig = key(factory=LogitCaptureConfig, ours=True)
    """Per-token logit capture carried into DataProto, interactions and rewards (DESIGN.md section 5)."""
    skip_rollout: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "replaying dumped generations is not implemented; set false (trainer.rollout_data_dir dumps them)",
            "loads generations from skip_dump_dir instead of generating (debugging)",
            True,
        ),
    )
    """Replay dumped generations instead of generating (debugging)."""
    skip_dump_dir: str = key(
        "/tmp/rollout_dump", effect="inert", reason="only used with rollout.skip_rollout=true, which is refused"
    )
    """Where skip_rollout dumps and reads generations."""
    prometheus: PrometheusConfig = key(factory=PrometheusConfig)
    """Prometheus metrics export of the engine servers."""
    profiler: ProfilerConfig = key(factory=ProfilerConfig)
    """Per-role profiler settings."""
    seed: int | None = key(None, since="0.9")
    """Seed of the engine's sampling; each rank adds its rank (null: actor.fsdp_config.seed, as before v0.9)."""
    full_determinism: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(
            _off,
            "false",
            "deterministic engine kernels are not implemented for the rollout; set false (actor.fsdp_config."
            "full_determinism makes training deterministic)",
            "forces deterministic sampling kernels in the engine",
            True,
        ),
    )
    """Deterministic engine kernels (null: false)."""
    moe_load_balance_metrics_interval: int | None = key(
        None,
        since="0.9",
        v09_default=0,
        refuse=Refuse(_zero, "0", "MoE load-balance metrics are not implemented; set 0", "logs MoE routing balance", 5),
    )
    """Steps between MoE load-balance metrics (null: 0, off)."""
    disaggregation: DisaggregationConfig = key(factory=DisaggregationConfig)
    """Prefill/decode disaggregation (verl v0.9)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name:
            raise ValueError(f"{_P}.name is empty; set {_P}.name=hf (CPU), vllm or sglang")
        check_sampling(_P, self.temperature, self.top_p, self.n)
        if self.temperature == 0 and self.n > 1:
            raise ValueError(
                f"{_P}.temperature=0 with {_P}.n={self.n} generates {self.n} identical greedy responses per prompt "
                f"(zero advantage for GRPO); set {_P}.temperature > 0 or {_P}.n=1"
            )
        for name in ("prompt_length", "response_length", "tensor_model_parallel_size"):
            if getattr(self, name) is None or getattr(self, name) < 1:
                raise ValueError(f"{_P}.{name}={getattr(self, name)} must be set to an integer >= 1")
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
