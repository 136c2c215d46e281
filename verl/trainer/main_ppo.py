"""Entry point: ``python -m verl.trainer.main_ppo key=value ...`` (verl's Hydra config tree).

The composed config becomes the typed tree (``verl.trainer.config.PPOTrainerConfig``) once, here: refused keys
first (before torch or Ray are imported), then types, the verl generation of the keys written, and the checks
between keys. Then the model path, the data files and their columns are checked, and only then are the Ray cluster
and the worker groups brought up and ``fit()`` called. On a machine without CUDA, ``trainer.device`` becomes
``cpu`` and ``trainer.n_gpus_per_node`` counts CPU ranks. ``--help [prefix]`` prints the typed tree with docs.
"""

from __future__ import annotations

import os
import socket
import sys

import hydra

from verl.trainer.config.build import need_critic, need_reference_policy, need_reward_model
from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.trainer.ppo.utils import Role

COMMAND = "python -m verl.trainer.main_ppo"


@hydra.main(config_path="config", config_name="ppo_trainer", version_base=None)
def main(config) -> None:
    import logging

    from verl.utils.cli_errors import exit_on_user_error

    # Hydra sends INFO records to the console; verl's own modules log at VERL_LOGGING_LEVEL (WARN unless set), as in
    # verl, so the console shows the step lines, not bookkeeping notes.
    logging.getLogger("verl").setLevel(os.environ.get("VERL_LOGGING_LEVEL", "WARN").upper())

    with exit_on_user_error(COMMAND):  # bad input: one paragraph, no stack trace (HYDRA_FULL_ERROR=1 shows it)
        run_ppo(load_config(config))


def load_config(config) -> PPOTrainerConfig:
    """The validated typed tree of a composed config (already typed: returned as is)."""
    if isinstance(config, PPOTrainerConfig):
        return config
    from verl.trainer.config.build import build_trainer_config, check_refused_keys, describe_generation
    from verl.utils.cli_errors import preflight

    with preflight():
        check_refused_keys(config)  # before torch and Ray are even imported: a refused key costs a second
        from verl.utils.device import resolve_device

        cfg = build_trainer_config(config, device=resolve_device(config.trainer.device))
    print(f"config: {describe_generation(cfg)}")
    return cfg


def run_ppo(config, task_runner_class=None) -> None:
    """Run PPO with ``config`` (a DictConfig or the typed tree). ``task_runner_class`` may be a plain class or a
    ``ray.remote`` one (as in verl)."""
    config = load_config(config)
    runner_cls = task_runner_class or TaskRunner
    if hasattr(runner_cls, "remote"):
        init_ray(config)
        import ray

        ray.get(runner_cls.remote().run.remote(config))
    else:
        # The controller runs in this process so progress bars and errors reach the terminal directly.
        runner_cls().run(config)


def init_ray(config: PPOTrainerConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    ray_init = {k: v for k, v in dict(config.ray_kwargs.ray_init).items() if v is not None}
    world = config.trainer.n_gpus_per_node * config.trainer.nnodes
    # A cluster already running (`ray start --head`, RAY_ADDRESS, address=auto) brings its own resources: Ray refuses
    # num_cpus there, and the dashboard is the cluster's.
    address = ray_init.get("address")
    connecting = (address not in (None, "local")) or bool(os.environ.get("RAY_ADDRESS"))
    if config.trainer.device == "cpu" and "num_cpus" not in ray_init and not connecting:
        # CPU ranks are Ray CPU resources; logical CPUs may exceed physical cores (each rank is one process).
        ray_init["num_cpus"] = max(os.cpu_count() or 1, 2 * world + 2)
    from verl.utils.console import quiet_third_party

    env = {
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **quiet_third_party(local_ray_cluster=not connecting),
    }
    if config.trainer.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(world, 1)))
    runtime_env = ray_init.pop("runtime_env", {}) or {}
    runtime_env.setdefault("env_vars", {}).update({k: v for k, v in env.items() if k not in runtime_env["env_vars"]})
    if not connecting:
        ray_init.setdefault("include_dashboard", False)
    else:
        _use_cluster_token()
    ray.init(runtime_env=runtime_env, **ray_init)


def _use_cluster_token() -> None:
    """Joining a running cluster: Ray's token authentication (on by default since Ray 2.5x) is used when a token is
    there, as Ray's own CLI does; without this the driver is turned away ("Failed to connect to Ray cluster")."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class TaskRunner:
    """Builds the worker mapping, datasets and reward functions, then runs ``RayPPOTrainer``.

    A recipe may set ``trainer_cls`` (class attribute) to a ``RayPPOTrainer`` subclass.
    """

    trainer_cls = None

    def __init__(self):
        self.role_worker_mapping: dict = {}
        self.mapping: dict = {}

    def add_actor_rollout_worker(self, config):
        import ray

        strategy = config.actor_rollout_ref.actor.strategy
        if strategy in ("fsdp", "fsdp2"):
            from verl.workers.fsdp_workers import ActorRolloutRefWorker, AsyncActorRolloutRefWorker
        elif strategy == "megatron":
            from verl.workers.megatron_workers import ActorRolloutRefWorker, AsyncActorRolloutRefWorker
        else:
            raise ValueError(f"actor_rollout_ref.actor.strategy must be fsdp, fsdp2 or megatron, got {strategy!r}")
        from verl.single_controller.ray import RayWorkerGroup

        cls = AsyncActorRolloutRefWorker if config.actor_rollout_ref.rollout.mode == "async" else ActorRolloutRefWorker
        self.role_worker_mapping[Role.ActorRollout] = ray.remote(cls)
        self.mapping[Role.ActorRollout] = "global_pool"
        return cls, RayWorkerGroup

    def add_critic_worker(self, config) -> None:
        import ray

        if config.critic.strategy in ("fsdp", "fsdp2"):
            from verl.workers.fsdp_workers import CriticWorker
        elif config.critic.strategy == "megatron":
            from verl.workers.megatron_workers import CriticWorker
        else:
            raise ValueError(f"critic.strategy must be fsdp, fsdp2 or megatron, got {config.critic.strategy!r}")
        self.role_worker_mapping[Role.Critic] = ray.remote(CriticWorker)
        self.mapping[Role.Critic] = "global_pool"

    def add_ref_policy_worker(self, config, ref_policy_cls) -> None:
        import ray

        if need_reference_policy(config):
            self.role_worker_mapping[Role.RefPolicy] = ray.remote(ref_policy_cls)
            self.mapping[Role.RefPolicy] = "global_pool"

    def add_reward_model_worker(self, config) -> None:
        import ray

        if not need_reward_model(config):
            return
        from verl.workers.fsdp_workers import RewardModelWorker

        self.role_worker_mapping[Role.RewardModel] = ray.remote(RewardModelWorker)
        pooled = config.reward_model.enable_resource_pool
        self.mapping[Role.RewardModel] = "reward_pool" if pooled else "global_pool"

    def init_resource_pool_mgr(self, config):
        from verl.single_controller.ray import ResourcePoolManager

        spec = {"global_pool": [config.trainer.n_gpus_per_node] * config.trainer.nnodes}
        rm = config.reward_model
        if rm.enable and rm.enable_resource_pool:
            spec["reward_pool"] = [rm.n_gpus_per_node] * rm.nnodes
        return ResourcePoolManager(resource_pool_spec=spec, mapping=self.mapping)

    def run(self, config) -> None:
        from verl.trainer.ppo.ray_trainer import RayPPOTrainer
        from verl.trainer.ppo.reward import check_data_sources, load_reward_manager
        from verl.trainer.ppo.rollout_preflight import check_rollout_setup
        from verl.utils.cli_errors import preflight
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.utils.import_utils import import_external_libs
        from verl.utils.tokenizer import hf_processor, hf_tokenizer

        print(f"TaskRunner on {socket.gethostname()} (pid {os.getpid()})")
        # 1. cheap checks first: a bad config or path must fail before Ray starts (the tree is validated once)
        with preflight():
            config = load_config(config)
            use_critic = need_critic(config)
            # A model registered by an external library must be importable here too: fail now, not in a worker.
            import_external_libs(config.actor_rollout_ref.model.external_lib, "actor_rollout_ref.model.external_lib")
            model_cfg = config.actor_rollout_ref.model
            local_path = model_directory("actor_rollout_ref.model.path", model_cfg.path, model_cfg.use_shm)
            if use_critic:
                model_directory("critic.model.path", config.critic.model.path, config.critic.model.use_shm)
            _check_megatron_models(config, local_path)
            _check_fsdp_models(config, local_path, use_critic)
            trust = config.data.trust_remote_code or model_cfg.trust_remote_code
            tokenizer = hf_tokenizer(local_path, trust_remote_code=trust)
            processor = hf_processor(local_path, trust_remote_code=trust, use_fast=True)
            train_dataset = create_rl_dataset(config.data.train_files, config.data, tokenizer, processor, True)
            val_dataset = create_rl_dataset(config.data.val_files, config.data, tokenizer, processor, False)
            reward_fn = load_reward_manager(config, tokenizer, num_examine=0)
            val_reward_fn = load_reward_manager(config, tokenizer, num_examine=1)
            check_rollout_setup(config, train_dataset, _vocab_size_if_needed(config, local_path, trust))
            check_data_sources(config, train_dataset, val_dataset)
        # 2. workers and Ray
        actor_cls, wg_cls = self.add_actor_rollout_worker(config)
        if use_critic:
            self.add_critic_worker(config)
        self.add_ref_policy_worker(config, actor_cls)
        self.add_reward_model_worker(config)
        init_ray(config)
        trainer = (self.trainer_cls or RayPPOTrainer)(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=self.init_resource_pool_mgr(config),
            ray_worker_group_cls=wg_cls,
            reward_fn=reward_fn,
            val_reward_fn=val_reward_fn,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=create_rl_sampler(config.data, train_dataset),
            device_name=config.trainer.device,
        )
        try:
            trainer.init_workers()
            trainer.fit()
        finally:
            trainer.shutdown()


def _check_megatron_models(config, local_path: str) -> None:
    """Megatron strategies: the checkpoint converts and splits over the tensor-parallel ranks and the pipeline
    stages (before Ray)."""
    from transformers import AutoConfig

    from verl.models.mcore.config_converter import check_convertible

    trust = config.actor_rollout_ref.model.trust_remote_code
    layout = getattr(config.actor_rollout_ref.actor, "megatron", None)
    if layout is not None:
        key = "actor_rollout_ref.actor.megatron.tensor_model_parallel_size"
        check_convertible(
            AutoConfig.from_pretrained(local_path, trust_remote_code=trust),
            layout.tensor_model_parallel_size,
            key,
            layout.pipeline_model_parallel_size,
        )
    critic_layout = getattr(config.critic, "megatron", None)
    if critic_layout is not None and need_critic(config):
        critic_path = model_directory("critic.model.path", config.critic.model.path, config.critic.model.use_shm)
        key = "critic.megatron.tensor_model_parallel_size"
        check_convertible(
            AutoConfig.from_pretrained(critic_path, trust_remote_code=trust),
            critic_layout.tensor_model_parallel_size,
            key,
            critic_layout.pipeline_model_parallel_size,
        )


def _check_fsdp_models(config, local_path: str, use_critic: bool) -> None:
    """FSDP strategies: a LoRA adapter to start from exists, and Ulysses sizes split the attention heads (before
    Ray)."""
    from transformers import AutoConfig

    from verl.utils.ulysses import check_heads

    model_cfg = config.actor_rollout_ref.model
    adapter = model_cfg.lora_adapter_path
    if model_cfg.lora_rank > 0 and adapter:
        if not os.path.isfile(os.path.join(os.path.expanduser(adapter), "adapter_config.json")):
            raise FileNotFoundError(
                f"actor_rollout_ref.model.lora_adapter_path={adapter!r} has no adapter_config.json: give a directory "
                "written by PeftModel.save_pretrained, or a checkpoint's global_step_N/actor/lora_adapter"
            )
    trust = model_cfg.trust_remote_code
    sp = getattr(config.actor_rollout_ref.actor, "ulysses_sequence_parallel_size", None) or 1
    if sp > 1:
        hf_config = AutoConfig.from_pretrained(local_path, trust_remote_code=trust)
        check_heads(hf_config, sp, "actor_rollout_ref.actor.ulysses_sequence_parallel_size")
    critic_sp = getattr(config.critic, "ulysses_sequence_parallel_size", None) or 1
    if use_critic and critic_sp > 1:
        critic_path = model_directory("critic.model.path", config.critic.model.path, config.critic.model.use_shm)
        hf_config = AutoConfig.from_pretrained(critic_path, trust_remote_code=trust)
        check_heads(hf_config, critic_sp, "critic.ulysses_sequence_parallel_size")


def model_directory(key: str, path: str, use_shm: bool) -> str:
    """The local directory of the model named by config ``key``; a missing one is an error saying what to do."""
    from verl.utils.fs import copy_to_local

    fix = (
        "Expected a Hugging Face model directory (config.json, weights, tokenizer files; nothing is downloaded). "
        f"For an offline tiny model: python -m verl.utils.testing.tiny models/tiny, then {key}=models/tiny"
    )
    try:
        local = copy_to_local(path, use_shm=use_shm)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}={path!r} does not exist. {fix}") from err
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise FileNotFoundError(f"{key}={path!r} has no config.json, so it is not a model directory. {fix}")
    return local


def _vocab_size_if_needed(config, local_path: str, trust_remote_code: bool) -> int | None:
    """The policy's vocabulary size, read only when full-logit capture must check its memory budget."""
    capture = config.actor_rollout_ref.rollout.logit_capture
    if not (capture.enable and capture.mode == "full"):
        return None
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(local_path, trust_remote_code=trust_remote_code).vocab_size)


def create_rl_dataset(data_paths, data_config, tokenizer, processor, is_train: bool = True, max_samples: int = -1):
    """Build the RL dataset (``data.custom_cls`` when set, else ``RLHFDataset``)."""
    from torch.utils.data import Dataset

    from verl.utils.config import as_config
    from verl.utils.dataset.config import DataConfig
    from verl.utils.dataset.rl_dataset import get_dataset_class

    if data_paths is None:
        return None
    _check_data_files("data.train_files" if is_train else "data.val_files", data_paths)
    data_config = as_config(data_config, DataConfig)
    cls = get_dataset_class(data_config)
    if not issubclass(cls, Dataset):
        raise TypeError(f"data.custom_cls must name a torch Dataset subclass, got {cls}")
    if max_samples == -1:
        max_samples = data_config.train_max_samples if is_train else data_config.val_max_samples
    return cls(
        data_files=data_paths, tokenizer=tokenizer, processor=processor, config=data_config, max_samples=max_samples
    )


def _check_data_files(key: str, paths) -> None:
    """Each local data file named by ``key`` exists; a missing one is an error saying what is expected there."""
    from verl.utils.fs import is_non_local, local_path

    listed = [paths] if isinstance(paths, str) else list(paths)
    for path in listed:
        if is_non_local(str(path)) or os.path.exists(local_path(str(path))):
            continue
        shown = path if len(listed) == 1 else f"[..., {path!r}, ...]"
        raise FileNotFoundError(
            f"{key}={shown!r}: no such file. Expected parquet file(s) with a chat-message `prompt` column "
            "(data.prompt_key), as examples/data_preprocess/*.py write them; the quick start's toy task is "
            "built with: python examples/quickstart/make_data.py --out data/quickstart"
        )


def create_rl_sampler(data_config, dataset):
    """A user sampler from ``data.sampler.class_path/class_name``; ``None`` means the trainer's resumable order.

    The built-in order (seeded per-epoch shuffle, or file order with ``data.shuffle=False``) is resumable from a
    checkpoint, which a torch ``RandomSampler`` is not.
    """
    from verl.utils.config import as_config
    from verl.utils.dataset.config import DataConfig

    data_config = as_config(data_config, DataConfig)
    sampler_cfg = data_config.sampler
    if not sampler_cfg.class_path:
        return None
    from verl.utils.import_utils import load_extern_object

    if data_config.dataloader_num_workers != 0:
        raise ValueError("a custom data.sampler needs data.dataloader_num_workers=0")
    cls = load_extern_object(sampler_cfg.class_path, sampler_cfg.class_name)
    return cls(data_source=dataset, data_config=data_config)


def _print_help(argv: list[str]) -> bool:
    """``--help [prefix]``: the typed tree with docs (Hydra's own help is ``--hydra-help``)."""
    flags = [i for i, arg in enumerate(argv) if arg in ("--help", "-h")]
    if not flags:
        return False
    from verl.trainer.config.render import help_text

    rest = argv[flags[0] + 1 :]
    prefix = rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else ""
    print(help_text(prefix), end="")
    return True


if __name__ == "__main__":
    if not _print_help(sys.argv[1:]):
        from verl.utils.cli_errors import run_hydra_cli

        config_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
        run_hydra_cli(main, config_dir=config_dir, config_name="ppo_trainer", command=COMMAND, key_help=True)
