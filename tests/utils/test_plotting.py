"""plot_metrics / the plotting CLI on a file-logger JSONL."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib
import matplotlib.image as mpimg
import pytest

from verl.utils.plotting import load_metric_series, plot_metrics, smooth


def _write_jsonl(path, rows, tail=""):
    with open(path, "w") as fp:
        for step, data in rows:
            fp.write(json.dumps({"step": step, "data": data}) + "\n")
        fp.write(tail)


def test_load_metric_series_keeps_last_value_per_step_and_skips_bad_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [(1, {"a": 1.0}), (2, {"a": 2.0, "b": "text"}), (2, {"a": 5.0}), (3, {"a": float("nan")})]
    _write_jsonl(path, rows, tail='{"step": 4, "data": {"a": 4')  # truncated last line
    assert load_metric_series(path, ["a", "b"]) == {"a": ([1, 2], [1.0, 5.0]), "b": ([], [])}


def test_smooth_is_a_debiased_ema():
    # step 1: 0.4*1 / (1-0.6) = 1; step 2: (0.6*0.4 + 0.4*2) / (1-0.36) = 1.04/0.64 = 1.625
    assert smooth([1.0, 2.0], weight=0.6) == pytest.approx([1.0, 1.625])
    assert smooth([3.0, 1.0], weight=0.0) == [3.0, 1.0]
    with pytest.raises(ValueError):
        smooth([1.0], weight=1.0)


def test_plot_metrics_writes_a_png_without_touching_the_global_backend(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_jsonl(path, [(s, {"critic/score/mean": s / 10, "response_length/mean": 20 - s}) for s in range(1, 11)])
    backend_before = matplotlib.get_backend()
    out = plot_metrics(path, tmp_path / "plots" / "curve.png", keys=("critic/score/mean", "response_length/mean"))
    assert matplotlib.get_backend() == backend_before
    image = mpimg.imread(out)
    # figure 7.0 x (2.6*2 + 0.6) inches at 100 dpi -> 700 x 580 pixels, RGBA
    assert image.shape == (580, 700, 4)
    assert image[..., :3].std() > 0.01  # something was drawn, not a blank canvas


def test_plot_metrics_names_available_keys_when_none_match(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_jsonl(path, [(1, {"actor/pg_loss": 0.1})])
    with pytest.raises(ValueError, match="actor/pg_loss"):
        plot_metrics(path, tmp_path / "x.png", keys=("critic/score/mean",))


def test_plotting_cli(tmp_path):
    path = tmp_path / "run.jsonl"
    _write_jsonl(path, [(s, {"critic/score/mean": float(s)}) for s in range(1, 4)])
    out = tmp_path / "cli.png"
    cmd = [sys.executable, "-m", "verl.utils.plotting", str(path), str(out), "--keys", "critic/score/mean"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert mpimg.imread(out).shape == (320, 700, 4)  # 7.0 x (2.6 + 0.6) inches at 100 dpi
    bad = subprocess.run(cmd[:-1] + ["nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "none of" in bad.stderr
