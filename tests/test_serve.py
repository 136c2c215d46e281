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
