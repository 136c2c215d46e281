"""When the trainer leaves the old-log-prob pass to the actor update (``actor.skip_on_policy_old_log_prob``)."""

from __future__ import annotations

import pytest
import ray
import torch

from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, Role
from verl.utils.config import compose_config
from verl.workers.fsdp_workers import ActorRolloutRefWorker


class _UserWorker:  # a worker class of the user's own, not derived from this package's
    pass


def _decide(overrides=(), worker=ActorRolloutRefWorker, rows=8, rollout_log_probs=False, step=1) -> bool:
    trainer = RayPPOTrainer.__new__(RayPPOTrainer)  # only the config, the mapping and the step are read
    trainer.config = compose_config(
        "ppo_trainer",
        ["data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4", "actor_rollout_ref.rollout.n=2"]
        + list(overrides),
    )
    trainer.role_worker_mapping = {Role.ActorRollout: ray.remote(worker)}
    trainer.global_steps = step
    tensors = {"responses": torch.zeros(rows, 3, dtype=torch.long)}
    if rollout_log_probs:
        tensors["rollout_log_probs"] = torch.zeros(rows, 3)
    return trainer._old_log_prob_from_update(DataProto.from_dict(tensors=tensors))


def test_on_policy_steps_skip_the_pass():
    assert _decide()


@pytest.mark.parametrize(
    "case",
    [
        {"overrides": ["actor_rollout_ref.actor.skip_on_policy_old_log_prob=False"]},
        {"overrides": ["actor_rollout_ref.actor.ppo_epochs=2"]},
        {"overrides": ["actor_rollout_ref.actor.ppo_mini_batch_size=2"]},  # two mini-batches
        {"rows": 10},  # more rows than one mini-batch (e.g. several generation batches)
        {"overrides": ["trainer.use_legacy_worker_impl=disable"]},  # engine path: no on-policy shortcut
        {"overrides": ["algorithm.use_kl_in_reward=True"]},  # the reward reads old_log_probs
        {"rollout_log_probs": True},  # rollout correction / rollout-vs-actor metrics read them
        {"overrides": ["algorithm.adv_estimator=optimal_token_baseline"]},
        {"overrides": ["actor_rollout_ref.actor.calculate_sum_pi_squared=True"]},
        {"overrides": ["trainer.critic_warmup=2"]},  # no actor update this step
        {"worker": _UserWorker},  # a user-registered worker does not hand the log-probs back
    ],
)
def test_the_pass_runs_whenever_something_needs_it(case):
    assert not _decide(**case)
