"""The Megatron config layout: what is checked before Ray (no megatron-core needed)."""

from __future__ import annotations

import pytest

from verl.trainer.config.build import build_trainer_config
from verl.utils.config import compose_config

BASE = [
    "actor_rollout_ref.model.path=/models/tiny",
    "actor_rollout_ref.rollout.name=hf",
    "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "critic.ppo_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=2",
    "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
]


def _build(*extra: str):
    return build_trainer_config(compose_config("ppo_megatron_trainer", [*BASE, *extra]))


def test_megatron_actor_with_tensor_parallelism_builds():
    cfg = _build("algorithm.adv_estimator=grpo")
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    assert cfg.actor_rollout_ref.actor.megatron.tensor_model_parallel_size == 2


def test_critic_layout_must_match_the_actors_when_a_critic_runs():
    with pytest.raises(
        ValueError, match=r"critic.megatron.tensor_model_parallel_size=1 differs .* set critic.megatron"
    ):
        _build("algorithm.adv_estimator=gae")
    cfg = _build("algorithm.adv_estimator=gae", "critic.megatron.tensor_model_parallel_size=2")
    assert cfg.critic.megatron.tensor_model_parallel_size == 2
    _build("algorithm.adv_estimator=grpo")  # no critic: its layout does not matter


def test_megatron_strategy_in_the_fsdp_config_names_the_megatron_config():
    with pytest.raises(ValueError, match="--config-name ppo_megatron_trainer"):
        build_trainer_config(compose_config("ppo_trainer", [*BASE[:-1], "actor_rollout_ref.actor.strategy=megatron"]))


@pytest.mark.parametrize(
    "key",
    ["virtual_pipeline_model_parallel_size=2", "context_parallel_size=2", "param_offload=True", "use_mbridge=True"],
)
def test_unimplemented_megatron_features_are_refused_naming_the_key(key):
    with pytest.raises(ValueError, match=f"actor_rollout_ref.actor.megatron.{key.split('=')[0]}"):
        _build("algorithm.adv_estimator=grpo", f"actor_rollout_ref.actor.megatron.{key}")


def test_reference_layout_that_differs_from_the_actors_is_refused():
    with pytest.raises(ValueError, match=r"ref.megatron.tensor_model_parallel_size=1 differs from the actor's \(2\)"):
        _build("algorithm.adv_estimator=grpo", "actor_rollout_ref.ref.megatron.tensor_model_parallel_size=1")
    with pytest.raises(ValueError, match="ref.megatron.dtype='float32' differs"):
        _build("algorithm.adv_estimator=grpo", "actor_rollout_ref.ref.megatron.dtype=float32")
    with pytest.raises(ValueError, match="ref.megatron.param_offload=True is not implemented"):
        _build("algorithm.adv_estimator=grpo", "actor_rollout_ref.ref.megatron.param_offload=True")
    _build("algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.megatron.dtype=float32")  # the ref follows


def test_a_model_that_does_not_split_over_the_ranks_is_refused_before_ray(tiny_model_dir):
    from transformers import AutoConfig

    from verl.models.mcore.config_converter import check_convertible

    hf_config = AutoConfig.from_pretrained(tiny_model_dir)  # 4 heads, 2 key/value heads
    check_convertible(hf_config, 2, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size", 1)
    with pytest.raises(
        ValueError, match=r"tensor_model_parallel_size=4 does not divide the model's num_key_value_heads=2"
    ):
        check_convertible(hf_config, 4, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size", 1)
    check_convertible(hf_config, 1, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size", 2)
    with pytest.raises(
        ValueError,
        match=r"actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=3 does not divide the model's "
        r"num_hidden_layers=2",
    ):
        check_convertible(hf_config, 1, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size", 3)
    hf_config.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        check_convertible(hf_config, 1, "actor_rollout_ref.actor.megatron.tensor_model_parallel_size", 1)


def test_help_lists_the_megatron_keys_with_their_status():
    from verl.trainer.config.render import help_text

    text = help_text("actor_rollout_ref.actor.megatron")
    assert "actor_rollout_ref.actor.megatron.tensor_model_parallel_size = 1" in text
    assert "refused unless 1: context parallelism is not implemented" in " ".join(text.split())
    assert "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size = 1" in text
    assert "critic.megatron.dtype" in help_text("critic.megatron")
