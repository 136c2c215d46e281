"""Typed views of ``critic``: the value model used by GAE.

Batch sizes mirror the actor's (``ppo_mini_batch_size`` in prompts, micro batches in sequences per rank). verl v0.8
moved ``critic.model.fsdp_config`` to ``critic.fsdp``; both spellings are accepted (``FSDPCriticConfig.fsdp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig, check_choice
from verl.trainer.config.algorithm import CheckpointConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.profiler.config import ProfilerConfig
from verl.workers.config.actor import (
    LOSS_AGG_MODES,
    _megatron_refusal,
    check_micro_batch_exclusive,
    refuse_shuffle,
)
from verl.workers.config.engine import FSDPEngineConfig, McoreEngineConfig
from verl.workers.config.model import (
    CriticLoraConfig,
    lora_rank_refusal,
    refuse_activation_offload,
)
from verl.workers.config.optimizer import FSDPOptimizerConfig, OptimizerConfig

__all__ = ["CriticConfig", "CriticModelConfig", "FSDPCriticConfig", "McoreCriticConfig"]

_LORA_OFF = "only used with critic.model.lora_rank > 0, which is refused"
_V09_MODEL = "verl v0.9 critic.model key (critic.model is a full hf_model node there)"


def _unset(value: Any) -> bool:
    return value is None or value == ""


@dataclass
class CriticModelConfig(BaseConfig):
    """``critic.model``: the value model (a causal LM with a scalar head); defaults follow the actor's model."""

    _path = "critic.model"

    path: str = key("~/models/deepseek-llm-7b-chat", follows="actor_rollout_ref.model.path")
    """Local directory of the value model (follows the policy's model; a value head is added on top)."""
    tokenizer_path: str | None = key(None, follows="actor_rollout_ref.model.path")
    """Tokenizer directory (follows the policy's model)."""
    override_config: dict[str, Any] = key(factory=dict)
    """Fields overriding the model's config.json."""
    external_lib: str | None = key(None, follows="actor_rollout_ref.model.external_lib")
    """Module imported before loading (follows the policy's)."""
    trust_remote_code: bool = key(False, follows="actor_rollout_ref.model.trust_remote_code")
    """Allow model code shipped with the checkpoint (follows the policy's)."""
    use_shm: bool = False
    """Copy the model to /dev/shm before loading."""
    enable_gradient_checkpointing: bool = True
    """Recompute activations in backward."""
    enable_activation_offload: bool = key(False, refuse=refuse_activation_offload("the critic's"))
    """Offload activations to CPU."""
    use_remove_padding: bool | None = key(None, v07_default=False, v09_default=True)
    """Pack each micro-batch's real tokens into one row for the value forward (null: false with v0.7 keys, true with
    v0.9 keys)."""
    fsdp_config: FSDPEngineConfig = key(factory=FSDPEngineConfig)
    """Sharding and offload of the critic (verl v0.8+: critic.fsdp)."""
    lora_rank: int = key(
        0,
        refuse=lora_rank_refusal(
            "critic.model.lora_rank",
            "LoRA on the critic is not implemented (the actor's is: actor_rollout_ref.model.lora_rank); set "
            "critic.model.lora_rank=0",
        ),
    )
    """LoRA rank; 0 trains all weights."""
    lora_alpha: int = key(16, effect="inert", reason=_LORA_OFF)
    """LoRA scaling numerator."""
    target_modules: Any = key("all-linear", effect="inert", reason=_LORA_OFF)
    """Modules that get LoRA adapters."""
    hf_config_path: str | None = key(
        None,
        since="0.9",
        refuse=Refuse(
            _unset,
            "null",
            "loading config.json from a separate path is not implemented; put it beside the weights",
            "reads the critic's config.json from this path",
            "/configs/critic",
        ),
    )
    """Directory of config.json when it differs from path."""
    custom_chat_template: str | None = key(None, since="0.9", effect="inert", reason="the critic scores token ids")
    """Chat template of the critic's tokenizer."""
    exclude_modules: Any = key(None, since="0.9", effect="inert", reason=_LORA_OFF)
    """Modules excluded from LoRA."""
    lora_adapter_path: str | None = key(
        None,
        since="0.9",
        refuse=Refuse(_unset, "null", "LoRA is not implemented; set null", "loads a LoRA adapter", "/adapters/c"),
    )
    """Pretrained LoRA adapter of the critic."""
    use_liger: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(lambda v: not v, "false", "Liger kernels are not implemented", "Liger kernels", True),
    )
    """Use Liger kernels (null: false)."""
    use_fused_kernels: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(lambda v: not v, "false", "fused kernels are not implemented", "fused kernels", True),
    )
    """Use fused kernels (null: false)."""
    lora: CriticLoraConfig | None = key(None, since="0.9", reason=_V09_MODEL)
    """verl v0.9's LoRA block of the critic; rank 0 only."""


@dataclass
class CriticConfig(BaseConfig):
    """Value-model training settings shared by every backend."""

    _path = "critic"

    _mutable_fields = BaseConfig._mutable_fields | {
        "ppo_mini_batch_size",
        "ppo_micro_batch_size",
        "ppo_micro_batch_size_per_gpu",
        "forward_micro_batch_size",
        "forward_micro_batch_size_per_gpu",
    }

    strategy: str = key("fsdp", effect="implemented", refuse=_megatron_refusal("critic.strategy"))
    """Training backend: fsdp | fsdp2 (megatron: --config-name ppo_megatron_trainer)."""
    nccl_timeout: int = 600
    """Seconds before a stuck collective of the critic's workers aborts."""
    enable: bool | None = None
    """null: on for adv_estimator=gae, off otherwise."""
    rollout_n: int = key(1, follows="actor_rollout_ref.rollout.n")
    """Responses per prompt (follows actor_rollout_ref.rollout.n)."""
    optim: OptimizerConfig = key(factory=lambda: FSDPOptimizerConfig(lr=1e-5))
    """Optimizer and LR schedule."""
    model: CriticModelConfig = key(factory=CriticModelConfig)
    """The value model."""
    ppo_mini_batch_size: int = key(256, follows="actor_rollout_ref.actor.ppo_mini_batch_size")
    """Prompts per optimizer step (follows the actor's)."""
    ppo_micro_batch_size: int | None = None
    """Deprecated global micro batch; use ppo_micro_batch_size_per_gpu."""
    ppo_micro_batch_size_per_gpu: int | None = None
    """Sequences per forward/backward on one rank."""
    use_dynamic_bsz: bool = key(False, follows="actor_rollout_ref.actor.use_dynamic_bsz")
    """Pack micro batches by token count (follows the actor's)."""
    ppo_max_token_len_per_gpu: int = 32768
    """Token budget of one training micro batch with use_dynamic_bsz."""
    forward_max_token_len_per_gpu: int = key(32768, follows=".ppo_max_token_len_per_gpu")
    """Token budget of one value-inference micro batch with use_dynamic_bsz (follows ppo_max_token_len_per_gpu)."""
    forward_micro_batch_size: int | None = None
    """Deprecated global value-inference micro batch."""
    forward_micro_batch_size_per_gpu: int | None = None
    """Sequences per value-inference forward on one rank; null follows the training micro batch."""
    ppo_epochs: int = key(1, follows="actor_rollout_ref.actor.ppo_epochs")
    """Passes over each batch (follows the actor's)."""
    shuffle: bool = key(False, follows="actor_rollout_ref.actor.shuffle", refuse=refuse_shuffle("critic"))
    """Shuffle mini-batches between epochs (follows the actor's)."""
    data_loader_seed: int | None = key(
        42, effect="inert", reason="seeds the mini-batch shuffle, which needs critic.shuffle=true (refused)"
    )
    """Seed of the mini-batch shuffle."""
    cliprange_value: float = 0.5
    """New values stay within this distance of the old ones (value clipping)."""
    loss_agg_mode: str = key("token-mean", choices=LOSS_AGG_MODES, follows="actor_rollout_ref.actor.loss_agg_mode")
    """Aggregation of the value loss (follows the actor's)."""
    loss_scale_factor: float | None = key(None, since="0.9")
    """Divisor of seq-mean-token-sum-norm for the value loss (verl v0.9; null: the response length). Unlike v0.9,
    where it follows the actor's key, only a value written here is used."""
    checkpoint: CheckpointConfig = key(factory=CheckpointConfig)
    """What the critic saves and loads."""
    profiler: ProfilerConfig = key(factory=ProfilerConfig)
    """Per-role profiler settings."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ppo_mini_batch_size < 1:
            raise ValueError(f"critic.ppo_mini_batch_size={self.ppo_mini_batch_size} must be >= 1 (counted in prompts)")
        if self.ppo_epochs < 1:
            raise ValueError(f"critic.ppo_epochs={self.ppo_epochs} must be >= 1")
        if self.cliprange_value <= 0:
            raise ValueError(f"critic.cliprange_value={self.cliprange_value} must be > 0")
        if not self.use_dynamic_bsz:
            check_micro_batch_exclusive(
                "critic", self.ppo_micro_batch_size, self.ppo_micro_batch_size_per_gpu, "ppo_micro_batch_size"
            )
            micro = self.ppo_micro_batch_size
            if micro is not None and self.ppo_mini_batch_size % micro:
                raise ValueError(
                    f"critic.ppo_mini_batch_size ({self.ppo_mini_batch_size}) must be divisible by "
                    f"critic.ppo_micro_batch_size ({micro})"
                )

    def validate(self, n_gpus: int, train_batch_size: int) -> None:
        """verl's check of this node against the run (the trainer's pre-flight runs the full per-rank checks)."""
        if not self.use_dynamic_bsz:
            if train_batch_size < self.ppo_mini_batch_size:
                raise ValueError(
                    f"train_batch_size ({train_batch_size}) must be >= critic.ppo_mini_batch_size "
                    f"({self.ppo_mini_batch_size})"
                )
            sp_size = getattr(self, "ulysses_sequence_parallel_size", 1)
            if self.ppo_micro_batch_size is not None and self.ppo_micro_batch_size * sp_size < n_gpus:
                raise ValueError(
                    f"critic.ppo_micro_batch_size ({self.ppo_micro_batch_size}) * ulysses_sequence_parallel_size "
                    f"({sp_size}) must be >= n_gpus ({n_gpus})"
                )


@dataclass
class FSDPCriticConfig(CriticConfig):
    """Critic trained with FSDP / FSDP2."""

    ulysses_sequence_parallel_size: int = 1
    """Ulysses sequence-parallel ranks of the critic (needs critic.model.use_remove_padding)."""
    grad_clip: float = 1.0
    """Gradient-norm clip (legacy worker path; the engine path reads optim.clip_grad)."""
    fsdp: FSDPEngineConfig | None = key(None, since="0.8", alias_of="model.fsdp_config")
    """verl v0.8+ spelling of critic.model.fsdp_config (either works; both set to different values is an error)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("critic.strategy", self.strategy, ("fsdp", "fsdp2"))
        if self.ulysses_sequence_parallel_size > 1 and not self.model.use_remove_padding:
            raise ValueError(
                "When using sequence parallelism for critic, you must enable `use_remove_padding` "
                "(critic.model.use_remove_padding=True)"
            )


@dataclass
class McoreCriticConfig(CriticConfig):
    """Critic trained with Megatron-core (``verl.workers.megatron_workers.CriticWorker``)."""

    _ignored_keys = frozenset({"ulysses_sequence_parallel_size", "fsdp"})

    strategy: str = key("megatron", effect="implemented")
    """Always megatron for this class."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    megatron: McoreEngineConfig = key(factory=McoreEngineConfig)
    """Parallel layout of the critic."""
    load_weight: bool = True
    """Load the HF weights at start."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("critic.strategy", self.strategy, ("megatron",))
