"""Bad input gets one paragraph that names the key, the value and the fix, and no stack trace.

Each command runs in a subprocess the way a user types it (no ``HYDRA_FULL_ERROR``), from a temporary folder so
that Hydra's ``outputs/`` folder never lands in the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from verl.utils.cli_errors import check_overrides, config_keys, unknown_key_message

CONFIG_DIR = os.path.join(os.path.dirname(__import__("verl").__file__), "trainer", "config")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("cli_data")
    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
            "extra_info": {"index": i},
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(out / "train.parquet")
    pd.DataFrame([{**r, "data_source": "my_task"} for r in rows]).to_parquet(out / "unscored.parquet")
    return str(out)


def _base(model_dir: str, data_dir: str) -> list[str]:
    return [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={data_dir}/train.parquet",
        f"data.val_files={data_dir}/train.parquet",
        "data.train_batch_size=4",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "trainer.n_gpus_per_node=2",
        "trainer.device=cpu",
        "trainer.logger=console",
    ]


def _run(module: str, *args: str, cwd, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "VERL_FULL_ERROR")}
    env.update(HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_paragraph(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    error = output[output.index(": error:") :] if ": error:" in output else ""
    assert error, f"no error paragraph in:\n{output[-3000:]}"
    for needle in needles:
        assert needle in " ".join(error.split()), f"{needle!r} not in the error paragraph:\n{error}"
    assert "Traceback" not in output, output[-3000:]
    assert "Started a local Ray instance" not in output
    assert len(error.splitlines()) <= 12, error
    return error


# ------------------------------------------------------------------------------------------------ main_ppo
def test_misspelt_key_names_the_closest_key_and_the_syntax_to_add_one(tiny_model_dir, data_dir, tmp_path):
    result = _run(
        "verl.trainer.main_ppo",
        *_base(tiny_model_dir, data_dir),
        "actor_rollout_ref.actor.optim.lrr=1e-3",
        "trainer.totl_epochs=3",
        cwd=tmp_path,
    )
    error = _assert_paragraph(
        result,
        2,
        "unknown config key 'actor_rollout_ref.actor.optim.lrr'",
        "Did you mean 'actor_rollout_ref.actor.optim.lr'?",
        "+actor_rollout_ref.actor.optim.lrr=1e-3",
        "--help actor_rollout_ref.actor.optim",
        "unknown config key 'trainer.totl_epochs'",  # every unknown key at once
        "Did you mean 'trainer.total_epochs'?",
    )
    assert "Could not override" not in error  # Hydra's own message (with its misleading +key hint) is replaced


def test_key_under_the_wrong_node_is_found_elsewhere_in_the_tree(tiny_model_dir, data_dir, tmp_path):
    result = _run(
        "verl.trainer.main_ppo", *_base(tiny_model_dir, data_dir), "actor_rollout_ref.optim.lr=1", cwd=tmp_path
    )
    _assert_paragraph(result, 2, "'actor_rollout_ref.optim.lr'", "'actor_rollout_ref.actor.optim.lr'")


def test_missing_model_path_names_the_key_value_and_how_to_build_one(tiny_model_dir, data_dir, tmp_path):
    missing = str(tmp_path / "no_model")
    result = _run(
        "verl.trainer.main_ppo",
        *_base(tiny_model_dir, data_dir),
        f"actor_rollout_ref.model.path={missing}",
        cwd=tmp_path,
    )
    _assert_paragraph(
        result,
        1,
        f"actor_rollout_ref.model.path='{missing}' does not exist",
        "Hugging Face model directory",
        "python -m verl.utils.testing.tiny",
    )


def test_missing_data_file_names_the_key_value_and_what_is_expected(tiny_model_dir, data_dir, tmp_path):
    missing = str(tmp_path / "val.parquet")
    result = _run("verl.trainer.main_ppo", *_base(tiny_model_dir, data_dir), f"data.val_files={missing}", cwd=tmp_path)
    _assert_paragraph(result, 1, f"data.val_files='{missing}': no such file", "prompt", "make_data.py")


def test_bad_value_names_the_key_the_value_and_the_allowed_values(tiny_model_dir, data_dir, tmp_path):
    result = _run(
        "verl.trainer.main_ppo",
        *_base(tiny_model_dir, data_dir),
        "actor_rollout_ref.actor.loss_agg_mode=tokenmean",
        cwd=tmp_path,
    )
    _assert_paragraph(
        result,
        1,
        "actor_rollout_ref.actor.loss_agg_mode='tokenmean'",
        "did you mean 'token-mean'?",
        "'seq-mean-token-sum'",
    )


def test_data_source_without_a_reward_rule_is_refused_before_ray(tiny_model_dir, data_dir, tmp_path):
    result = _run(
        "verl.trainer.main_ppo",
        *_base(tiny_model_dir, data_dir),
        f"data.train_files={data_dir}/unscored.parquet",
        cwd=tmp_path,
    )
    _assert_paragraph(result, 1, "data_source='my_task'", "data.reward_fn_key", "custom_reward_function.path=")


def test_full_error_brings_the_stack_trace_back(tiny_model_dir, data_dir, tmp_path):
    result = _run(
        "verl.trainer.main_ppo",
        *_base(tiny_model_dir, data_dir),
        f"actor_rollout_ref.model.path={tmp_path}/none",
        cwd=tmp_path,
        full_error=True,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "actor_rollout_ref.model.path" in result.stderr


def test_the_checkout_is_not_written_by_a_failed_run(tiny_model_dir, data_dir, tmp_path):
    _run("verl.trainer.main_ppo", *_base(tiny_model_dir, data_dir), "trainer.totl_epochs=3", cwd=tmp_path)
    assert not (tmp_path / "outputs").exists()  # an unknown key stops before Hydra makes its run folder


# ------------------------------------------------------------------------------------------------ main_eval
def test_main_eval_names_a_misspelt_key_and_a_missing_file(tmp_path):
    result = _run("verl.trainer.main_eval", "data.pth=x.parquet", cwd=tmp_path)
    _assert_paragraph(result, 2, "unknown config key 'data.pth'", "Did you mean 'data.path'?")
    result = _run("verl.trainer.main_eval", f"data.path={tmp_path}/gen.parquet", cwd=tmp_path)
    _assert_paragraph(result, 1, f"data.path='{tmp_path}/gen.parquet' does not exist", "generation step")


# ------------------------------------------------------------------------------------------------ the pieces
def test_check_overrides_accepts_known_added_and_group_keys():
    assert (
        check_overrides(["trainer.total_epochs=3", "+trainer.my_key=1", "~trainer.val_only"], CONFIG_DIR, "ppo_trainer")
        is None
    )
    assert check_overrides(["hydra.run.dir=/tmp/x", "--config-name", "ppo_trainer"], CONFIG_DIR, "ppo_trainer") is None


def test_check_overrides_honours_another_config_name():
    problem = check_overrides(
        ["--config-name=ppo_megatron_trainer", "actor_rollout_ref.actor.megatron.tensor_model_parallel_sizee=2"],
        CONFIG_DIR,
        "ppo_trainer",
    )
    assert problem is not None and "tensor_model_parallel_size'" in problem


def test_suggestions_prefer_siblings_then_the_same_leaf_elsewhere():
    known = config_keys({"a": {"optim": {"lr": 1, "clip_grad": 2}, "model": {"path": 1}}, "b": {"lr": 3}})
    assert "Did you mean 'a.optim.lr'?" in unknown_key_message("a.optim.lrr", "1", known)
    text = unknown_key_message("optim.lr", "1", known)
    assert "'a.optim.lr'" in text and "+optim.lr=1" in text
    assert "Did you mean" not in unknown_key_message("zzz.qqq", "1", known)


def test_main_generation_server_names_a_misspelt_key(tmp_path):
    examples = os.path.join(os.path.dirname(CONFIG_DIR), "..", "..", "examples", "phase0")
    args = ["--config-path", os.path.abspath(examples), "--config-name", "phase0_eval"]
    result = _run(
        "verl.trainer.main_generation_server", *args, "actor_rollout_ref.rollout.respone_length=64", cwd=tmp_path
    )
    _assert_paragraph(
        result, 2, "'actor_rollout_ref.rollout.respone_length'", "'actor_rollout_ref.rollout.response_length'"
    )
