"""``python -m recipe.dapo.main_dapo key=value ...``: ``main_ppo`` with DAPO's settings as the defaults.

verl's DAPO scripts call ``python3 -m recipe.dapo.main_dapo``; here every part of DAPO is in the trainer itself
(clip-higher, token-level loss, dynamic sampling with ``algorithm.filter_groups``, the overlong penalty of the
``dapo`` reward manager), so the recipe is these defaults in front of the command line: any key the command line
sets wins. ``--help`` and unknown-key checks are ``main_ppo``'s.
"""

from __future__ import annotations

import sys

# DAPO's settings (paper section 3 and its reference scripts). The overlong buffer depends on the response length,
# so it stays on the command line: +reward_model.reward_kwargs.overlong_buffer_cfg.{enable,len,penalty_factor,log}
# and +reward_model.reward_kwargs.max_resp_len (see README.md).
DAPO_DEFAULTS = [
    "algorithm.adv_estimator=grpo",
    "algorithm.use_kl_in_reward=False",
    "algorithm.kl_ctrl.kl_coef=0.0",
    "algorithm.filter_groups.enable=True",  # dynamic sampling: keep groups whose accuracy varies
    "algorithm.filter_groups.metric=acc",
    "algorithm.filter_groups.max_num_gen_batches=10",
    "actor_rollout_ref.actor.clip_ratio_low=0.2",  # clip-higher: a wider upper clip than the lower
    "actor_rollout_ref.actor.clip_ratio_high=0.28",
    "actor_rollout_ref.actor.clip_ratio_c=10.0",
    "actor_rollout_ref.actor.loss_agg_mode=token-mean",  # token-level policy-gradient loss
    "actor_rollout_ref.actor.use_kl_loss=False",
    "actor_rollout_ref.actor.kl_loss_coef=0.0",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "reward_model.reward_manager=dapo",
    "trainer.project_name=verl-dapo",
]


def main(argv: list[str] | None = None) -> None:
    import runpy

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        sys.argv = ["main_ppo", *argv]
    else:
        sys.argv = ["main_ppo", *DAPO_DEFAULTS, *argv]
    runpy.run_module("verl.trainer.main_ppo", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
