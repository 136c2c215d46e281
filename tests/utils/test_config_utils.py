"""verl.utils.config: omega_conf_to_dataclass and validate_config."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from verl.trainer.config import AlgoConfig, KLControlConfig
from verl.utils.config import KNOWN_ADV_ESTIMATORS, compose_config, omega_conf_to_dataclass, validate_config
from verl.workers.config import FSDPActorConfig, McoreActorConfig

# 8 prompts x 2 responses = 16 sequences over 2 ranks; mini batch 4 prompts = 8 sequences = 4 per rank = 2 micro.
VALID = [
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.model.path=/models/tiny",
    "algorithm.adv_estimator=grpo",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "critic.ppo_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=2",
    "trainer.nnodes=1",
]


def _cfg(*extra: str):
    return compose_config(overrides=[*VALID, *extra])


def _error(cfg, use_ref=True, use_critic=True, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        validate_config(cfg, use_reference_policy=use_ref, use_critic=use_critic, **kwargs)
    return str(info.value)


# ---- omega_conf_to_dataclass ---------------------------------------------------------------------------------------
def test_none_and_built_instances_pass_through():
    algo = AlgoConfig()
    assert omega_conf_to_dataclass(None) is None
    assert omega_conf_to_dataclass(algo) is algo


def test_lazy_export_from_verl_utils_is_the_same_function():
    import verl.utils

    assert verl.utils.omega_conf_to_dataclass is omega_conf_to_dataclass


def test_target_chooses_the_class_and_an_explicit_type_wins():
    node = OmegaConf.create({"_target_": "verl.trainer.config.KLControlConfig", "type": "adaptive"})
    assert isinstance(omega_conf_to_dataclass(node), KLControlConfig)
    plain = {"type": "fixed", "kl_coef": 0.5}
    assert omega_conf_to_dataclass(plain, KLControlConfig).kl_coef == 0.5


def test_node_without_target_or_type_is_an_error():
    with pytest.raises(ValueError, match="_target_"):
        omega_conf_to_dataclass(OmegaConf.create({"type": "fixed"}))


def test_unimportable_target_is_an_error_naming_it():
    with pytest.raises(ValueError, match="verl.nowhere.Config"):
        omega_conf_to_dataclass({"_target_": "verl.nowhere.Config"})


def test_unknown_key_fails_with_its_full_path():
    cfg = _cfg("+actor_rollout_ref.actor.optim.lr_decay=0.9")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.optim\.lr_decay") as info:
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert "valid keys" in str(info.value) and "lr_scheduler_type" in str(info.value)


def test_wrongly_typed_scalar_fails_naming_key_and_expected_type():
    cfg = _cfg("actor_rollout_ref.actor.ppo_epochs=two")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.ppo_epochs='two'.*expected int"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def test_integer_yaml_values_become_floats_for_float_fields():
    actor = omega_conf_to_dataclass(_cfg().actor_rollout_ref.actor)
    assert isinstance(actor.entropy_coeff, float) and actor.entropy_coeff == 0.0


def test_interpolations_are_resolved_against_the_whole_tree():
    cfg = _cfg("data.max_response_length=77")
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.response_length == 77 and rollout.n == 2


def test_ignored_keys_are_dropped_for_the_megatron_actor():
    cfg = compose_config("ppo_megatron_trainer", VALID)
    assert "fsdp_config" in cfg.actor_rollout_ref.actor  # inherited from ppo_trainer.yaml
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor, McoreActorConfig)
    assert isinstance(actor, McoreActorConfig) and not hasattr(actor, "fsdp_config")
    with pytest.raises(ValueError, match="megatron"):
        omega_conf_to_dataclass({"megatron": {}}, FSDPActorConfig)


# ---- validate_config -----------------------------------------------------------------------------------------------
def test_valid_config_passes():
    validate_config(_cfg(), use_reference_policy=True, use_critic=True)


def test_batch_times_n_must_split_over_ranks():
    msg = _error(
        _cfg(
            "algorithm.adv_estimator=gae",
            "data.train_batch_size=3",
            "actor_rollout_ref.actor.ppo_mini_batch_size=1",
            "actor_rollout_ref.rollout.n=1",
        )
    )
    assert "data.train_batch_size" in msg and "actor_rollout_ref.rollout.n" in msg and "2 ranks" in msg


def test_explicit_n_ranks_overrides_the_trainer_keys():
    msg = _error(_cfg(), n_ranks=3)
    assert "3 ranks" in msg


def test_mini_batch_larger_than_train_batch_is_rejected():
    msg = _error(_cfg("actor_rollout_ref.actor.ppo_mini_batch_size=16"))
    assert "actor_rollout_ref.actor.ppo_mini_batch_size=16" in msg and "data.train_batch_size=8" in msg


def test_mini_batch_must_divide_train_batch():
    msg = _error(_cfg("actor_rollout_ref.actor.ppo_mini_batch_size=3"))
    assert "actor_rollout_ref.actor.ppo_mini_batch_size=3" in msg


def test_mini_batch_times_n_must_split_over_data_parallel_ranks():
    cfg = _cfg(
        "algorithm.adv_estimator=gae", "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.ppo_mini_batch_size=1"
    )
    msg = _error(cfg, use_critic=False)
    assert "ppo_mini_batch_size=1 times actor_rollout_ref.rollout.n=1 = 1 sequences" in msg and "over 2" in msg


def test_per_rank_mini_batch_must_be_a_multiple_of_the_micro_batch():
    msg = _error(_cfg("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"))
    assert "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu" in msg and "4 sequences" in msg


def test_dynamic_batch_size_skips_the_micro_batch_checks():
    cfg = _cfg(
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=null",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=null",
        "critic.ppo_micro_batch_size_per_gpu=null",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
    )
    validate_config(cfg, use_reference_policy=True, use_critic=True)


def test_missing_actor_micro_batch_names_both_keys():
    msg = _error(_cfg("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null"))
    assert "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu" in msg
    assert "actor_rollout_ref.actor.ppo_micro_batch_size " in msg


def test_both_actor_micro_batch_keys_set_is_rejected():
    msg = _error(_cfg("actor_rollout_ref.actor.ppo_micro_batch_size=4"))
    assert "actor_rollout_ref.actor.ppo_micro_batch_size=4" in msg and "You have set both" in msg


def _worker_view(cfg, role: str, dp: int):
    """The per-rank batch sizes an ActorRolloutRefWorker on ``dp`` ranks derives from its typed subtree."""
    from verl.trainer.config.build import build_trainer_config
    from verl.utils.batch_sizes import actor_rank_batch_sizes

    tree = build_trainer_config(cfg, check=False)
    return actor_rank_batch_sizes(tree.actor_rollout_ref, role, dp)


GLOBAL_MICRO = [
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=null",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=null",
]


@pytest.mark.parametrize(
    "ranks, mini, micro, rollout_micro, ref_micro",
    [
        (2, 4, 2, 4, 2),  # mini 4 prompts x n=2 = 8 sequences / 2 ranks = 4; micro 4/2; log-prob micro 8/2, 4/2
        (4, 2, 1, 2, 1),  # the same over 4 ranks: 8/4 = 2; 4/4; 8/4, 4/4
    ],
)
def test_deprecated_global_micro_batch_is_divided_over_ranks(ranks, mini, micro, rollout_micro, ref_micro):
    cfg = _cfg(
        *GLOBAL_MICRO,
        f"trainer.n_gpus_per_node={ranks}",
        "actor_rollout_ref.actor.ppo_micro_batch_size=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size=4",
    )
    validate_config(cfg, use_reference_policy=True, use_critic=True)
    sizes = _worker_view(cfg, "actor_rollout_ref", ranks)
    assert (sizes.mini, sizes.micro, sizes.log_prob_micro, sizes.ref_micro) == (mini, micro, rollout_micro, ref_micro)
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == 4  # the caller's tree keeps the global values


def test_global_micro_batch_that_does_not_divide_over_ranks_fails_naming_the_key():
    # 3 sequences cannot be shared by 2 ranks: pre-flight and the worker both refuse, naming the key and value.
    cfg = _cfg(*GLOBAL_MICRO[:1], "actor_rollout_ref.actor.ppo_micro_batch_size=3")
    assert "actor_rollout_ref.actor.ppo_micro_batch_size=3" in _error(cfg)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.ppo_micro_batch_size=3"):
        _worker_view(cfg, "actor", 2)


def test_missing_rollout_log_prob_micro_batch_is_rejected():
    msg = _error(_cfg("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=null"))
    assert "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu" in msg


def test_ref_micro_batch_is_required_only_with_a_reference_policy():
    cfg = _cfg("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=null")
    assert "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu" in _error(cfg, use_ref=True)
    validate_config(cfg, use_reference_policy=False, use_critic=True)


def test_critic_batch_checks_apply_only_with_a_critic():
    cfg = _cfg("critic.ppo_micro_batch_size_per_gpu=null")
    assert "critic.ppo_micro_batch_size_per_gpu" in _error(cfg, use_critic=True)
    validate_config(cfg, use_reference_policy=True, use_critic=False)
    cfg = _cfg("critic.ppo_mini_batch_size=16")
    assert "critic.ppo_mini_batch_size=16" in _error(cfg, use_critic=True)


def test_invalid_loss_agg_mode_is_rejected():
    msg = _error(_cfg("actor_rollout_ref.actor.loss_agg_mode=sum"))
    assert "actor_rollout_ref.actor.loss_agg_mode='sum'" in msg and "token-mean" in msg


def test_unknown_advantage_estimator_lists_the_known_ones():
    msg = _error(_cfg("algorithm.adv_estimator=grpoo"))
    assert "algorithm.adv_estimator='grpoo'" in msg and "grpo" in msg and "reinforce_plus_plus" in msg


def test_estimator_registered_at_run_time_is_accepted(monkeypatch):
    from verl.trainer.ppo import core_algos

    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {"my_estimator": lambda **kw: None})
    validate_config(_cfg("algorithm.adv_estimator=my_estimator"), use_reference_policy=True, use_critic=True)


def test_known_estimators_match_core_algos():
    from verl.trainer.ppo.core_algos import AdvantageEstimator

    assert set(KNOWN_ADV_ESTIMATORS) == {e.value for e in AdvantageEstimator}


def test_group_estimator_with_a_single_response_warns():
    cfg = _cfg("actor_rollout_ref.rollout.n=1")
    with pytest.warns(UserWarning, match="actor_rollout_ref.rollout.n=1"):
        validate_config(cfg, use_reference_policy=True, use_critic=True)


def test_greedy_sampling_with_several_responses_is_an_error():
    msg = _error(_cfg("actor_rollout_ref.rollout.temperature=0"))
    assert "actor_rollout_ref.rollout.temperature=0" in msg and "actor_rollout_ref.rollout.n=2" in msg


def test_unset_rollout_engine_is_an_error():
    cfg = compose_config(overrides=[v for v in VALID if not v.startswith("actor_rollout_ref.rollout.name")])
    assert "actor_rollout_ref.rollout.name" in _error(cfg)


def test_invalid_device_and_worker_impl_are_rejected():
    assert "trainer.device='tpu'" in _error(_cfg("trainer.device=tpu"))
    assert "trainer.use_legacy_worker_impl='maybe'" in _error(_cfg("trainer.use_legacy_worker_impl=maybe"))


def test_sequence_parallel_size_must_divide_the_ranks():
    msg = _error(_cfg("actor_rollout_ref.actor.ulysses_sequence_parallel_size=3"))
    assert "actor_rollout_ref.actor.ulysses_sequence_parallel_size" in msg


def test_unknown_key_added_to_a_typed_node_fails_validation():
    assert "actor_rollout_ref.actor.ppo_mini_batchsize" in _error(_cfg("+actor_rollout_ref.actor.ppo_mini_batchsize=2"))


def _megatron_tree(overrides):
    # strategy=megatron is refused before Ray until the Megatron workers land; the batch arithmetic already
    # accounts for its layout, checked here on a tree built without the refusals.
    from verl.trainer.config.ppo_trainer import PPOTrainerConfig
    from verl.utils.config import build_dataclass, plain_container

    return build_dataclass(PPOTrainerConfig, plain_container(compose_config("ppo_megatron_trainer", overrides)))


def test_megatron_strategy_needs_the_megatron_config():
    # verl's Megatron config builds; strategy=megatron written into ppo_trainer's FSDP nodes is refused with the fix
    assert _megatron_tree(VALID).actor_rollout_ref.actor.strategy == "megatron"
    msg = _error(compose_config("ppo_trainer", [*VALID, "actor_rollout_ref.actor.strategy=megatron"]))
    assert "actor_rollout_ref.actor.strategy='megatron'" in msg and "--config-name ppo_megatron_trainer" in msg


def test_megatron_data_parallel_size_accounts_for_tensor_parallelism():
    from verl.trainer.config.build import check_trainer_config

    base = [*VALID, "trainer.n_gpus_per_node=4", "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2"]
    check_trainer_config(_megatron_tree(base), use_reference_policy=True, use_critic=False)
    # dp = 4 / 2 = 2, so a mini batch of 4 prompts x 2 = 4 sequences per rank; a micro batch of 3 does not divide it
    tree = _megatron_tree([*base, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"])
    with pytest.raises(ValueError, match="/ 2 = 4 sequences"):
        check_trainer_config(tree, use_reference_policy=True, use_critic=False)


# ---- features that need inputs the run would not otherwise produce ------------------------------------------------
@pytest.mark.parametrize(
    "overrides, named",
    [
        (["algorithm.rollout_correction.rollout_is=token"], "actor_rollout_ref.rollout.calculate_log_probs"),
        (["algorithm.rollout_correction.bypass_mode=True"], "actor_rollout_ref.rollout.calculate_log_probs"),
        (["algorithm.adv_estimator=optimal_token_baseline"], "actor_rollout_ref.actor.calculate_sum_pi_squared"),
        (["algorithm.adv_estimator=gdpo"], "algorithm.gdpo_reward_keys"),
        (["algorithm.adv_estimator=grpo", "algorithm.use_pf_ppo=True"], "algorithm.use_pf_ppo"),
        (["algorithm.filter_groups.enable=True"], "algorithm.filter_groups.metric"),
        (
            [
                "algorithm.filter_groups.enable=True",
                "algorithm.filter_groups.metric=seq_final_reward",
                "algorithm.use_kl_in_reward=True",
            ],
            "seq_final_reward",
        ),
    ],
)
def test_features_missing_their_inputs_are_refused_naming_the_key(overrides, named):
    assert named in _error(_cfg(*overrides))


def test_features_with_their_inputs_pass():
    validate_config(
        _cfg(
            "algorithm.rollout_correction.rollout_is=token",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            "algorithm.filter_groups.enable=True",
            "algorithm.filter_groups.metric=acc",
        ),
        use_reference_policy=True,
        use_critic=True,
    )


def test_global_log_prob_micro_batch_must_divide_over_ranks_before_ray():
    # 3 sequences (global, deprecated key) cannot be split over the 2 ranks of VALID: refused by pre-flight
    cfg = _cfg("actor_rollout_ref.rollout.log_prob_micro_batch_size=3")
    cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu = None  # only the global value is set
    msg = _error(cfg)
    assert "actor_rollout_ref.rollout.log_prob_micro_batch_size=3" in msg and "2 data-parallel ranks" in msg
