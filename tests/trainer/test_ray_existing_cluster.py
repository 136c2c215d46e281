"""``main_ppo`` joins a Ray cluster that is already running (``ray start --head`` + ``RAY_ADDRESS``), the way every
multi-node job starts, instead of passing resources Ray refuses there ("When connecting to an existing cluster,
num_cpus and num_gpus must not be provided")."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROBE = """
import ray
from verl.trainer.main_ppo import init_ray
from verl.trainer.config.build import build_trainer_config
from verl.utils.config import compose_config
cfg = build_trainer_config(compose_config(overrides=[
    "actor_rollout_ref.model.path=/x", "actor_rollout_ref.rollout.name=hf", "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=2", "trainer.device=cpu",
]), check=False)
init_ray(cfg)
print("CPUS", ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_ppo_joins_a_running_cluster_with_its_resources(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    short_dir = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    log = open(tmp_path / "head.log", "wb")  # a file, not a pipe nobody reads (a full pipe blocks the head)
    head = subprocess.Popen(
        [
            "ray",
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=3",
            "--include-dashboard=false",
            f"--temp-dir={short_dir}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while b"will now block" not in (tmp_path / "head.log").read_bytes():  # the head prints it once it is up
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(1)
        probe_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
        result = subprocess.run(
            [sys.executable, "-c", PROBE], env=probe_env, capture_output=True, text=True, timeout=120
        )
        assert result is not None and result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "CPUS 3.0" in result.stdout  # the cluster's own resources, not a local instance's
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(short_dir, ignore_errors=True)
