"""The console: a compact step line on a terminal, verl's full line elsewhere, third-party chatter off by default."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from verl.utils import console
from verl.utils.logger import LocalLogger

# A real step's metrics as the trainer logs them (values of the quick start, some made large on purpose).
STEP = {
    "global_seqlen/mean": 623.0,
    "actor/entropy": 6.20793,
    "actor/pg_loss": -0.0123456,
    "actor/kl_loss": 0.00123,
    "actor/ppo_kl": 0.0,
    "critic/score/mean": 0.125,
    "response_length/mean": 15.875,
    "timing_s/step": 123.456,
    "perf/throughput": 123456.7,
    "training/global_step": 12345,
}


def test_compact_line_shows_the_main_metrics_and_fits_80_columns():
    line = console.compact_step_line(STEP, step=12345)
    assert len(line) < 80, line
    for text in ("step 12345", "score 0.125", "loss -0.012", "kl 0.0012", "ent 6.21", "len 16", "123.5s"):
        assert text in line, line
    # the big throughput no longer fits: it is dropped whole, never cut in half
    assert "tok/s" not in line or line.endswith("tok/s")


def test_compact_line_keeps_what_fits_in_order():
    line = console.compact_step_line({**STEP, "timing_s/step": 0.41, "perf/throughput": 1520.0}, step=3)
    assert line == "step   3  score 0.125  loss -0.012  kl 0.0012  ent 6.21  len 16  0.4s 1520tok/s"
    assert len(line) < 80


def test_compact_line_of_a_validation_step_shows_its_core_metrics():
    line = console.compact_step_line({"val-core/quickstart/repeat_digit/reward/mean@1": 0.25, "val-aux/x": 1.0}, 0)
    assert line == "val    0  quickstart/repeat_digit/reward/mean@1 0.250"


def test_console_backend_full_when_not_a_terminal_and_compact_on_request(monkeypatch, capsys):
    monkeypatch.delenv("VERL_CONSOLE", raising=False)
    LocalLogger(print_to_console=True).log(STEP, step=1)  # pytest's captured stdout is not a terminal
    full = capsys.readouterr().out.strip()
    assert full.startswith("step:1 - global_seqlen/mean:623 - ") and "critic/score/mean:0.125" in full
    monkeypatch.setenv("VERL_CONSOLE", "compact")
    LocalLogger(print_to_console=True).log(STEP, step=1)
    assert capsys.readouterr().out.strip() == console.compact_step_line(STEP, step=1)


def test_terminal_output_is_compact_through_a_real_pty():
    """A real pseudo-terminal as stdout: the code path a user's shell takes."""
    pty = pytest.importorskip("pty")
    code = f"from verl.utils.logger import LocalLogger\nLocalLogger(print_to_console=True).log({STEP!r}, step=7)\n"
    env = {k: v for k, v in os.environ.items() if k != "VERL_CONSOLE"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=follower, stderr=subprocess.PIPE, env=env)
    os.close(follower)
    out = bytearray()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the child exits
            break
        if not chunk:
            break
        out.extend(chunk)
    proc.wait(timeout=60)
    os.close(leader)
    text = out.decode(errors="replace").strip()
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert text.startswith("step   7  score 0.125"), text
    assert "\x1b[" not in text


def test_quiet_third_party_sets_only_what_the_user_left_unset(monkeypatch):
    for name in (
        "VLLM_LOGGING_LEVEL",
        "TORCH_CPP_LOG_LEVEL",
        "VERL_LOGGING_LEVEL",
        "PYTHONWARNINGS",
        "RAY_COLOR_PREFIX",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCH_CPP_LOG_LEVEL", "INFO")  # the user's own choice stays
    chosen = console.quiet_third_party()
    assert chosen["VLLM_LOGGING_LEVEL"] == "ERROR" and os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert "TORCH_CPP_LOG_LEVEL" not in chosen and os.environ["TORCH_CPP_LOG_LEVEL"] == "INFO"
    assert chosen["RAY_COLOR_PREFIX"] == "0"  # not a terminal: no colour codes from Ray's log prefixes
    assert "reduce_op" in chosen["PYTHONWARNINGS"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        console.quiet_third_party()
        warnings.warn("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning, stacklevel=1)
        warnings.warn("something else", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_verbose_keeps_everything(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.setenv("VERL_LOGGING_LEVEL", "INFO")
    assert console.quiet_third_party() == {}
    assert "VLLM_LOGGING_LEVEL" not in os.environ


def test_vllm_reads_the_level_at_import_and_stays_quiet():
    """vLLM configures its loggers from its own VLLM_LOGGING_LEVEL setting when an engine starts."""
    pytest.importorskip("vllm")
    code = (
        "from verl.utils.console import quiet_third_party; quiet_third_party()\n"
        "import vllm.envs\n"
        "print(vllm.envs.VLLM_LOGGING_LEVEL)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_LEVEL", "VERL_LOGGING_LEVEL")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "ERROR", out.stdout + out.stderr
