"""The config audit: what happens to every key of ``ppo_trainer.yaml`` that our code does not simply read.

Rule: a key does what verl's does, or ``main_ppo`` stops before Ray with a ``ValueError`` naming it. A key that is
parsed and then ignored would be a silent lie. Each key the code does not read is in exactly one table here:

* :data:`REFUSED_KEYS`: a feature we do not implement. Its harmless value(s) pass; any other value is refused by
  :func:`check_refused_keys`, the first line of ``verl.utils.config.validate_config``.
* :data:`ENGINE_KEYS`: tuning knobs of the server engines (vLLM, SGLang). The ``hf`` rollout has nothing they could
  tune, so any value is accepted there; the engine rollouts (a later issue) read them.
* :data:`NOT_READ_BY_CODE`: keys with no effect of their own: copied into another key by interpolation or by
  their typed config (a deprecated alias), only meaningful when a refused feature is on, or a speed/memory knob
  whose results verl itself does not change.
* :data:`IMPLEMENTED_ELSEWHERE_PENDING`: keys being implemented elsewhere; an entry goes when its code lands.
* :data:`READ_THROUGH_NODE`: keys with a generic leaf name (``enable``, ``seed``...) that code reads from a node it
  was handed, so the name of the parent never appears next to it; each names the file that reads it.

``tests/utils/test_config_audit.py`` walks the whole composed config and fails on a key that is neither read by
code under ``verl/`` nor listed here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ENGINE_KEYS",
    "IMPLEMENTED_ELSEWHERE_PENDING",
    "NOT_READ_BY_CODE",
    "READ_THROUGH_NODE",
    "REFUSED_KEYS",
    "Refused",
    "audit_entry",
    "check_refused_keys",
    "refused_key_problems",
]


@dataclass(frozen=True)
class Refused:
    """A key whose non-harmless values stop the run.

    Attributes:
        ok: True for a value we handle exactly as verl does.
        allowed: the accepted value(s), in words, for the message and docs/compat.md.
        fix: what the user should do instead.
        verl: what verl does with the key (docs/compat.md's "verl's behaviour" column).
        bad_example: a refused value, used by the tests.
        applies: the refusal only applies when this holds for the whole config (None: always).
        example_extra: further overrides the tests need for ``bad_example`` to be refused.
    """

    ok: Callable[[Any], bool]
    allowed: str
    fix: str
    verl: str
    bad_example: Any
    applies: Callable[[Any], bool] | None = None
    example_extra: tuple[str, ...] = ()


def _falsy(value: Any) -> bool:
    return not value


def _is(*values: Any) -> Callable[[Any], bool]:
    return lambda value: value in values


def _none(value: Any) -> bool:
    return value is None or value == ""


def _kl_type_ok(value: Any) -> bool:
    return not (isinstance(value, str) and value.rstrip("+") == "full")


_PROFILED = ("actor_rollout_ref.actor", "actor_rollout_ref.ref", "actor_rollout_ref.rollout", "critic", "reward_model")
_M = "actor_rollout_ref.model"
_R = "actor_rollout_ref.rollout"


def _build_refused() -> dict[str, Refused]:
    table: dict[str, Refused] = {
        f"{_M}.lora_rank": Refused(
            _is(0, None),
            "0",
            "LoRA is not implemented; train all weights with lora_rank=0",
            "> 0 wraps the actor in PEFT LoRA adapters; the reference is the base model without adapters",
            8,
        ),
        "critic.model.lora_rank": Refused(
            _is(0, None),
            "0",
            "LoRA is not implemented; train the critic's full weights with critic.model.lora_rank=0",
            "> 0 trains LoRA adapters on the critic",
            8,
        ),
        f"{_M}.lora_adapter_path": Refused(
            _none,
            "null",
            "LoRA is not implemented; merge the adapter into the base model and point model.path at the result",
            "loads a pretrained LoRA adapter onto the actor",
            "/adapters/a",
        ),
        "algorithm.kl_penalty": Refused(
            _kl_type_ok,
            "kl, k1, abs, mse, k2, low_var_kl, k3 (optionally with a trailing +)",
            "the full-vocabulary KL is not implemented; use low_var_kl (k3) or kl (k1)",
            "full: KL over the whole vocabulary distribution (needs full logits)",
            "full",
        ),
        "actor_rollout_ref.actor.kl_loss_type": Refused(
            _kl_type_ok,
            "kl, k1, abs, mse, k2, low_var_kl, k3 (optionally with a trailing +)",
            "the full-vocabulary KL is not implemented; use low_var_kl (k3) or kl (k1)",
            "full: KL over the whole vocabulary distribution (needs full logits)",
            "full",
        ),
        f"{_M}.hf_config_path": Refused(
            _none,
            "null",
            "loading config.json from a separate path is not implemented; put the config beside the weights or use "
            "actor_rollout_ref.model.override_config",
            "reads the model's config.json from this path instead of model.path",
            "/configs/model",
        ),
        f"{_M}.use_liger": Refused(
            _falsy,
            "false",
            "Liger kernels are not implemented; set false (the model runs its stock transformers kernels)",
            "patches the model with Liger fused kernels (same maths, less memory)",
            True,
        ),
        f"{_M}.use_fused_kernels": Refused(
            _falsy,
            "false",
            "fused log-prob/entropy kernels are not implemented; set false",
            "computes log-probs and entropy with fused kernels (torch or triton backend)",
            True,
        ),
        "actor_rollout_ref.actor.use_fused_kernels": Refused(
            _falsy,
            "false",
            "fused log-prob/entropy kernels are not implemented; set false",
            "copied from model.use_fused_kernels; selects the fused log-prob path",
            True,
        ),
        "reward_model.model.use_fused_kernels": Refused(
            _falsy,
            "false",
            "fused kernels are not implemented; set false",
            "fused kernels in the reward model",
            True,
        ),
        f"{_M}.enable_activation_offload": Refused(
            _falsy,
            "false",
            "activation offloading is not implemented; set false (gradient checkpointing is supported)",
            "offloads activations to CPU during the backward pass",
            True,
        ),
        "critic.model.enable_activation_offload": Refused(
            _falsy,
            "false",
            "activation offloading is not implemented; set false (gradient checkpointing is supported)",
            "offloads the critic's activations to CPU during the backward pass",
            True,
        ),
        "actor_rollout_ref.actor.freeze_vision_tower": Refused(
            _falsy,
            "false",
            "vision-language models are not supported, so there is no vision tower to freeze; set false",
            "sets requires_grad=False on the VLM's vision tower",
            True,
        ),
        "actor_rollout_ref.actor.shuffle": Refused(
            _falsy,
            "false",
            "mini-batches are contiguous splits of the step's batch, as in verl's legacy actor; set false",
            "accepted, but its legacy FSDP actor splits mini-batches without shuffling as well",
            True,
        ),
        "critic.shuffle": Refused(
            _falsy,
            "false",
            "mini-batches are contiguous splits of the step's batch, as in verl's legacy critic; set false",
            "accepted, but its legacy FSDP critic splits mini-batches without shuffling as well",
            True,
        ),
        "actor_rollout_ref.actor.checkpoint.async_save": Refused(
            _falsy,
            "false",
            "checkpoints are written synchronously; set false",
            "asynchronous checkpoint saving (implemented for Megatron only)",
            True,
        ),
        "critic.checkpoint.async_save": Refused(
            _falsy,
            "false",
            "checkpoints are written synchronously; set false",
            "asynchronous checkpoint saving (implemented for Megatron only)",
            True,
        ),
        f"{_R}.ignore_eos": Refused(
            _falsy,
            "false",
            "the hf rollout always stops at EOS; set false",
            "keeps generating past EOS up to response_length",
            True,
        ),
        f"{_R}.logprobs_mode": Refused(
            _is("processed_logprobs", "raw_logprobs"),
            "processed_logprobs or raw_logprobs",
            "rollout_log_probs are log-probs (processed: after temperature/top-k/top-p; raw: of the raw logits); "
            "for logits use rollout.logit_capture.mode=full",
            "processed_logits / raw_logits put logit values in the logprob field",
            "raw_logits",
        ),
        f"{_R}.quantization": Refused(
            _none,
            "null",
            "quantised rollouts are not implemented; set null",
            "fp8 (or other) quantised weights in the rollout engine",
            "fp8",
        ),
        f"{_R}.enable_rollout_routing_replay": Refused(
            _falsy,
            "false",
            "MoE routing replay is not implemented; set false",
            "records the rollout's MoE expert routing and replays it in training",
            True,
        ),
        f"{_R}.over_sample_rate": Refused(
            _is(0, None),
            "0",
            "over-sampling with early abort is not implemented; set 0",
            "launches extra requests and aborts the slowest ones once enough finished",
            0.1,
        ),
        f"{_R}.skip_rollout": Refused(
            _falsy,
            "false",
            "replaying dumped generations is not implemented; set false (trainer.rollout_data_dir dumps them)",
            "loads generations from skip_dump_dir instead of generating (debugging)",
            True,
        ),
        f"{_R}.agent.agent_loop_config_path": Refused(
            _none,
            "null",
            "custom agent loops are not implemented; set null",
            "registers agent loops from a YAML file",
            "/cfg/agents.yaml",
        ),
        f"{_R}.agent.default_agent_loop": Refused(
            _is("single_turn_agent"),
            "single_turn_agent",
            "only the single-turn loop exists; keep single_turn_agent",
            "the agent loop used for rows without an agent_name column",
            "tool_agent",
        ),
        f"{_R}.trace.backend": Refused(
            _none,
            "null",
            "rollout tracing is not implemented; set null",
            "traces agent-loop rollouts to weave or mlflow",
            "weave",
        ),
        f"{_R}.prometheus.enable": Refused(
            _falsy,
            "false",
            "the Prometheus exporter of the rollout servers is not implemented; set false",
            "exports rollout-server metrics to Prometheus",
            True,
        ),
        "trainer.esi_redundant_time": Refused(
            _is(0, None),
            "0",
            "saving before an expiring allocation (ESI) is not implemented; set 0 and use trainer.save_freq",
            "saves a checkpoint when the cluster allocation is about to expire",
            600,
        ),
        "trainer.default_hdfs_dir": Refused(
            _none,
            "null",
            "copying checkpoints to HDFS is not implemented; set null (checkpoints stay in default_local_dir)",
            "copies each checkpoint to this HDFS directory",
            "hdfs://ckpt",
        ),
        "ray_kwargs.timeline_json_file": Refused(
            _none,
            "null",
            "writing a Ray timeline is not implemented; set null",
            "dumps ray.timeline() to this file at the end of the run",
            "/tmp/timeline.json",
        ),
        "global_profiler.tool": Refused(
            _none,
            "null",
            "the nsys/npu/torch profilers are not wired in; set null (timing_s/* metrics are always logged)",
            "profiles the steps in global_profiler.steps with the named tool",
            "nsys",
        ),
        "transfer_queue.enable": Refused(
            _falsy,
            "false",
            "the TransferQueue trainer is not implemented; set false",
            "moves batches through TransferQueue instead of the driver",
            True,
        ),
        f"{_R}.nnodes": Refused(
            _is(0, None),
            "0",
            "a standalone rollout pool is not implemented; set 0 (the rollout shares the trainer's devices)",
            "> 0 runs the rollout engines on their own nodes",
            1,
        ),
        f"{_R}.agent.custom_async_server.path": Refused(
            _none,
            "null",
            "custom async rollout servers are not implemented; set null",
            "loads a user rollout-server class for the agent loop",
            "/srv/server.py",
        ),
        "reward.reward_model.model_path": Refused(
            _none,
            "null",
            "the 0.7 reward-model layout is not read; set reward_model.model.path instead",
            "path of the model-based reward (0.7 layout)",
            "/models/rm",
        ),
    }
    table[f"{_R}.multi_turn.tool_config_path"] = Refused(
        _none,
        "null",
        "tool calling in multi-turn rollouts is not implemented (interactions are); set null",
        "registers tools the model may call between turns",
        "/cfg/tools.yaml",
    )
    table["data.tool_config_path"] = Refused(
        _none,
        "null",
        "tool calling is not implemented; set null",
        "the dataset's copy of rollout.multi_turn.tool_config_path (tools_kwargs per sample)",
        "/cfg/tools.yaml",
    )
    table[f"{_R}.multi_turn.use_inference_chat_template"] = Refused(
        _falsy,
        "false",
        "multi-turn prompts use the training chat template; set false",
        "renders turns with the inference chat template (may drop reasoning)",
        True,
    )
    table[f"{_R}.multi_turn.num_repeat_rollouts"] = Refused(
        _is(None, 1),
        "null or 1",
        "each prompt is rolled out rollout.n times; use rollout.n for more samples",
        "repeats each multi-turn rollout this many times",
        2,
    )
    for owner in _PROFILED:
        table[f"{owner}.profiler.enable"] = Refused(
            _falsy,
            "false",
            "per-role profiling is not wired in; set false (timing_s/* metrics are always logged)",
            "profiles this role's workers with global_profiler.tool",
            True,
        )
    return table


REFUSED_KEYS: dict[str, Refused] = _build_refused()

# Rollout keys only the server engines (vLLM, SGLang) read: tuning, parallelism and memory knobs. The hf rollout
# generates with transformers in the worker's own process, where none of them has a meaning.
_ENGINE_REASON = "vLLM/SGLang tuning knob; the hf rollout has no such setting"
ENGINE_KEYS: dict[str, str] = {
    f"{_R}.gpu_memory_utilization": "share of GPU memory for the engine's weights and KV cache; " + _ENGINE_REASON,
    f"{_R}.enforce_eager": "disables CUDA graphs; " + _ENGINE_REASON,
    f"{_R}.cudagraph_capture_sizes": "batch sizes captured as CUDA graphs; " + _ENGINE_REASON,
    f"{_R}.free_cache_engine": "frees the KV cache between steps; " + _ENGINE_REASON,
    f"{_R}.data_parallel_size": "engine data parallelism; " + _ENGINE_REASON,
    f"{_R}.expert_parallel_size": "engine expert parallelism; " + _ENGINE_REASON,
    f"{_R}.max_num_batched_tokens": "scheduler token budget per iteration; " + _ENGINE_REASON,
    f"{_R}.max_model_len": "engine context length (KV cache sizing); " + _ENGINE_REASON,
    f"{_R}.max_num_seqs": "scheduler concurrency; " + _ENGINE_REASON,
    f"{_R}.enable_chunked_prefill": "scheduler option; " + _ENGINE_REASON,
    f"{_R}.enable_prefix_caching": "KV-cache reuse across requests; " + _ENGINE_REASON,
    f"{_R}.load_format": "how the engine loads its first weights before the actor's arrive; " + _ENGINE_REASON,
    f"{_R}.layered_summon": "gathers FSDP weights layer by layer for the engine; " + _ENGINE_REASON,
    f"{_R}.disable_log_stats": "engine statistics logging; " + _ENGINE_REASON,
    f"{_R}.multi_stage_wake_up": "resumes engine memory in stages; " + _ENGINE_REASON,
    f"{_R}.scheduling_policy": "engine request scheduling (fcfs/priority); " + _ENGINE_REASON,
    f"{_R}.skip_tokenizer_init": "engine tokenizer loading; " + _ENGINE_REASON,
    f"{_R}.update_weights_bucket_megabytes": "bucket size of the actor-to-engine weight transfer; " + _ENGINE_REASON,
    f"{_R}.checkpoint_engine.*": "actor-to-engine weight transfer backend (0.7); " + _ENGINE_REASON,
    f"{_R}.engine_kwargs.trtllm": "TensorRT-LLM constructor arguments; " + _ENGINE_REASON,
    f"{_R}.dtype": "engine weight dtype; the hf rollout generates with the actor's own module, as verl's hf rollout",
    f"{_R}.agent.num_workers": "agent-loop worker processes driving the server engines; " + _ENGINE_REASON,
}

NOT_READ_BY_CODE: dict[str, str] = {
    f"{_R}.multi_turn.max_parallel_calls": "tool calling only; tool_config_path is refused",
    f"{_R}.multi_turn.max_tool_response_length": "tool calling only; tool_config_path is refused",
    f"{_R}.multi_turn.tool_response_truncate_side": "tool calling only; tool_config_path is refused",
    f"{_R}.multi_turn.format": "tool-call format of the chat template: tool calling only; tool_config_path is refused",
    "data.max_response_length": "copied into actor_rollout_ref.rollout.response_length by interpolation",
    "data.image_patch_size": "multi-modal only; rows with images/videos are refused by the dataset pre-flight",
    "data.return_multi_modal_inputs": "multi-modal only; rows with images/videos are refused by the dataset pre-flight",
    "data.filter_overlong_prompts_workers": "process count of the overlong filter; one process gives the same rows",
    f"{_M}.lora_alpha": "only used with lora_rank > 0, which is refused",
    f"{_M}.target_modules": "only used with lora_rank > 0, which is refused",
    f"{_M}.exclude_modules": "only used with lora_rank > 0, which is refused",
    "critic.model.lora_alpha": "only used with critic.model.lora_rank > 0, which is refused",
    "critic.model.target_modules": "only used with critic.model.lora_rank > 0, which is refused",
    f"{_M}.fused_kernel_options.*": "only used with use_fused_kernels=true, which is refused",
    "actor_rollout_ref.actor.use_torch_compile": "speed only: verl compiles its log-prob/entropy helpers (same "
    "maths); we always run them eagerly, which is what verl does with false",
    "actor_rollout_ref.ref.use_torch_compile": "speed only, as actor.use_torch_compile",
    "actor_rollout_ref.actor.data_loader_seed": "seeds the mini-batch shuffle, which needs actor.shuffle=true (refused)",
    "critic.data_loader_seed": "seeds the mini-batch shuffle, which needs critic.shuffle=true (refused)",
    "*.profiler.tool": "only used with <role>.profiler.enable=true, which is refused",
    "*.profiler.all_ranks": "only used with <role>.profiler.enable=true, which is refused",
    "*.profiler.ranks": "only used with <role>.profiler.enable=true, which is refused",
    "*.profiler.save_path": "only used with <role>.profiler.enable=true, which is refused",
    "*.profiler.tool_config": "only used with <role>.profiler.enable=true, which is refused",
    "global_profiler.steps": "only used with global_profiler.tool set, which is refused",
    "global_profiler.profile_continuous_steps": "only used with global_profiler.tool set, which is refused",
    "global_profiler.save_path": "only used with global_profiler.tool set, which is refused",
    "global_profiler.global_tool_config.*": "only used with global_profiler.tool set, which is refused",
    f"{_R}.skip_dump_dir": "only used with rollout.skip_rollout=true, which is refused",
    f"{_R}.trace.token2text": "only used with rollout.trace.backend set, which is refused",
    f"{_R}.prometheus.*": "only used with rollout.prometheus.enable=true, which is refused",
    "reward_model.launch_reward_fn_async": "timing only: verl computes the same rewards in a Ray task overlapping "
    "old_log_prob; we compute them in order",
    "trainer.ray_wait_register_center_timeout": "our worker groups start without a register-center actor to wait for",
    "data.datagen.*": "read only by a data.custom_cls dataset (verl's DynamicGenDataset), which gets the data config",
    f"{_R}.n_gpus_per_node": "only used with rollout.nnodes > 0 (a standalone rollout pool), which is refused",
    f"{_R}.agent.custom_async_server.name": "only used with custom_async_server.path set, which is refused",
    "reward.num_workers": "parallelism of verl's reward loop; the same rewards are computed in the driver",
    "algorithm.rollout_correction.use_policy_gradient": "deprecated 0.6 alias, translated by "
    "RolloutCorrectionConfig.__post_init__ into loss_type=reinforce",
    f"{_M}.use_remove_padding": "speed only: packing without pad tokens gives the same logits; we always run the "
    "padded forward (actor, ref and critic follow their own copies of this key)",
    "actor_rollout_ref.actor.use_remove_padding": "speed only, as model.use_remove_padding",
    "critic.model.use_remove_padding": "speed only, as actor_rollout_ref.model.use_remove_padding",
    "reward_model.model.use_remove_padding": "speed only, as actor_rollout_ref.model.use_remove_padding",
}

# In progress (issue 9 and later issues): an entry goes when its implementation lands and the walk sees it read.
IMPLEMENTED_ELSEWHERE_PENDING: dict[str, str] = {}

# Generic leaf names read from a node handed to the reader, so the parent's name is not next to the leaf.
# Each value is the file that reads the key; the walk test checks that the leaf is accessed there.
READ_THROUGH_NODE: dict[str, str] = {
    f"{_R}.logit_capture.k": "verl/workers/rollout/logit_capture.py",  # CaptureSpec.from_config: cfg.k
    f"{_R}.logit_capture.ids": "verl/workers/rollout/logit_capture.py",
    f"{_R}.logit_capture.dtype": "verl/workers/rollout/logit_capture.py",
    "reward_model.strategy": "verl/workers/fsdp_workers.py",  # RewardModelWorker: self.config.get("strategy")
}


def _select(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(config, key, default=None, throw_on_missing=False)


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def refused_key_problems(config: Any) -> list[str]:
    """One message per refused key set to a value we do not implement (empty when the config is fine)."""
    problems = []
    for key, rule in REFUSED_KEYS.items():
        value = _plain(_select(config, key))
        if rule.ok(value) or (rule.applies is not None and not rule.applies(config)):
            continue
        problems.append(f"{key}={value!r} is not supported (allowed: {rule.allowed}): {rule.fix}")
    return problems


def check_refused_keys(config: Any) -> None:
    """Stop a run that sets a key we do not implement, before anything expensive starts.

    Args:
        config: the composed trainer config (``DictConfig``), resolved or not.

    Raises:
        ValueError: listing every refused key set to a non-allowed value, with its value and the fix.
    """
    problems = refused_key_problems(config)
    if problems:
        raise ValueError("unsupported config value(s), refused before starting:\n  " + "\n  ".join(problems))


def audit_entry(key: str) -> tuple[str, str] | None:
    """``(table name, reason)`` for a dotted key listed in one of the tables (``*`` patterns match), else None."""
    if key in REFUSED_KEYS:
        return "REFUSED_KEYS", REFUSED_KEYS[key].fix
    tables = {
        "ENGINE_KEYS": ENGINE_KEYS,
        "NOT_READ_BY_CODE": NOT_READ_BY_CODE,
        "IMPLEMENTED_ELSEWHERE_PENDING": IMPLEMENTED_ELSEWHERE_PENDING,
        "READ_THROUGH_NODE": READ_THROUGH_NODE,
    }
    for name, table in tables.items():
        for pattern, reason in table.items():
            if fnmatch.fnmatchcase(key, pattern):
                return name, reason
    return None
