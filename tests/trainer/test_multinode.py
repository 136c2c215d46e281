"""Multi-node on Ray, simulated on one machine: a head node and a second node (``ray start --head`` and
``ray start --address``, 3 CPUs each). ``main_ppo`` joins the running cluster (``RAY_ADDRESS``; it must not pass
resources of its own there), places one group per node on both nodes, and ``trainer.nnodes=2
trainer.n_gpus_per_node=1`` GRPO gives the same numbers as the same run on one node with two ranks
(``nnodes=1 n_gpus_per_node=2``, on the session's local cluster). ``main_generation_server`` with the same shape
starts its two standalone replicas one per node."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

PLACEMENT_PROBE = """
import ray
from verl.single_controller.ray.base import RayResourcePool
from verl.trainer.config.build import build_trainer_config
from verl.trainer.main_ppo import init_ray
from verl.utils.config import compose_config
cfg = build_trainer_config(compose_config(overrides=[
    "actor_rollout_ref.model.path=/x", "actor_rollout_ref.rollout.name=hf", "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2", "trainer.n_gpus_per_node=2", "trainer.device=cpu",
]), check=False)
init_ray(cfg)  # joins the running cluster: Ray refuses num_cpus there ("When connecting to an existing cluster...")
print("CPUS", ray.cluster_resources().get("CPU"))
pool = RayResourcePool([1, 1], use_gpu=False, name_prefix="probe_")
pgs = pool.get_placement_groups(device_name="cpu")
table = ray.util.placement_group_table()
print("NODES", len({table[pg.id.hex()]["bundles_to_node_id"][0] for pg in pgs}), len(ray.nodes()))
pool.release()
"""

DETERMINISTIC = (
    "actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/kl_loss", "critic/score/mean", "critic/advantages/max",
    "response_length/mean", "actor/pg_clipfrac",
)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(text: bytes, log: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _overrides(tmp: Path, model: str, nnodes: int, per_node: int, name: str) -> list[str]:
    return [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={tmp / 'train.parquet'}",
        f"data.val_files={tmp / 'train.parquet'}",
        "data.train_batch_size=4",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        f"custom_reward_function.path={REPO / 'examples/quickstart/reward.py'}",
        "trainer.device=cpu",
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={per_node}",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={tmp / name}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.total_training_steps=2",
        "trainer.progress_bar=False",
    ]


def test_two_node_grpo_spans_both_nodes_and_equals_one_node(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    rows = [
        {
            "data_source": "quickstart/repeat_digit",
            "prompt": [{"role": "user", "content": f"Repeat the digit 7, please ({i})."}],
            "reward_model": {"style": "rule", "ground_truth": "7"},
            "extra_info": {"index": i},
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "train.parquet")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_AUTH_MODE"] = "disabled"  # a node joining by `ray start --address` would need the head's token file
    short_dir = tempfile.mkdtemp(prefix="rn-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    common = ["--num-cpus=3", "--block", "--disable-usage-stats"]
    head = _start(
        ["ray", "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={short_dir}", *common],
        tmp_path / "head.log",
        env,
    )
    second = None
    try:
        _wait_for(b"will now block", tmp_path / "head.log", head)
        second = _start(["ray", "start", f"--address=127.0.0.1:{port}", *common], tmp_path / "node2.log", env)
        _wait_for(b"will now block", tmp_path / "node2.log", second)
        driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": str(REPO)}
        probe = subprocess.run(
            [sys.executable, "-c", PLACEMENT_PROBE], env=driver_env, capture_output=True, text=True, timeout=120
        )
        assert probe.returncode == 0, probe.stderr[-3000:]
        assert "CPUS 6.0" in probe.stdout, probe.stdout  # the cluster's own resources, not a local instance's
        assert "NODES 2 2" in probe.stdout, probe.stdout  # one placement group per node, on two nodes

        # Phase 0 generation on the cluster: trainer.nnodes=2 x 1 device = two standalone replicas, one per node
        prompts = [{"prompt": [{"role": "user", "content": f"q{i}"}], "data_source": "toy"} for i in range(4)]
        pd.DataFrame(prompts).to_parquet(tmp_path / "prompts.parquet")
        gen_cmd = [sys.executable, "-m", "verl.trainer.main_generation_server", "trainer.device=cpu"]
        gen_cmd += ["trainer.nnodes=2", "trainer.n_gpus_per_node=1", f"actor_rollout_ref.model.path={tiny_model_dir}"]
        gen_cmd += [f"data.train_files={tmp_path / 'prompts.parquet'}", f"data.output_path={tmp_path / 'gen.parquet'}"]
        gen_cmd += ["actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.response_length=4"]
        gen_cmd += ["actor_rollout_ref.rollout.tensor_model_parallel_size=1"]  # one device per replica
        gen = subprocess.run(gen_cmd, cwd=tmp_path, env=driver_env, capture_output=True, text=True, timeout=300)
        assert gen.returncode == 0, gen.stdout[-3000:] + gen.stderr[-3000:]
        served = re.findall(r"replica (\d) \(hf\) serving at \S+ on node (\w+)", gen.stdout)
        assert len(served) == 2 and len({node for _, node in served}) == 2, gen.stdout[-3000:]
        assert set(pd.read_parquet(tmp_path / "gen.parquet")["status"]) == {"ok"}

        metrics = {}
        path = tmp_path / "two_nodes.jsonl"
        cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *_overrides(tmp_path, tiny_model_dir, 2, 1, "two_nodes")]
        run = subprocess.run(  # cwd: Hydra writes its outputs/ folder there
            cmd,
            cwd=tmp_path,
            env={**driver_env, "VERL_FILE_LOGGER_PATH": str(path)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        metrics["two_nodes"] = [json.loads(line)["data"] for line in path.read_text().splitlines()]
        # the reference on one node (this session's local cluster), in this process
        from verl.trainer.main_ppo import load_config, run_ppo
        from verl.utils.config import compose_config

        monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "one_node.jsonl"))
        run_ppo(load_config(compose_config("ppo_trainer", _overrides(tmp_path, tiny_model_dir, 1, 2, "one_node"))))
        metrics["one_node"] = [json.loads(x)["data"] for x in (tmp_path / "one_node.jsonl").read_text().splitlines()]
        assert len(metrics["two_nodes"]) == len(metrics["one_node"]) == 2
        for two, one in zip(metrics["two_nodes"], metrics["one_node"]):
            for key in DETERMINISTIC:
                assert two[key] == one[key], (key, two[key], one[key])
    finally:
        for proc in (second, head):  # SIGKILL to the whole process group: a graceful Ray stop takes ~30 s
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        shutil.rmtree(short_dir, ignore_errors=True)
