"""Typed config views: YAML round trips and the value checks in __post_init__."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from verl.trainer.config import (
    AlgoConfig,
    CheckpointConfig,
    FilterGroupsConfig,
    KLControlConfig,
    PFPPOConfig,
    RolloutCorrectionConfig,
)
from verl.utils.config import compose_config, omega_conf_to_dataclass
from verl.workers.config import (
    LOSS_AGG_MODES,
    CriticConfig,
    FSDPActorConfig,
    FSDPCriticConfig,
    FSDPEngineConfig,
    FSDPOptimizerConfig,
    HFModelConfig,
    LogitCaptureConfig,
    McoreActorConfig,
    OptimizerConfig,
    PolicyLossConfig,
    RolloutConfig,
    SamplingConfig,
)

MINIMAL = ["actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.model.path=/models/tiny"]


def _round_trip(obj):
    """dataclass -> YAML container -> dataclass."""
    node = OmegaConf.create(_to_container(obj))
    return omega_conf_to_dataclass(node, type(obj))


def _to_container(obj, with_target=True):
    """A YAML-like dict of a dataclass; ``_target_`` names each node's class (or is dropped, for comparisons)."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: _to_container(getattr(obj, f.name), with_target) for f in dataclasses.fields(obj)}
        out.pop("_target_")
        if with_target:
            out["_target_"] = f"{type(obj).__module__}.{type(obj).__name__}"
        return out
    return obj


@pytest.mark.parametrize(
    "obj",
    [
        AlgoConfig(adv_estimator="grpo", kl_ctrl=KLControlConfig(type="adaptive", kl_coef=0.2)),
        AlgoConfig(
            filter_groups=FilterGroupsConfig(enable=True, metric="acc"), rollout_correction=RolloutCorrectionConfig()
        ),
        KLControlConfig(type="adaptive", horizon=500, target_kl=0.05),
        PFPPOConfig(reweight_method="max_min"),
        CheckpointConfig(save_contents=["model"], load_contents=["model"]),
        FSDPActorConfig(ppo_micro_batch_size_per_gpu=4, clip_ratio_high=0.28),
        McoreActorConfig(ppo_micro_batch_size_per_gpu=2),
        FSDPCriticConfig(ppo_micro_batch_size_per_gpu=2),
        RolloutConfig(name="vllm", mode="async", n=8, logit_capture=LogitCaptureConfig(enable=True, mode="topk", k=5)),
        HFModelConfig(path="/m", lora_rank=8),
        FSDPEngineConfig(param_offload=True, fsdp_size=2),
        FSDPOptimizerConfig(lr=3e-4, lr_scheduler_type="cosine"),
        PolicyLossConfig(loss_mode="gspo"),
    ],
    ids=lambda o: type(o).__name__,
)
def test_dataclass_yaml_round_trip_is_lossless(obj):
    back = _round_trip(obj)
    assert type(back) is type(obj)
    assert _to_container(back, with_target=False) == _to_container(obj, with_target=False)
    assert type(back.get("optim", obj)) is type(obj.get("optim", obj))


def test_algo_config_from_composed_yaml_carries_nested_kl_ctrl():
    cfg = compose_config(overrides=[*MINIMAL, "algorithm.adv_estimator=grpo", "algorithm.kl_ctrl.type=adaptive"])
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert isinstance(algo, AlgoConfig) and algo.adv_estimator == "grpo"
    assert isinstance(algo.kl_ctrl, KLControlConfig) and algo.kl_ctrl.type == "adaptive"
    assert algo["kl_ctrl"]["kl_coef"] == pytest.approx(0.001)  # Mapping access, nested too
    kl = omega_conf_to_dataclass(cfg.algorithm.kl_ctrl)
    assert kl == algo.kl_ctrl


def test_worker_configs_from_composed_yaml():
    cfg = compose_config(
        overrides=[*MINIMAL, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", "critic.optim.lr=3e-5"]
    )
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert isinstance(actor, FSDPActorConfig) and actor.ppo_micro_batch_size_per_gpu == 2
    assert isinstance(actor.optim, FSDPOptimizerConfig) and actor.optim.lr == pytest.approx(1e-6)
    assert isinstance(actor.fsdp_config, FSDPEngineConfig)
    assert isinstance(actor.policy_loss, PolicyLossConfig)
    critic = omega_conf_to_dataclass(cfg.critic)
    assert isinstance(critic, CriticConfig) and critic.optim.lr == pytest.approx(3e-5)
    assert critic.model.path == "/models/tiny"
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert isinstance(rollout.val_kwargs, SamplingConfig) and rollout.val_kwargs.temperature == 0
    assert rollout.logit_capture.mode == "logprob" and rollout.logit_capture.values_per_token == 1
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    assert model.local_tokenizer_path == "/models/tiny"


def test_optimizer_total_training_steps_is_mutable_and_lr_is_not():
    optim = FSDPOptimizerConfig()
    optim.total_training_steps = 100
    assert optim.total_training_steps == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        optim.lr = 1.0


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_every_documented_loss_agg_mode_is_accepted(mode):
    assert FSDPActorConfig(loss_agg_mode=mode).loss_agg_mode == mode
    assert CriticConfig(loss_agg_mode=mode).loss_agg_mode == mode


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: FSDPActorConfig(loss_agg_mode="token-sum"), "actor_rollout_ref.actor.loss_agg_mode"),
        (lambda: CriticConfig(loss_agg_mode="mean"), "critic.loss_agg_mode"),
        (lambda: FSDPActorConfig(clip_ratio=0), "actor_rollout_ref.actor.clip_ratio"),
        (lambda: FSDPActorConfig(clip_ratio_low=-0.1), "actor_rollout_ref.actor.clip_ratio_low"),
        (lambda: FSDPActorConfig(clip_ratio_low=1.0), "actor_rollout_ref.actor.clip_ratio_low"),
        (lambda: FSDPActorConfig(clip_ratio_c=1.0), "actor_rollout_ref.actor.clip_ratio_c"),
        (lambda: FSDPActorConfig(kl_loss_type="k4"), "actor_rollout_ref.actor.kl_loss_type"),
        (lambda: FSDPActorConfig(strategy="megatron"), "actor_rollout_ref.actor.strategy"),
        (lambda: FSDPActorConfig(ppo_micro_batch_size=8, ppo_micro_batch_size_per_gpu=2), "ppo_micro_batch_size"),
        (lambda: FSDPActorConfig(ppo_epochs=0), "actor_rollout_ref.actor.ppo_epochs"),
        (lambda: RolloutConfig(mode="batch"), "actor_rollout_ref.rollout.mode"),
        (lambda: RolloutConfig(n=0), "actor_rollout_ref.rollout.n"),
        (lambda: RolloutConfig(temperature=0, n=4), "actor_rollout_ref.rollout.temperature"),
        (lambda: RolloutConfig(top_p=0), "actor_rollout_ref.rollout.top_p"),
        (lambda: SamplingConfig(n=4, temperature=0, do_sample=True), "val_kwargs.n"),
        (lambda: LogitCaptureConfig(mode="probs"), "logit_capture.mode"),
        (lambda: LogitCaptureConfig(k=0), "logit_capture.k"),
        (lambda: LogitCaptureConfig(dtype="int8"), "logit_capture.dtype"),
        (lambda: LogitCaptureConfig(max_bytes=0), "logit_capture.max_bytes"),
        (lambda: LogitCaptureConfig(enable=True, mode="token_ids"), "logit_capture.ids"),
        (lambda: LogitCaptureConfig(ids=[-1]), "logit_capture.ids"),
        (lambda: KLControlConfig(type="pid"), "algorithm.kl_ctrl.type"),
        (lambda: KLControlConfig(type="adaptive", horizon=0), "algorithm.kl_ctrl.horizon"),
        (lambda: AlgoConfig(gamma=1.5), "algorithm.gamma"),
        (lambda: AlgoConfig(kl_penalty="k9"), "algorithm.kl_penalty"),
        (lambda: PFPPOConfig(reweight_method="sqrt"), "algorithm.pf_ppo.reweight_method"),
        (lambda: RolloutCorrectionConfig(rollout_is="batch"), "rollout_correction.rollout_is"),
        (lambda: CheckpointConfig(save_contents=["weights"]), "checkpoint.save_contents"),
        (lambda: OptimizerConfig(lr=-1), "optim.lr"),
        (lambda: FSDPOptimizerConfig(lr_scheduler_type="linear"), "optim.lr_scheduler_type"),
        (lambda: FSDPEngineConfig(fsdp_size=0), "fsdp_config.fsdp_size"),
        (lambda: HFModelConfig(path=""), "actor_rollout_ref.model.path"),
    ],
)
def test_invalid_values_fail_naming_the_key(make, key):
    with pytest.raises(ValueError) as info:
        make()
    assert key in str(info.value)


def test_kl_estimator_with_straight_through_suffix_is_accepted():
    assert FSDPActorConfig(kl_loss_type="low_var_kl+").kl_loss_type == "low_var_kl+"
    assert AlgoConfig(kl_penalty="k3+").kl_penalty == "k3+"


def test_clip_ratio_low_and_high_fall_back_to_clip_ratio_when_null():
    actor = FSDPActorConfig(clip_ratio=0.3, clip_ratio_low=None, clip_ratio_high=0.28)
    assert (actor.clip_low, actor.clip_high) == (0.3, 0.28)


def test_deprecated_warmup_style_sets_the_scheduler_type_with_a_warning():
    with pytest.warns(DeprecationWarning, match="warmup_style"):
        optim = FSDPOptimizerConfig(warmup_style="cosine")
    assert optim.lr_scheduler_type == "cosine"


def test_logit_capture_token_ids_mode_counts_its_ids():
    capture = LogitCaptureConfig(enable=True, mode="token_ids", ids=[5, 9, 11])
    assert capture.values_per_token == 3
    assert LogitCaptureConfig(mode="topk", k=7).values_per_token == 7
    assert LogitCaptureConfig(mode="full").values_per_token is None


def test_logit_capture_mode_override_is_validated_when_building_the_rollout_config():
    cfg = compose_config(overrides=[*MINIMAL, "actor_rollout_ref.rollout.logit_capture.mode=logits"])
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.rollout\.logit_capture\.mode='logits'"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
