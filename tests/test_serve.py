"""``python -m verl.serve`` as a subprocess: --help, start, serve, SIGTERM stops it and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest


def _children(pid: int) -> list[int]:
    """Every descendant pid of ``pid`` (from /proc; Linux)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except OSError:
            kids = []
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split(")")[-1].split()[0] != "Z"


def test_help_lists_the_options():
    out = subprocess.run([sys.executable, "-m", "verl.serve", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("MODEL_PATH".lower(), "--host", "--port", "--api-key", "--served-model-name", "--backend"):
        assert option in out.stdout.lower()


def test_no_arguments_prints_what_to_pass_and_an_example(tmp_path):
    out = subprocess.run([sys.executable, "-m", "verl.serve"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 5, out.stderr  # short: not argparse's list of every option
    assert lines[0].startswith("usage: python -m verl.serve MODEL_PATH")
    assert "MODEL_PATH is required" in out.stderr
    assert "example: python -m verl.serve models/tiny --port 8000" in out.stderr
    assert "python -m verl.utils.testing.tiny models/tiny" in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_model_path_that_does_not_exist_is_named_without_a_traceback(tmp_path):
    missing = str(tmp_path / "no" / "such" / "model")
    out = subprocess.run(
        [sys.executable, "-m", "verl.serve", missing], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"MODEL_PATH {missing}: no such directory" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_answers_and_stops_on_signal(tiny_model_dir, sig):
    cmd = [sys.executable, "-m", "verl.serve", tiny_model_dir, "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--served-model-name", "tiny", "--api-key", "k"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, address = time.monotonic() + 120, None
        while address is None:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "verl.serve exited before it was ready"
            assert time.monotonic() < deadline, "verl.serve did not print its address in time"
            if "ready at " in line:
                address = line.split("ready at ")[1].split()[0]
        request = urllib.request.Request(
            f"{address}/v1/completions",
            data=json.dumps({"model": "tiny", "prompt": "one two", "max_tokens": 3}).encode(),
            headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] == 3
        descendants = _children(proc.pid)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert "shutting down" in proc.stdout.read()
        assert not [p for p in descendants if _alive(p)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
