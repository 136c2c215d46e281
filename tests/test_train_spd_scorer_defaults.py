"""``train_spd_scorer.py`` and ``python -m verl.utils.dataset.spd_dataset`` run as a newcomer types them: only
``--model_path``, ``--target_model_url`` and ``--n_gpus``. Every command runs in a subprocess whose working
directory is a fresh tmp dir, so the relative defaults (``data/spd/train.parquet``, ``checkpoints/spd_scorer/...``)
land there. Training itself is not started (``--dry_run`` stops after the config is composed); the full GRPO run
is ``tests/test_train_spd_scorer.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "train_spd_scorer.py")
URL = "http://127.0.0.1:9/v1/completions"  # never contacted: nothing here reaches the reward


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory laid out as the README leaves it: ``models/draft``, ``models/target`` and the SPD data written
    by the dataset CLI to its default output (``data/spd/train.parquet``, whose parent does not exist before)."""
    from verl.utils.testing.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("spd_defaults")
    build_tiny_model(root / "models" / "target", seed=0)
    build_tiny_model(root / "models" / "draft", seed=0, weights_seed=1, init_std=0.2)
    rows = [
        {
            "data_source": "toy",
            "prompt": [{"role": "user", "content": f"Repeat the digit {d}."}],
            "reward_model": {"style": "rule", "ground_truth": str(d)},
        }
        for d in range(10)
    ]
    pd.DataFrame(rows).to_parquet(root / "prompts.parquet")
    assert not (root / "data").exists()
    cmd = [sys.executable, "-m", "verl.utils.dataset.spd_dataset", "--draft_model_path", "models/draft"]
    cmd += ["--target_model_path", "models/target", "--prompts", "prompts.parquet", "--max_draft_tokens", "3"]
    done = _run(cmd, root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 10 rows to data/spd/train.parquet" in done.stdout
    assert len(pd.read_parquet(root / "data" / "spd" / "train.parquet")) == 10
    return root


def test_default_train_files_is_where_the_dataset_cli_writes():
    import train_spd_scorer
    from verl.utils.dataset import spd_dataset

    assert spd_dataset.DEFAULT_SPD_DATA == "data/spd/train.parquet"
    args, _ = train_spd_scorer.parse_args(["--model_path", "m", "--target_model_url", URL])
    assert args.train_files == spd_dataset.DEFAULT_SPD_DATA


def test_missing_data_is_one_line_naming_the_path_and_the_command_that_builds_it(tmp_path):
    done = _run(
        [sys.executable, SCRIPT, "--model_path", "models/draft", "--target_model_url", URL, "--n_gpus", "2"], tmp_path
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "no SPD data at data/spd/train.parquet (--train_files)" in done.stderr
    assert (
        "python -m verl.utils.dataset.spd_dataset --draft_model_path models/draft "
        "--target_model_path TARGET_MODEL_DIR --prompts PROMPTS.parquet" in done.stderr
    )
    assert list(tmp_path.iterdir()) == []  # nothing created before the check


def test_missing_custom_data_path_adds_output_to_the_build_command(tmp_path):
    cmd = [sys.executable, SCRIPT, "--model_path", "m", "--target_model_url", URL, "--train_files", "mine/x.parquet"]
    done = _run(cmd, tmp_path)
    assert done.returncode == 2
    assert "no SPD data at mine/x.parquet" in done.stderr
    assert done.stderr.strip().endswith("--prompts PROMPTS.parquet --output mine/x.parquet")


def test_defaults_give_one_epoch_of_steps_and_a_checkpoints_dir(workspace, tmp_path):
    shutil.copytree(workspace / "data", tmp_path / "data")
    draft = str(workspace / "models" / "draft")
    done = _run(
        [sys.executable, SCRIPT, "--model_path", draft, "--target_model_url", URL, "--n_gpus", "2", "--dry_run"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 10 rows, default --batch_size 8, default --total_epochs 1: one full batch (the short last one is dropped)
    assert "1 steps (--total_epochs 1 x 1 batches per epoch: 10 rows // --batch_size 8)" in done.stdout
    assert "output in checkpoints/spd_scorer/draft" in done.stdout
    assert "trainer.total_training_steps=1 trainer.default_local_dir=checkpoints/spd_scorer/draft/checkpoints" in (
        done.stdout
    )
    out = tmp_path / "checkpoints" / "spd_scorer" / "draft"
    assert (out / "scorer_init" / "config.json").is_file()  # created by the command, relative to its cwd


def test_epochs_batch_size_and_output_dir_set_the_steps_and_experiment(workspace, tmp_path):
    shutil.copytree(workspace / "data", tmp_path / "data")
    cmd = [sys.executable, SCRIPT, "--model_path", str(workspace / "models" / "draft"), "--target_model_url", URL]
    cmd += ["--total_epochs", "3", "--batch_size", "4", "--output_dir", "runs/exp1", "--dry_run"]
    done = _run(cmd, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 steps (--total_epochs 3 x 2 batches per epoch: 10 rows // --batch_size 4)" in done.stdout
    assert "trainer.default_local_dir=runs/exp1/checkpoints" in done.stdout
    assert (tmp_path / "runs" / "exp1" / "scorer_init" / "config.json").is_file()
    assert not (tmp_path / "checkpoints").exists()


def test_batch_larger_than_the_data_is_one_line(workspace, tmp_path):
    shutil.copytree(workspace / "data", tmp_path / "data")
    cmd = [sys.executable, SCRIPT, "--model_path", "m", "--target_model_url", URL, "--batch_size", "16"]
    done = _run(cmd, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "train_spd_scorer: error: data/spd/train.parquet has 10 rows, fewer than one batch (--batch_size 16); "
        "lower --batch_size or add rows"
    )


def test_help_states_each_default(tmp_path):
    done = _run([sys.executable, SCRIPT, "--help"], tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # undo argparse's line wrapping
    assert "(default: data/spd/train.parquet, where that command writes by default)" in text
    assert "(default: total_epochs x full batches per epoch, i.e. rows // batch_size)" in text
    assert (
        "--total_epochs TOTAL_EPOCHS passes over the data when --total_training_steps is not given (default: 1)" in text
    )
    assert "(default: checkpoints/spd_scorer/EXPERIMENT_NAME, created)" in text
    assert "(default: None)" not in text
