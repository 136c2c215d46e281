"""``train_spd_scorer.py`` end to end on CPU: tiny draft/target models, the SPD dataset, a target served over HTTP
(our ``OpenAIServer``; under the ``vllm`` marker a real vLLM OpenAI server), a few GRPO steps on 2 ranks, the SPD
metrics, and a checkpoint that loads back as a ``ScoringActor``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spd_data(tiny_model_dir, tmp_path_factory) -> dict:
    from verl.utils.dataset.spd_dataset import build_spd_dataset
    from verl.utils.testing.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("spd")
    draft = build_tiny_model(root / "draft", seed=0, weights_seed=1, init_std=0.2)  # the target's tokenizer
    rows = [
        {
            "data_source": "toy",
            "prompt": [{"role": "user", "content": f"Repeat the digit {d} ({i})."}],
            "reward_model": {"style": "rule", "ground_truth": str(d)},
            "extra_info": {"index": i},
        }
        for i, d in enumerate([7, 3, 5, 1, 2, 4, 6, 8])
    ]
    pd.DataFrame(rows).to_parquet(root / "prompts.parquet")
    build_spd_dataset(str(draft), tiny_model_dir, str(root / "prompts.parquet"), str(root / "data.parquet"), 6)
    return {"root": root, "draft": str(draft), "data": str(root / "data.parquet")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(address: str, proc: subprocess.Popen | None, log: Path | None, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"target server at {address} did not start:\n{tail}")
        try:
            with urllib.request.urlopen(f"{address}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1)


def _train(spd_data: dict, url: str, out: Path) -> list[dict]:
    cmd = [sys.executable, str(REPO / "train_spd_scorer.py"), "--model_path", spd_data["draft"]]
    cmd += ["--target_model_url", url, "--n_gpus", "2", "--train_files", spd_data["data"]]
    cmd += ["--total_training_steps", "2", "--output_dir", str(out), "--batch_size", "4", "--rollout_n", "4"]
    cmd += ["--device", "cpu", "--max_tokens", "8"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl")}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _check_run(rows: list[dict], out: Path) -> None:
    import math

    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        data = row["data"]
        for key in ("spd/acceptance_rate", "spd/accepted_length_mean", "spd/accuracy", "spd/target_latency_s/mean"):
            assert math.isfinite(data[key]), key
        for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean"):
            assert math.isfinite(data[key]), key
        # every sampled decision vector lands in exactly one scenario: 4 samples x 4 decision vectors
        assert sum(data[f"spd/scenario_{s}"] for s in "ABCD") + data["spd/target_failures"] == 16
        assert data["spd/target_failures"] == 0
    # the final checkpoint's HF export loads back as a scorer
    from transformers import AutoModelForCausalLM

    import spd_scorer  # noqa: F401  (registers ScoringActor with the Auto classes)

    export = out / "checkpoints" / "global_step_2" / "actor" / "huggingface"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert type(model).__name__ == "ScoringActor"


def test_train_spd_scorer_against_our_server(spd_data, tiny_model_dir, tmp_path):
    """The same flow against our own server (``verl.serve``'s): it runs where vLLM is not installed; with vLLM the
    test above covers the flow against a real vLLM server (both speak the same OpenAI API, tested in
    tests/workers/rollout/test_openai_server.py), and this one is skipped to keep the suite within its time."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("covered by test_train_spd_scorer_against_a_real_vllm_server where vLLM is installed")
    from verl.workers.rollout.openai_server import OpenAIServer

    server = OpenAIServer(tiny_model_dir, backend="hf")
    address = server.start()
    try:
        rows = _train(spd_data, f"{address}/v1/completions", tmp_path / "run")
    finally:
        server.stop()
    _check_run(rows, tmp_path / "run")


@pytest.mark.vllm
def test_train_spd_scorer_against_a_real_vllm_server(spd_data, vllm_server_address, tmp_path):
    """The target is a real ``vllm serve`` of the tiny model (the session's server, tests/conftest.py)."""
    rows = _train(spd_data, f"{vllm_server_address}/v1/completions", tmp_path / "run")
    _check_run(rows, tmp_path / "run")
