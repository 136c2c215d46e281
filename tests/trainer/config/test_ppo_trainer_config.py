"""The packaged Hydra configs compose, resolve, and accept the overrides real verl scripts pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from verl.utils.config import compose_config, omega_conf_to_dataclass

REPO = Path(__file__).resolve().parents[3]
MINIMAL = ["actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.model.path=/models/tiny"]

# examples/grpo_trainer/run_qwen2-7b.sh, with local paths instead of hub ids.
GRPO_SCRIPT = [
    "algorithm.adv_estimator=grpo",
    "data.train_files=/data/gsm8k/train.parquet",
    "data.val_files=/data/gsm8k/test.parquet",
    "data.train_batch_size=1024",
    "data.max_prompt_length=512",
    "data.max_response_length=1024",
    "data.filter_overlong_prompts=True",
    "data.truncation='error'",
    "actor_rollout_ref.model.path=/models/Qwen2-7B-Instruct",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.model.use_remove_padding=True",
    "actor_rollout_ref.actor.ppo_mini_batch_size=256",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=40",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=40",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
    "actor_rollout_ref.rollout.n=5",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=40",
    "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "algorithm.use_kl_in_reward=False",
    "trainer.critic_warmup=0",
    "trainer.logger=['console','wandb']",
    "trainer.project_name='verl_grpo_example_gsm8k'",
    "trainer.experiment_name='qwen2_7b_function_rm'",
    "trainer.n_gpus_per_node=8",
    "trainer.nnodes=1",
    "trainer.save_freq=20",
    "trainer.test_freq=5",
    "trainer.total_epochs=15",
]

FREQUENT_EXTRAS = [
    ["actor_rollout_ref.rollout.mode=sync"],
    ["actor_rollout_ref.rollout.mode=async"],
    ["trainer.use_legacy_worker_impl=auto"],
    ["ray_kwargs.ray_init.num_cpus=2"],
    ["actor_rollout_ref.actor.strategy=fsdp2"],
    ["data.return_raw_chat=True"],
    ["actor_rollout_ref.actor.use_dynamic_bsz=True", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=24000"],
    ["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm"],
    ["actor_rollout_ref.actor.clip_ratio_low=0.2", "actor_rollout_ref.actor.clip_ratio_high=0.28"],
    ["actor_rollout_ref.actor.policy_loss.loss_mode=gspo"],
    ["actor_rollout_ref.model.lora_rank=64", "actor_rollout_ref.model.lora_alpha=32"],
    [
        "reward_model.reward_manager=dapo",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=True",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.len=512",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.log=False",
        "+reward_model.reward_kwargs.max_resp_len=1024",
    ],
    ["reward.reward_manager.name=dapo", "+reward.reward_kwargs.max_resp_len=1024"],
    ["custom_reward_function.path=/tmp/my_reward.py", "custom_reward_function.name=my_score"],
    ["reward.custom_reward_function.path=/tmp/my_reward.py", "reward.custom_reward_function.name=my_score"],
    ["+actor_rollout_ref.rollout.engine_kwargs.vllm.swap_space=4"],
    ["actor_rollout_ref.rollout.calculate_log_probs=True"],
    ["actor_rollout_ref.rollout.logit_capture.enable=True", "actor_rollout_ref.rollout.logit_capture.mode=topk"],
    ["algorithm.filter_groups.enable=True", "algorithm.filter_groups.metric=acc"],
    ["trainer.device=cpu", "trainer.progress_bar=False"],
    ["actor_rollout_ref.rollout.multi_turn.enable=True", "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3"],
]


def test_default_config_resolves_every_interpolation_with_only_engine_and_model_path():
    cfg = compose_config(overrides=MINIMAL)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["actor_rollout_ref"]["rollout"]["prompt_length"] == 512
    assert resolved["actor_rollout_ref"]["rollout"]["response_length"] == 512
    assert resolved["critic"]["model"]["path"] == "/models/tiny"
    assert resolved["critic"]["model"]["tokenizer_path"] == "/models/tiny"
    assert resolved["reward_model"]["model"]["input_tokenizer"] == "/models/tiny"
    assert resolved["actor_rollout_ref"]["actor"]["checkpoint"]["load_contents"] == ["model", "optimizer", "extra"]
    assert resolved["trainer"]["default_local_dir"] == "checkpoints/verl_examples/gsm8k"
    assert resolved["trainer"]["device"] == "cuda"
    assert resolved["trainer"]["progress_bar"] is True


def test_rollout_name_is_mandatory():
    cfg = compose_config(overrides=["actor_rollout_ref.model.path=/m"])
    assert OmegaConf.is_missing(cfg.actor_rollout_ref.rollout, "name")
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.name"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)


def test_derived_defaults_follow_their_sources():
    cfg = compose_config(
        overrides=[
            *MINIMAL,
            "data.max_prompt_length=100",
            "data.max_response_length=30",
            "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            "actor_rollout_ref.actor.use_dynamic_bsz=True",
            "actor_rollout_ref.actor.strategy=fsdp2",
            "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
            "actor_rollout_ref.rollout.n=4",
        ]
    )
    rollout, critic, ref = cfg.actor_rollout_ref.rollout, cfg.critic, cfg.actor_rollout_ref.ref
    assert (rollout.prompt_length, rollout.response_length) == (100, 30)
    assert rollout.log_prob_use_dynamic_bsz is True and ref.log_prob_use_dynamic_bsz is True
    assert ref.strategy == "fsdp2"
    assert critic.ppo_mini_batch_size == 8 and critic.use_dynamic_bsz is True
    assert critic.loss_agg_mode == "seq-mean-token-mean"
    assert critic.rollout_n == 4 and cfg.actor_rollout_ref.actor.rollout_n == 4


def test_typical_grpo_script_composes_unchanged():
    cfg = compose_config(overrides=GRPO_SCRIPT)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.n == 5
    assert cfg.actor_rollout_ref.actor.optim.lr == pytest.approx(1e-6)
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.trainer.project_name == "verl_grpo_example_gsm8k"
    assert cfg.actor_rollout_ref.actor.use_remove_padding is True  # follows model.use_remove_padding


def test_typical_grpo_script_passes_the_preflight_validation_unchanged():
    from verl.utils.config import validate_config

    cfg = compose_config(overrides=GRPO_SCRIPT)
    # 1024 prompts x 5 samples over 8 ranks, mini-batch 256 prompts, micro-batch 40 per rank: all consistent
    validate_config(cfg, use_reference_policy=True, use_critic=False)


@pytest.mark.parametrize("extra", FREQUENT_EXTRAS, ids=lambda e: e[0].split("=")[0])
def test_frequently_seen_extra_overrides_compose(extra):
    cfg = compose_config(overrides=[*GRPO_SCRIPT, *extra])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    # Each override lands on its key with the value Hydra parsed from the command line (not a default, not None).
    for override in OverridesParser.create().parse_overrides(extra):
        expected = override.value()
        actual = OmegaConf.select(cfg, override.key_or_group)
        if isinstance(expected, list):
            actual = OmegaConf.to_container(actual)
        assert actual == expected and type(actual) is type(expected), (override.input_line, actual)


def test_legacy_and_new_reward_keys_coexist_with_null_meaning_fall_back():
    cfg = compose_config(overrides=MINIMAL)
    assert cfg.reward_model.reward_manager == "naive"
    assert cfg.custom_reward_function.path is None and cfg.custom_reward_function.name == "compute_score"
    assert cfg.reward.reward_manager.name is None
    assert cfg.reward.custom_reward_function.path is None and cfg.reward.custom_reward_function.name is None


def test_dapo_reward_kwargs_are_added_with_plus():
    cfg = compose_config(
        overrides=[
            *MINIMAL,
            "reward_model.reward_manager=dapo",
            "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=True",
        ]
    )
    assert cfg.reward_model.reward_manager == "dapo"
    assert cfg.reward_model.reward_kwargs.overlong_buffer_cfg.enable is True


def test_misspelt_override_fails_naming_the_full_key():
    with pytest.raises(ConfigCompositionException, match=r"actor_rollout_ref\.actor\.ppo_mini_batchsize"):
        compose_config(overrides=[*MINIMAL, "actor_rollout_ref.actor.ppo_mini_batchsize=2"])


def test_plus_prefix_adds_a_new_key_and_struct_mode_stays_on():
    cfg = compose_config(overrides=[*MINIMAL, "+new.key=1"])
    assert cfg.new.key == 1
    assert OmegaConf.is_struct(cfg)


def test_plus_prefix_on_an_existing_key_is_refused():
    with pytest.raises(ConfigCompositionException, match="data.train_batch_size"):
        compose_config(overrides=[*MINIMAL, "+data.train_batch_size=2"])


def test_list_valued_overrides_parse_as_lists():
    cfg = compose_config(overrides=[*MINIMAL, "data.train_files=['a.parquet','b.parquet']", "trainer.logger=console"])
    assert list(cfg.data.train_files) == ["a.parquet", "b.parquet"]
    assert cfg.trainer.logger == "console"


def test_every_target_node_of_the_default_config_builds_its_dataclass():
    cfg = compose_config(overrides=MINIMAL)
    built = {}
    for key in (
        "actor_rollout_ref.model",
        "actor_rollout_ref.actor",
        "actor_rollout_ref.ref.fsdp_config",
        "actor_rollout_ref.rollout",
        "critic",
        "reward_model.model.fsdp_config",
        "algorithm",
    ):
        built[key] = omega_conf_to_dataclass(OmegaConf.select(cfg, key))
    assert type(built["actor_rollout_ref.actor"]).__name__ == "FSDPActorConfig"
    assert type(built["actor_rollout_ref.rollout"].logit_capture).__name__ == "LogitCaptureConfig"
    assert type(built["critic"].model).__name__ == "CriticModelConfig"
    assert type(built["algorithm"].rollout_correction).__name__ == "RolloutCorrectionConfig"


def test_megatron_config_reuses_ppo_trainer_and_switches_strategy():
    cfg = compose_config(
        "ppo_megatron_trainer",
        [*MINIMAL, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2"],
    )
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.ref.strategy == "megatron"
    assert cfg.actor_rollout_ref.ref.megatron.tensor_model_parallel_size == 2
    assert cfg.critic.strategy == "megatron"
    assert cfg.data.train_batch_size == 1024  # inherited unchanged
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert type(actor).__name__ == "McoreActorConfig" and actor.megatron.tensor_model_parallel_size == 2
    assert type(omega_conf_to_dataclass(cfg.critic)).__name__ == "McoreCriticConfig"


def test_megatron_override_transformer_config_accepts_plus_keys():
    cfg = compose_config(
        "ppo_megatron_trainer",
        [*MINIMAL, "+actor_rollout_ref.actor.megatron.override_transformer_config.recompute_granularity=full"],
    )
    assert cfg.actor_rollout_ref.actor.megatron.override_transformer_config.recompute_granularity == "full"


def test_user_config_extending_ppo_trainer_through_searchpath(tmp_path):
    (tmp_path / "my_grpo.yaml").write_text(
        "hydra:\n  searchpath:\n    - pkg://verl.trainer.config\n"
        "defaults:\n  - ppo_trainer\n  - _self_\n"
        "data:\n  train_batch_size: 16\n"
    )
    cfg = compose_config("my_grpo", MINIMAL, config_dir=str(tmp_path))
    assert cfg.data.train_batch_size == 16
    assert cfg.actor_rollout_ref.rollout.name == "hf"


def test_print_cfg_script_prints_the_selected_subtree_and_rejects_typos():
    script = str(REPO / "scripts" / "print_cfg.py")
    ok = subprocess.run(
        [sys.executable, script, "--resolve", "--select", "critic.model.path", *MINIMAL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "/models/tiny"
    bad = subprocess.run(
        [sys.executable, script, "trainer.n_gpu_per_node=2"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "trainer.n_gpu_per_node" in bad.stderr


def test_compose_inside_an_initialized_hydra_restores_the_callers_state(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    (tmp_path / "other.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose_config(overrides=MINIMAL)
        assert cfg.actor_rollout_ref.rollout.name == "hf"
        assert GlobalHydra.instance().is_initialized()
        assert compose("other").x == 1
    assert not GlobalHydra.instance().is_initialized()
