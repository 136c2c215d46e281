"""Bad input to ``python -m verl.trainer.main_ppo`` stops early with a message that names the culprit.

Each case runs the real entry point in a subprocess and checks the message, and that Ray was never started
(the checks happen before any expensive work).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data")
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
    pd.DataFrame(rows).drop(columns=["prompt"]).rename(columns={"data_source": "source"}).to_parquet(
        out / "no_prompt.parquet"
    )
    return str(out)


def _main_ppo(*overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "verl.trainer.main_ppo", *overrides],
        cwd=tempfile.mkdtemp(prefix="main_ppo_errors_"),  # Hydra's outputs/ folder goes there, not into the repo
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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


def _assert_fails_naming(result: subprocess.CompletedProcess, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    for needle in needles:
        assert needle in output, f"{needle!r} not in output:\n{output[-3000:]}"
    assert "Started a local Ray instance" not in output, "the check must fire before Ray starts"


def test_unknown_config_key_is_named(tiny_model_dir, good_data):
    result = _main_ppo(*_base(tiny_model_dir, good_data), "actor_rollout_ref.actor.ppo_mini_batchsize=2")
    _assert_fails_naming(result, "ppo_mini_batchsize")


def test_missing_data_file_is_named(tiny_model_dir, good_data):
    overrides = _base(tiny_model_dir, good_data) + [f"data.train_files={good_data}/nope.parquet"]
    _assert_fails_naming(_main_ppo(*overrides), "nope.parquet")


def test_missing_prompt_column_is_named(tiny_model_dir, good_data):
    overrides = _base(tiny_model_dir, good_data) + [f"data.train_files={good_data}/no_prompt.parquet"]
    _assert_fails_naming(_main_ppo(*overrides), "prompt", "no_prompt.parquet")


def test_mini_batch_that_does_not_divide_the_batch_is_named(tiny_model_dir, good_data):
    overrides = _base(tiny_model_dir, good_data) + ["actor_rollout_ref.actor.ppo_mini_batch_size=3"]
    _assert_fails_naming(_main_ppo(*overrides), "ppo_mini_batch_size")


def test_unreachable_model_path_is_named(tiny_model_dir, good_data, tmp_path):
    overrides = _base(tiny_model_dir, good_data) + [f"actor_rollout_ref.model.path={tmp_path}/no_such_model"]
    _assert_fails_naming(_main_ppo(*overrides), "no_such_model")


# ---- rollout set-up (engines, interactions, logit capture): refused before Ray ------------------------------------
def _multi_turn_data(out: Path, name: str) -> str:
    rows = [
        {
            "data_source": "dialog",
            "prompt": [{"role": "user", "content": f"Is paper {i} by author A?"}],
            "reward_model": {"style": "rule", "ground_truth": "yes"},
            "extra_info": {"index": i, "interaction_kwargs": {"name": name, "label": "yes"}},
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(out / f"mt_{name}.parquet")
    return str(out / f"mt_{name}.parquet")


def _interaction_yaml(out: Path) -> str:
    path = out / "interactions.yaml"
    path.write_text(
        "interaction:\n"
        "  - name: dialog\n"
        "    class_name: verl.interactions.multiturn_dialog_interaction.MultiTurnDialogInteraction\n"
        "    config: {}\n"
    )
    return str(path)


def test_uninstalled_engine_is_named_before_ray(tiny_model_dir, good_data):
    try:
        import sglang  # noqa: F401

        pytest.skip("sglang is installed here")
    except ImportError:
        pass
    sglang = ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.tensor_model_parallel_size=1")
    result = _main_ppo(*_base(tiny_model_dir, good_data), *sglang)
    _assert_fails_naming(result, "actor_rollout_ref.rollout.name=sglang", "verl[sglang]")
    # verl's default rollout TP (2) is refused for the hybrid SGLang engine first, naming the key and the fix
    result = _main_ppo(*_base(tiny_model_dir, good_data), sglang[0])
    _assert_fails_naming(result, "actor_rollout_ref.rollout.tensor_model_parallel_size=2", "set 1")


def test_misspelt_logit_capture_mode_is_named(tiny_model_dir, good_data):
    result = _main_ppo(
        *_base(tiny_model_dir, good_data),
        "actor_rollout_ref.rollout.logit_capture.enable=True",
        "actor_rollout_ref.rollout.logit_capture.mode=topkk",
    )
    _assert_fails_naming(result, "actor_rollout_ref.rollout.logit_capture.mode='topkk'")


def test_full_logit_capture_over_budget_is_refused_with_the_estimate(tiny_model_dir, good_data):
    pytest.importorskip("verl.workers.rollout.logit_capture")
    result = _main_ppo(
        *_base(tiny_model_dir, good_data),
        "actor_rollout_ref.rollout.logit_capture.enable=True",
        "actor_rollout_ref.rollout.logit_capture.mode=full",
        "actor_rollout_ref.rollout.logit_capture.max_bytes=1000",
    )
    _assert_fails_naming(result, "actor_rollout_ref.rollout.logit_capture.max_bytes", "bytes")


def test_missing_interaction_yaml_is_named(tiny_model_dir, good_data, tmp_path):
    pytest.importorskip("verl.interactions.utils.interaction_registry")
    result = _main_ppo(
        *_base(tiny_model_dir, good_data),
        "actor_rollout_ref.rollout.multi_turn.enable=True",
        "data.return_raw_chat=True",
        f"actor_rollout_ref.rollout.multi_turn.interaction_config_path={tmp_path / 'nope.yaml'}",
    )
    _assert_fails_naming(result, "interaction_config_path", "nope.yaml")


def test_unknown_interaction_name_in_the_data_is_named(tiny_model_dir, tmp_path):
    pytest.importorskip("verl.interactions.utils.interaction_registry")
    data = _multi_turn_data(tmp_path, "dialgo")
    base = [o for o in _base(tiny_model_dir, str(tmp_path)) if not o.startswith(("data.train_files", "data.val_files"))]
    result = _main_ppo(
        *base,
        f"data.train_files={data}",
        f"data.val_files={data}",
        "actor_rollout_ref.rollout.multi_turn.enable=True",
        "data.return_raw_chat=True",
        f"actor_rollout_ref.rollout.multi_turn.interaction_config_path={_interaction_yaml(tmp_path)}",
    )
    _assert_fails_naming(result, "'dialgo'", "dialog")


def test_missing_lora_adapter_and_indivisible_ulysses_heads_are_named_before_ray(tiny_model_dir, tmp_path):
    """main_ppo's pre-Ray checks of the FSDP model set-up (called here directly: no subprocess needed)."""
    from verl.trainer.config.build import build_trainer_config
    from verl.trainer.main_ppo import _check_fsdp_models
    from verl.utils.config import compose_config

    def config(*extra: str):
        overrides = [f"actor_rollout_ref.model.path={tiny_model_dir}", "actor_rollout_ref.rollout.name=hf", *extra]
        return build_trainer_config(compose_config(overrides=overrides), check=False)

    lora = config("actor_rollout_ref.model.lora_rank=8", f"actor_rollout_ref.model.lora_adapter_path={tmp_path}")
    with pytest.raises(FileNotFoundError, match=r"lora_adapter_path=.* has no adapter_config.json"):
        _check_fsdp_models(lora, tiny_model_dir, use_critic=False)
    # the tiny model has 4 attention heads: 3 sequence-parallel ranks cannot split them
    split = config("actor_rollout_ref.actor.ulysses_sequence_parallel_size=3")
    with pytest.raises(ValueError, match=r"ulysses_sequence_parallel_size=3: the model has 4 attention heads"):
        _check_fsdp_models(split, tiny_model_dir, use_critic=False)
    critic = config(
        "critic.ulysses_sequence_parallel_size=3",
        "critic.model.use_remove_padding=True",
        f"critic.model.path={tiny_model_dir}",
    )
    with pytest.raises(ValueError, match=r"critic.ulysses_sequence_parallel_size=3"):
        _check_fsdp_models(critic, tiny_model_dir, use_critic=True)
    _check_fsdp_models(config("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"), tiny_model_dir, False)
