"""The one typed config tree of ``python -m verl.trainer.main_ppo``: :class:`PPOTrainerConfig`.

Every key, its type, default, one-line doc, validation and what our code does with it is declared once, in these
dataclasses and the node classes they hold (``verl.workers.config``, ``verl.trainer.config.algorithm``,
``verl.utils.dataset.config``, ``verl.utils.profiler.config``). From them come:

* ``ppo_trainer.yaml`` (checked in; ``python -m verl.trainer.config --write`` regenerates it, a test checks it is
  fresh), ``ppo_megatron_trainer.yaml`` and the key table of ``docs/compat.md``;
* ``python -m verl.trainer.main_ppo --help``;
* the checks that run before Ray starts (``verl.trainer.config.build.build_trainer_config``).

verl v0.8/v0.9 spellings are fields too (``since``), so both generations of keys are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.trainer.config.algorithm import AlgoConfig
from verl.utils.config_keys import Refuse, key
from verl.utils.dataset.config import DataConfig
from verl.utils.profiler.config import GlobalProfilerConfig
from verl.workers.config.actor_rollout_ref import ActorRolloutRefConfig
from verl.workers.config.critic import CriticConfig, FSDPCriticConfig
from verl.workers.config.reward import RewardConfig
from verl.workers.config.reward_model import RewardModelConfig

__all__ = [
    "CustomRewardFunctionConfig",
    "DistillationConfig",
    "PPOTrainerConfig",
    "RayKwargsConfig",
    "SkipConfig",
    "TrainerConfig",
    "TransferQueueConfig",
]

_V1_OFF = "only used by the V1 trainer (trainer.use_v1=true), which is refused"


def _unset(value: Any) -> bool:
    return value is None or value == ""


def _off(value: Any) -> bool:
    return not value


@dataclass
class CustomRewardFunctionConfig(BaseConfig):
    """``custom_reward_function``: compute_score(data_source, solution_str, ground_truth, extra_info, ...) in a file."""

    _emit_target = False
    _open = True

    path: str | None = None
    """File defining the scoring function (null: default_compute_score)."""
    name: str = "compute_score"
    """Function name in that file."""
    reward_kwargs: dict[str, Any] = key(factory=dict, in_yaml=False)
    """Keyword arguments bound to the function (+custom_reward_function.reward_kwargs.k=v)."""


@dataclass
class V1SamplerConfig(BaseConfig):
    """``trainer.v1.sampler`` (verl v0.9): off-policy sampling of the V1 trainer."""

    _emit_target = False

    max_off_policy_threshold: int | None = key(None, since="0.9", v09_default=8, effect="inert", reason=_V1_OFF)
    """Policy versions a trajectory may lag."""
    max_off_policy_strategy: str | None = key(None, since="0.9", v09_default="drop", effect="inert", reason=_V1_OFF)
    """drop | wait."""
    sync_refill_failed_groups: bool | None = key(None, since="0.9", v09_default=False, effect="inert", reason=_V1_OFF)
    """Refill failed groups synchronously."""
    custom_sampler: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_V1_OFF)
    """A custom sampler: {path, name}."""
    sampler_kwargs: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_V1_OFF)
    """Arguments of the sampler."""


@dataclass
class V1Config(BaseConfig):
    """``trainer.v1`` (verl v0.9): the TransferQueue trainer's modes."""

    _emit_target = False

    trainer_mode: str | None = key(None, since="0.9", v09_default="sync", effect="inert", reason=_V1_OFF)
    """sync | colocate_async | separate_async."""
    sync: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_V1_OFF)
    """Options of the sync mode."""
    colocate_async: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_V1_OFF)
    """Options of colocate_async (num_warmup_batches)."""
    separate_async: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_V1_OFF)
    """Options of separate_async (num_warmup_batches, parameter_sync_step)."""
    sampler: V1SamplerConfig = key(factory=V1SamplerConfig)
    """Off-policy sampling."""


@dataclass
class TrainerConfig(BaseConfig):
    """``trainer``: the loop, logging, checkpoints and the cluster."""

    _path = "trainer"

    _emit_target = False

    balance_batch: bool = True
    """Reorder the batch so every rank gets a similar number of tokens."""
    total_epochs: int = 30
    """Passes over the training set."""
    total_training_steps: int | None = None
    """null: len(train dataloader) x total_epochs."""
    project_name: str = "verl_examples"
    """Tracking project."""
    experiment_name: str = "gsm8k"
    """Tracking run name."""
    logger: Any = key(factory=lambda: ["console", "wandb"])
    """console, wandb, tensorboard, mlflow, swanlab, file (a string or a list)."""
    log_val_generations: int = 0
    """Validation samples printed / logged each validation."""
    rollout_data_dir: str | None = None
    """Dump every step's generations as JSONL into this directory."""
    validation_data_dir: str | None = None
    """Dump every validation's generations as JSONL into this directory."""
    nnodes: int = 1
    """Nodes of the training cluster."""
    n_gpus_per_node: int = 8
    """Devices per node (on CPU: training processes)."""
    save_freq: int = -1
    """Steps between checkpoints; -1 never saves."""
    esi_redundant_time: int = key(
        0,
        refuse=Refuse(
            lambda v: v in (0, None),
            "0",
            "saving before an expiring allocation (ESI) is not implemented; set 0 and use trainer.save_freq",
            "saves a checkpoint when the cluster allocation is about to expire",
            600,
        ),
    )
    """Seconds kept in reserve to save before an expiring cluster allocation ends."""
    resume_mode: str = key("auto", choices=("auto", "disable", "resume_path"))
    """auto: resume from the latest checkpoint in default_local_dir; disable; resume_path: use resume_from_path."""
    resume_from_path: str | None = None
    """A global_step_N directory (resume_mode=resume_path)."""
    val_before_train: bool = True
    """Validate once before the first step."""
    val_only: bool = False
    """Validate, then stop."""
    test_freq: int = -1
    """Steps between validations; -1 never validates during training."""
    critic_warmup: int = 0
    """Steps during which only the critic is trained."""
    default_hdfs_dir: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "copying checkpoints to HDFS is not implemented; set null (checkpoints stay in default_local_dir)",
            "copies each checkpoint to this HDFS directory",
            "hdfs://ckpt",
        ),
    )
    """Copy checkpoints to this HDFS directory."""
    del_local_ckpt_after_load: bool = False
    """Delete the local checkpoint once it is loaded."""
    default_local_dir: str = key(
        "checkpoints/verl_examples/gsm8k", follows="checkpoints/${trainer.project_name}/${trainer.experiment_name}"
    )
    """Checkpoint root (checkpoints/<project_name>/<experiment_name>)."""
    max_actor_ckpt_to_keep: int | None = None
    """Keep only this many actor checkpoints (null: all)."""
    max_critic_ckpt_to_keep: int | None = None
    """Keep only this many critic checkpoints (null: all)."""
    ray_wait_register_center_timeout: int = key(
        300, effect="inert", reason="our worker groups start without a register-center actor to wait for"
    )
    """Seconds to wait for the register center."""
    device: str = key("cuda", choices=("cuda", "npu", "cpu"))
    """cuda | npu | cpu (main_ppo switches to cpu when no CUDA device is present)."""
    use_legacy_worker_impl: str = key("auto", choices=("auto", "enable", "disable"))
    """auto | enable: verl's legacy worker numerics; disable: the engine-worker numerics (global token counts)."""
    progress_bar: bool = key(True, ours=True)
    """Not a verl key: show a progress bar over training steps."""
    use_v1: bool | None = key(
        None,
        since="0.9",
        refuse=Refuse(
            lambda v: not v,
            "false (or unset)",
            "the TransferQueue (V1) trainer is not implemented; set trainer.use_v1=false (the same algorithm with "
            "the classic trainer; the batch order is then deterministic, as verl's use_v1=false)",
            "true runs the V1 trainer, which moves batches through TransferQueue (v0.9's default)",
            True,
        ),
    )
    """verl v0.9: true runs the TransferQueue trainer (refused); false or unset runs this trainer."""
    v1: V1Config = key(factory=V1Config)
    """Options of the V1 trainer (verl v0.9)."""


@dataclass
class TransferQueueConfig(BaseConfig):
    """``transfer_queue``: batches through TransferQueue (not implemented)."""

    _emit_target = False

    enable: bool = key(
        False,
        refuse=Refuse(
            _off,
            "false",
            "the TransferQueue trainer is not implemented; set false",
            "moves batches through TransferQueue instead of the driver",
            True,
        ),
    )
    """Move batches through TransferQueue."""
    metrics: dict[str, Any] | None = key(None, since="0.8", effect="inert", reason="TransferQueue is refused")
    """TransferQueue metrics ({enabled, port})."""
    backend: dict[str, Any] | None = key(None, since="0.8", effect="inert", reason="TransferQueue is refused")
    """Storage backend settings (storage_backend, SimpleStorage, MooncakeStore)."""


@dataclass
class RayKwargsConfig(BaseConfig):
    """``ray_kwargs``: how Ray is started."""

    _emit_target = False

    ray_init: dict[str, Any] = key(factory=lambda: {"num_cpus": None})
    """Arguments of ray.init, e.g. ray_kwargs.ray_init.num_cpus=2 (+ray_kwargs.ray_init.runtime_env=...)."""
    timeline_json_file: str | None = key(
        None,
        refuse=Refuse(
            _unset,
            "null",
            "writing a Ray timeline is not implemented; set null",
            "dumps ray.timeline() to this file at the end of the run",
            "/tmp/timeline.json",
        ),
    )
    """Write a Ray timeline (chrome trace) here at the end of the run."""


@dataclass
class DistillationConfig(BaseConfig):
    """``distillation`` (verl v0.8+): on-policy distillation from teacher models (not implemented)."""

    _emit_target = False

    enabled: bool | None = key(
        None,
        since="0.8",
        v09_default=False,
        refuse=Refuse(
            _off,
            "false",
            "on-policy distillation is not implemented; set false",
            "adds a distillation loss towards teacher models' token distributions",
            True,
        ),
    )
    """Distil from teachers (null: false)."""
    teacher_key: str | None = key(
        None,
        since="0.8",
        v09_default="data_source",
        effect="inert",
        reason="only used with distillation.enabled=true, which is refused",
    )
    """Column selecting the teacher."""
    n_gpus_per_node: int | None = key(
        None,
        since="0.8",
        v09_default=8,
        effect="inert",
        reason="only used with distillation.enabled=true, which is refused",
    )
    """Devices per node of the teachers."""
    nnodes: int | None = key(
        None,
        since="0.8",
        v09_default=0,
        effect="inert",
        reason="only used with distillation.enabled=true, which is refused",
    )
    """Nodes of the teachers."""
    distillation_loss: dict[str, Any] | None = key(
        None, since="0.8", effect="inert", reason="only used with distillation.enabled=true, which is refused"
    )
    """Loss settings (loss_mode, topk, distillation_loss_coef, ...)."""
    teacher_models: dict[str, Any] | None = key(
        None, since="0.8", effect="inert", reason="only used with distillation.enabled=true, which is refused"
    )
    """Teacher models and their inference settings."""


@dataclass
class SkipRoleConfig(BaseConfig):
    """One role of ``skip`` (verl v0.9): cache and replay a stage's outputs (debugging)."""

    _emit_target = False

    enable: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(
            _off,
            "false",
            "replaying dumped generations is not implemented; set false (trainer.rollout_data_dir dumps them)",
            "caches the stage's outputs in dump_dir and replays them",
            True,
        ),
    )
    """Cache and replay (null: false)."""
    dump_dir: str | None = key(
        None,
        since="0.9",
        v09_default="~/.verl/rollout_dump",
        effect="inert",
        reason="only used when skip.<role>.enable is true, which is refused",
    )
    """Where the cache lives."""
    steps: list[int] | None = key(
        None, since="0.9", effect="inert", reason="only used when skip.<role>.enable is true, which is refused"
    )
    """Steps to replay."""
    action: str | None = key(
        None,
        since="0.9",
        v09_default="cache",
        effect="inert",
        reason="only used when skip.<role>.enable is true, which is refused",
    )
    """cache | replay."""


@dataclass
class SkipConfig(BaseConfig):
    """``skip`` (verl v0.9): the SkipManager (rollout.skip_rollout / skip_dump_dir moved here)."""

    _emit_target = False

    rollout: SkipRoleConfig = key(factory=SkipRoleConfig)
    """Replay the rollout (v0.7: actor_rollout_ref.rollout.skip_rollout, skip_dump_dir)."""
    rollout_tq: SkipRoleConfig = key(factory=SkipRoleConfig)
    """Replay the rollout of the V1 trainer."""
    async_rollout: SkipRoleConfig = key(factory=SkipRoleConfig)
    """Replay the async rollout."""


@dataclass
class PPOTrainerConfig(BaseConfig):
    """The whole config of ``python -m verl.trainer.main_ppo`` (verl's ``ppo_trainer.yaml``)."""

    _emit_target = False
    _open = True  # recipes add groups of their own (+my_recipe.key=...); they are passed through

    data: DataConfig = key(factory=DataConfig)
    """Dataset and dataloader."""
    actor_rollout_ref: ActorRolloutRefConfig = key(factory=ActorRolloutRefConfig)
    """The policy: one model used by the actor (training), the rollout engine (generation) and the reference."""
    critic: CriticConfig = key(factory=FSDPCriticConfig)
    """The value model (GAE only unless critic.enable says otherwise)."""
    reward_model: RewardModelConfig = key(factory=RewardModelConfig)
    """Rewards, legacy layout (verl <= 0.6, still read by 0.7-0.9)."""
    custom_reward_function: CustomRewardFunctionConfig = key(factory=CustomRewardFunctionConfig)
    """A scoring function in a Python file."""
    reward: RewardConfig = key(factory=RewardConfig)
    """Rewards, newer layout (verl >= 0.7); every null falls back to the legacy key."""
    algorithm: AlgoConfig = key(factory=AlgoConfig)
    """Advantage estimation and reward shaping."""
    trainer: TrainerConfig = key(factory=TrainerConfig)
    """The loop, logging, checkpoints and the cluster."""
    global_profiler: GlobalProfilerConfig = key(factory=GlobalProfilerConfig)
    """Profiling (not wired in: turning it on is refused)."""
    transfer_queue: TransferQueueConfig = key(factory=TransferQueueConfig)
    """TransferQueue (not implemented)."""
    ray_kwargs: RayKwargsConfig = key(factory=RayKwargsConfig)
    """How Ray is started."""
    distillation: DistillationConfig = key(factory=DistillationConfig)
    """On-policy distillation (verl v0.8+, not implemented)."""
    skip: SkipConfig = key(factory=SkipConfig)
    """Cache/replay of stages (verl v0.9)."""
