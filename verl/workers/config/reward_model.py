"""Typed view of ``reward_model`` (verl's legacy reward layout, still read by verl v0.7-v0.9): the model-based
reward worker, the reward manager's name and the SandboxFusion settings of the rule-based scorers.

The newer layout (``reward.*``) is :class:`verl.workers.config.reward.RewardConfig`; where both are given,
``verl.trainer.ppo.reward`` reads the newer key and refuses a disagreeing legacy value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.profiler.config import ProfilerConfig
from verl.workers.config.engine import FSDPEngineConfig
from verl.workers.config.model import refuse_fused

__all__ = ["RewardModelConfig", "RewardModelModelConfig", "SandboxFusionConfig", "ulysses_refusal"]


def ulysses_refusal(key_name: str) -> Refuse:
    """Ulysses sequence parallelism is not implemented: only 1 passes (checked before Ray starts)."""
    return Refuse(
        lambda v: v in (1, None),
        "1",
        f"Ulysses sequence parallelism is not implemented; set {key_name}=1 (each rank holds whole sequences)",
        "> 1 splits each sequence's tokens over that many ranks (all-to-all around attention)",
        2,
    )


@dataclass
class SandboxFusionConfig(BaseConfig):
    """``*.sandbox_fusion``: where code answers are judged (null url: the embedded sandbox for main_eval)."""

    _emit_target = False

    url: str | None = None
    """SandboxFusion base URL or .../run_code URL; null disables remote judging in training rewards."""
    max_concurrent: int = 64
    """Sandbox requests in flight at once."""
    memory_limit_mb: int = 1024
    """Memory limit of each run in MB."""


@dataclass
class RewardModelModelConfig(BaseConfig):
    """``reward_model.model``: a sequence-classification reward model."""

    _emit_target = False

    input_tokenizer: str | None = key(None, follows="actor_rollout_ref.model.path")
    """Tokenizer of the policy, used to detokenize responses before re-tokenizing them for the reward model
    (follows the policy's model)."""
    path: str = "~/models/FsfairX-LLaMA3-RM-v0.1"
    """Local directory of the reward model."""
    external_lib: str | None = key(None, follows="actor_rollout_ref.model.external_lib")
    """Module imported before loading (follows the policy's)."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint."""
    use_shm: bool = key(False, effect="inert", reason="the reward model is loaded from its local directory")
    """Copy the model to /dev/shm before loading."""
    use_remove_padding: bool = key(
        False, effect="inert", reason="speed only: the reward model scores with the padded forward (the same scores)"
    )
    """Pack sequences without padding."""
    use_fused_kernels: bool = key(
        False, follows="actor_rollout_ref.model.use_fused_kernels", refuse=refuse_fused("in the reward model")
    )
    """Fused kernels (follows the policy's)."""
    fsdp_config: FSDPEngineConfig = key(factory=FSDPEngineConfig)
    """Sharding of the reward model."""


@dataclass
class RewardModelConfig(BaseConfig):
    """``reward_model``: a model-based reward (sequence classifier) and the legacy reward settings."""

    _path = "reward_model"

    _emit_target = False

    enable: bool = False
    """Score responses with a reward model (rule-based rewards need none of this)."""
    enable_resource_pool: bool = False
    """Run the reward model on its own resource pool."""
    n_gpus_per_node: int = 0
    """Devices per node of that pool."""
    nnodes: int = 0
    """Nodes of that pool."""
    strategy: str = key("fsdp", choices=("fsdp", "fsdp2"))
    """fsdp | fsdp2."""
    model: RewardModelModelConfig = key(factory=RewardModelModelConfig)
    """The reward model."""
    micro_batch_size: int | None = None
    """Deprecated global micro batch."""
    micro_batch_size_per_gpu: int | None = None
    """Sequences per rank in one reward-model forward."""
    max_length: int | None = None
    """Truncate re-tokenized conversations to this many tokens (null: keep them whole)."""
    use_dynamic_bsz: bool = key(False, follows="critic.use_dynamic_bsz")
    """Pack micro batches by token count (follows the critic's)."""
    forward_max_token_len_per_gpu: int = key(32768, follows="critic.forward_max_token_len_per_gpu")
    """Token budget of a micro batch with dynamic bsz (follows the critic's)."""
    reward_manager: str = "naive"
    """Registered reward manager: naive | batch | dapo | prime | a name added with @register."""
    launch_reward_fn_async: bool = key(
        False,
        effect="inert",
        reason="timing only: verl computes the same rewards in a Ray task overlapping old_log_prob; we compute them "
        "in order",
    )
    """Compute rewards in a Ray task overlapping the old_log_prob stage."""
    sandbox_fusion: SandboxFusionConfig = key(factory=SandboxFusionConfig)
    """SandboxFusion settings of the code scorers."""
    reward_kwargs: dict[str, Any] = key(factory=dict)
    """Extra keyword arguments of the reward manager (+reward_model.reward_kwargs.max_resp_len=...)."""
    profiler: ProfilerConfig = key(factory=ProfilerConfig)
    """Per-role profiler settings."""
    ulysses_sequence_parallel_size: int = key(
        1, effect="implemented", refuse=ulysses_refusal("reward_model.ulysses_sequence_parallel_size")
    )
    """Ulysses sequence-parallel ranks."""
