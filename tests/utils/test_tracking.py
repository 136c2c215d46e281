"""Tracking backends: console line format, JSONL file, TensorBoard events, optional-package errors."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from verl.utils.logger import LocalLogger, concat_dict_to_str
from verl.utils.tracking import Tracking, ValidationGenerationsLogger, _MlflowLoggingAdapter


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("VERL_FILE_LOGGER_PATH", "VERL_FILE_LOGGER_ROOT", "TENSORBOARD_DIR", "WANDB_MODE", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_console_line_has_numeric_values_only():
    line = concat_dict_to_str({"loss": 0.25, "note": "skip me", "n": 3, "t": torch.tensor(1.5), "v": [1]}, step=7)
    assert line == "step:7 - loss:0.25 - n:3 - t:1.5"


def test_console_backend_prints_one_line_per_step(clean_env, capsys):
    tracker = Tracking("proj", "exp", default_backend="console")
    tracker.log({"critic/score/mean": 0.5}, step=1)
    tracker.log({"critic/score/mean": 0.75}, step=2)
    tracker.finish()
    assert capsys.readouterr().out.splitlines() == ["step:1 - critic/score/mean:0.5", "step:2 - critic/score/mean:0.75"]
    LocalLogger(print_to_console=False).log({"a": 1}, step=1)
    assert capsys.readouterr().out == ""


def test_file_backend_writes_json_lines_under_root(clean_env, tmp_path):
    clean_env.setenv("VERL_FILE_LOGGER_ROOT", str(tmp_path / "metrics"))
    tracker = Tracking("proj", "exp", default_backend=["file"])
    tracker.log({"critic/score/mean": 0.5, "t": torch.tensor(2.0), "text": "ok"}, step=1)
    path = tmp_path / "metrics" / "proj" / "exp.jsonl"
    # readable before finish(): each line is flushed, so a killed run keeps its metrics
    assert json.loads(path.read_text().splitlines()[0]) == {
        "step": 1,
        "data": {"critic/score/mean": 0.5, "t": 2.0, "text": "ok"},
    }
    tracker.log({"critic/score/mean": 0.25}, step=2)
    tracker.finish()
    tracker.finish()  # idempotent
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]


def test_file_backend_default_root_and_explicit_path(clean_env, tmp_path):
    tracker = Tracking("p", "e", default_backend="file")
    tracker.log({"x": 1}, step=3)
    tracker.finish()
    assert (tmp_path / "outputs" / "p" / "e.jsonl").exists()
    clean_env.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "exact.jsonl"))
    tracker = Tracking("p", "e", default_backend="file")
    tracker.log({"x": 2}, step=4)
    tracker.finish()
    assert json.loads((tmp_path / "exact.jsonl").read_text()) == {"step": 4, "data": {"x": 2}}


def test_tensorboard_backend_writes_event_file(clean_env, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    clean_env.setenv("TENSORBOARD_DIR", str(tmp_path / "tb"))
    tracker = Tracking("p", "e", default_backend="tensorboard")
    tracker.log({"critic/score/mean": 0.5, "skip": "text"}, step=1)
    tracker.log({"critic/score/mean": 0.75}, step=2)
    tracker.finish()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = acc.Scalars("critic/score/mean")
    assert [(s.step, s.value) for s in scalars] == [(1, 0.5), (2, 0.75)]


def test_tensorboard_default_dir(clean_env, tmp_path):
    Tracking("p", "e", default_backend="tensorboard").finish()
    assert (tmp_path / "tensorboard_log" / "p" / "e").is_dir()


def test_log_can_target_one_backend(clean_env, tmp_path, capsys):
    clean_env.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "m.jsonl"))
    tracker = Tracking("p", "e", default_backend=["console", "file"])
    assert capsys.readouterr().out.startswith("metrics (one JSON line per step) are written to ")
    tracker.log({"a": 1}, step=1, backend=["file"])
    tracker.finish()
    assert capsys.readouterr().out == ""
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 1


def test_unknown_backend_lists_supported(clean_env):
    with pytest.raises(ValueError, match="supported: console, file, tensorboard, wandb"):
        Tracking("p", "e", default_backend=["console", "nope"])
    with pytest.raises(ValueError, match="use 'wandb'"):
        Tracking("p", "e", default_backend="vemlp_wandb")


@pytest.mark.parametrize("backend", ["wandb", "mlflow", "swanlab", "clearml", "trackio"])
def test_missing_optional_package_names_pip_install(clean_env, backend):
    clean_env.setitem(sys.modules, backend, None)  # makes `import <backend>` raise ImportError
    with pytest.raises(ImportError, match=f"pip install {backend}"):
        Tracking("p", "e", default_backend=backend)


def test_wandb_offline_mode_is_passed_to_init(clean_env):
    calls = {}

    class FakeRun:
        def log(self, data, step):
            calls.setdefault("log", []).append((data, step))

        def finish(self):
            calls["finished"] = True

    def fake_init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    clean_env.setitem(sys.modules, "wandb", types.SimpleNamespace(init=fake_init))
    clean_env.setenv("WANDB_MODE", "offline")
    tracker = Tracking("p", "e", default_backend="wandb", config={"trainer": {"total_epochs": 1}})
    tracker.log({"x": 1.0}, step=3)
    tracker.finish()
    assert calls["init"] == {"project": "p", "name": "e", "config": {"trainer": {"total_epochs": 1}}, "mode": "offline"}
    assert calls["log"] == [({"x": 1.0}, 3)] and calls["finished"]


def test_config_from_omegaconf_is_resolved_to_plain_dict(clean_env):
    from omegaconf import OmegaConf

    seen = {}
    clean_env.setitem(
        sys.modules,
        "wandb",
        types.SimpleNamespace(init=lambda **kw: seen.update(kw) or types.SimpleNamespace(finish=lambda: None)),
    )
    cfg = OmegaConf.create({"a": 1, "b": "${a}"})
    Tracking("p", "e", default_backend="wandb", config=cfg).finish()
    assert seen["config"] == {"a": 1, "b": 1}


def test_mlflow_keys_are_sanitised(clean_env):
    sent = {}
    clean_env.setitem(
        sys.modules, "mlflow", types.SimpleNamespace(log_metrics=lambda metrics, step: sent.update(metrics))
    )
    _MlflowLoggingAdapter().log({"val-core/gsm8k/reward/mean@4": 1.0, "a//b#": 2.0, "s": "text"}, step=1)
    assert sent == {"val-core/gsm8k/reward/mean_at_4": 1.0, "a/b_": 2.0}


def test_validation_generations_console_and_file(clean_env, tmp_path, capsys):
    clean_env.setenv("VERL_FILE_LOGGER_ROOT", str(tmp_path / "m"))
    logger = ValidationGenerationsLogger("p", "e")
    logger.log(["console", "file", "mlflow"], samples=[("1+1=", "2", 1.0)], step=5)
    assert "score=1.0" in capsys.readouterr().out
    record = json.loads((tmp_path / "m" / "p" / "e_val_generations.jsonl").read_text())
    assert record == {"step": 5, "samples": [{"input": "1+1=", "output": "2", "score": 1.0}]}
