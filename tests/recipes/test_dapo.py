"""recipe/dapo: ``python -m recipe.dapo.main_dapo`` is ``main_ppo`` with DAPO's settings in front of the command line
(which still wins), and two steps on the tiny model show its distinctive parts working: dynamic sampling,
clip-higher and the overlong penalty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from recipe.dapo.main_dapo import DAPO_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
DENSE_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (sum(map(ord, solution_str)) % 11) / 10.0
"""


def _overrides(tmp_path: Path, model: str) -> list[str]:
    rows = [
        {
            "data_source": "quickstart/repeat_digit",
            "prompt": [{"role": "user", "content": f"Repeat the digit 7, please ({i})."}],
            "reward_model": {"style": "rule", "ground_truth": "7"},
            "extra_info": {"index": i},
        }
        for i in range(16)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    reward = tmp_path / "dense_reward.py"  # a score in [0, 1] that varies within a group (the untrained model
    reward.write_text(DENSE_REWARD)  # scores 0 on the quick start's own task, so no group would vary)
    return [
        f"data.train_files={tmp_path / 'train.parquet'}", f"data.val_files={tmp_path / 'train.parquet'}",
        "data.gen_batch_size=8", "data.train_batch_size=4", "data.max_prompt_length=32", "data.max_response_length=8",
        "data.dataloader_num_workers=0", f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=True",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.len=6",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.log=False",
        "+reward_model.reward_kwargs.max_resp_len=8",
        f"custom_reward_function.path={reward}",
        "trainer.device=cpu", "trainer.n_gpus_per_node=2", "trainer.logger=[console,file]",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}", "trainer.val_before_train=False", "trainer.test_freq=-1",
        "trainer.save_freq=-1", "trainer.total_training_steps=2", "trainer.progress_bar=False",
    ]  # fmt: skip


def test_the_command_line_wins_over_dapo_defaults():
    from verl.utils.config import compose_config

    minimal = ["actor_rollout_ref.model.path=/x", "actor_rollout_ref.rollout.name=hf", "data.train_batch_size=4",
               "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
               "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2", "trainer.device=cpu"]  # fmt: skip
    from verl.trainer.config.build import build_trainer_config

    overrides = [*DAPO_DEFAULTS, *minimal, "actor_rollout_ref.actor.clip_ratio_high=0.3"]
    config = build_trainer_config(compose_config("ppo_trainer", overrides), check=False)
    actor = config.actor_rollout_ref.actor
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.loss_agg_mode) == (0.2, 0.3, "token-mean")
    assert config.algorithm.filter_groups.enable and config.algorithm.filter_groups.metric == "acc"
    assert config.reward_model.reward_manager == "dapo" and not actor.use_kl_loss


def test_main_dapo_is_main_ppos_command_line(tmp_path):
    """The module runs main_ppo's CLI with the defaults in front: they pass its key check, a misspelt key is named."""
    result = subprocess.run(
        [sys.executable, "-m", "recipe.dapo.main_dapo", "actor_rollout_ref.actor.clip_ratio_hgh=0.3"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "clip_ratio_hgh" in result.stderr and "clip_ratio_high" in result.stderr  # "did you mean"


def test_dapo_trains_and_its_parts_show_in_the_metrics(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    from verl.trainer.main_ppo import load_config, run_ppo
    from verl.utils.config import compose_config

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "m.jsonl"))
    run_ppo(load_config(compose_config("ppo_trainer", [*DAPO_DEFAULTS, *_overrides(tmp_path, tiny_model_dir)])))
    steps = [json.loads(line)["data"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(steps) == 2
    for step in steps:
        assert step["train/num_gen_batches"] >= 1  # dynamic sampling ran
        assert "actor/pg_clipfrac" in step and "actor/pg_clipfrac_lower" in step
        # the untrained model's responses run into the overlong buffer (the last 6 of 8 tokens), so the penalty
        # pushes some sequence rewards below 0, which the score itself (in [0, 1]) never is
        assert step["critic/score/min"] < 0, step["critic/score/min"]
