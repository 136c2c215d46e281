"""``python -m verl.trainer.main_generation_server``: generation over replicas, resume after SIGKILL, bad input.

Most cases talk to a fake OpenAI server (a stdlib HTTP server in this process, via ``generation.server_addresses``)
that counts requests per prompt, answers slowly or fails on purpose, so resume and retry are checked exactly.
The end-to-end cases start real standalone replicas under Ray serving the tiny model (hf; vllm under its marker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from verl.trainer.main_generation_server import run_generation, validate_generation_config
from verl.utils.config import compose_config

REPO = Path(__file__).resolve().parents[2]


class FakeOpenAI:
    """A chat-completions server: ``n`` answers ``"<content> #k"``, counting requests per user message.

    ``fail[content] = k`` answers HTTP 500 to the first k requests for that content (-1: always);
    ``delay_s`` sleeps before answering.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.counts: Counter = Counter()
        self.fail: dict[str, int] = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"status": "ok"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                with fake.lock:
                    fake.counts[content] += 1
                    left = fake.fail.get(content, 0)
                    if left > 0:
                        fake.fail[content] = left - 1
                time.sleep(fake.delay_s)
                if left:
                    self._send(500, {"error": {"message": f"boom for {content}", "type": "server_error"}})
                    return
                choices = [
                    {
                        "index": k,
                        "message": {"role": "assistant", "content": f"{content} #{k}"},
                        "finish_reason": "stop",
                    }
                    for k in range(body["n"])
                ]
                usage = {"prompt_tokens": 3, "completion_tokens": 2 * body["n"], "total_tokens": 3 + 2 * body["n"]}
                self._send(200, {"id": "x", "object": "chat.completion", "choices": choices, "usage": usage})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    server = FakeOpenAI()
    yield server
    server.close()


def _write_prompts(path: Path, n_rows: int) -> str:
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "data_source": "toy", "idx": i} for i in range(n_rows)]
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def _overrides(data: str, out: str, model: str = "tiny", **extra) -> list[str]:
    base = {
        "data.train_files": data,
        "data.output_path": out,
        "actor_rollout_ref.model.path": model,
        "actor_rollout_ref.rollout.n": 2,
        "actor_rollout_ref.rollout.response_length": 8,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "generation.retry_backoff_s": 0.01,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _config(*args, **kwargs):
    return compose_config("generation_server", overrides=_overrides(*args, **kwargs))


def _progress_rows(out: str) -> list[int]:
    with open(f"{out}.progress.jsonl") as f:
        return [json.loads(line)["row"] for line in f.read().split("\n")[1:] if line.strip()]


# ------------------------------------------------------------------------------------------ fake server


def test_generates_n_responses_per_row_with_status_columns(tmp_path, fake_server):
    data = _write_prompts(tmp_path / "p.parquet", 5)
    out = str(tmp_path / "out" / "gen.parquet")
    cfg = _config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"})
    run_generation(cfg)
    df = pd.read_parquet(out)
    assert list(df["idx"]) == [0, 1, 2, 3, 4]  # input order and columns kept
    assert [list(r) for r in df["responses"]] == [[f"q{i} #0", f"q{i} #1"] for i in range(5)]
    assert set(df["status"]) == {"ok"} and df["error"].isna().all()
    assert list(df["prompt_tokens"]) == [3] * 5 and list(df["completion_tokens"]) == [4] * 5  # fake usage: 2 * n
    assert list(df["response_tokens"]) == [2.0] * 5  # per response: completion_tokens / n
    assert (df["response_latency_s"] > 0).all() and list(df["attempts"]) == [1] * 5
    assert fake_server.counts == Counter({f"q{i}": 1 for i in range(5)})


def test_failing_request_is_retried_then_recorded_as_failed_row(tmp_path, fake_server):
    data = _write_prompts(tmp_path / "p.parquet", 4)
    out = str(tmp_path / "gen.parquet")
    fake_server.fail = {"q1": 1, "q2": 10**6}  # q1: one transient 500; q2: always failing
    run_generation(_config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"}))
    df = pd.read_parquet(out)
    assert list(df["status"]) == ["ok", "ok", "failed", "ok"]
    assert list(df["attempts"]) == [1, 2, 3, 1]  # generation.max_attempts=3
    assert "HTTP 500" in df["error"][2] and "boom for q2" in df["error"][2]
    assert list(df["responses"][2]) == []
    assert fake_server.counts["q2"] == 3

    # A restart retries only the failed row (generation.retry_failed=true) and keeps the rest.
    fake_server.fail = {}
    run_generation(_config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"}))
    df = pd.read_parquet(out)
    assert list(df["status"]) == ["ok"] * 4
    assert fake_server.counts == Counter({"q0": 1, "q1": 2, "q2": 4, "q3": 1})


def test_resume_after_sigkill_loses_and_redoes_no_finished_row(tmp_path):
    server = FakeOpenAI(delay_s=0.25)
    try:
        data = _write_prompts(tmp_path / "p.parquet", 24)
        out = str(tmp_path / "gen.parquet")
        args = _overrides(data, out, **{"generation.server_addresses": f"[{server.address}]"})
        args.append("generation.max_concurrency=2")
        cmd = [sys.executable, "-m", "verl.trainer.main_generation_server", *args]
        env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        progress = Path(f"{out}.progress.jsonl")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (progress.exists() and len(_progress_rows(out)) >= 6):
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = _progress_rows(out)
        assert 6 <= len(done_before) < 24, "the run should have been killed part-way"
        counts_before = Counter(server.counts)

        rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert f"{len(done_before)} already done" in rerun.stdout
        df = pd.read_parquet(out)
        assert list(df["status"]) == ["ok"] * 24
        assert [list(r) for r in df["responses"]] == [[f"q{i} #0", f"q{i} #1"] for i in range(24)]
        for row in done_before:  # finished before the kill: never requested again
            assert server.counts[f"q{row}"] == counts_before[f"q{row}"] == 1
        rows = _progress_rows(out)
        assert sorted(rows) == list(range(24)) and len(rows) == 24  # each row recorded exactly once
    finally:
        server.close()


def test_torn_last_line_of_the_progress_log_is_dropped(tmp_path, fake_server):
    data = _write_prompts(tmp_path / "p.parquet", 3)
    out = str(tmp_path / "gen.parquet")
    cfg = _config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"})
    run_generation(cfg)
    lines = Path(f"{out}.progress.jsonl").read_text().split("\n")
    # Keep the header and the first row, then half of the second row's line (a write cut by a kill).
    Path(f"{out}.progress.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    run_generation(cfg)
    assert sorted(_progress_rows(out)) == [0, 1, 2]
    assert pd.read_parquet(out)["status"].tolist() == ["ok"] * 3
    first = json.loads(lines[1])["row"]
    assert fake_server.counts[f"q{first}"] == 1 and sum(fake_server.counts.values()) == 5


def test_resume_refuses_a_progress_log_of_another_run(tmp_path, fake_server):
    data = _write_prompts(tmp_path / "p.parquet", 2)
    out = str(tmp_path / "gen.parquet")
    run_generation(_config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"}))
    other = _config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"})
    other.actor_rollout_ref.rollout.n = 3
    with pytest.raises(ValueError, match="belongs to a different run.*generation.resume=false"):
        run_generation(other)


# ------------------------------------------------------------------------------------------ bad input


def test_missing_prompt_key_column_is_named(tmp_path, fake_server):
    pd.DataFrame({"question": ["a", "b"]}).to_parquet(tmp_path / "p.parquet")
    cfg = _config(str(tmp_path / "p.parquet"), str(tmp_path / "o.parquet"))
    cfg.generation.server_addresses = [fake_server.address]
    with pytest.raises(ValueError, match=r"data.prompt_key='prompt' is not a column of .*p.parquet.*\['question'\]"):
        run_generation(cfg)
    assert not fake_server.counts


def test_malformed_parquet_and_missing_file_are_named(tmp_path, fake_server):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    cfg = _config(str(tmp_path / "bad.parquet"), str(tmp_path / "o.parquet"))
    cfg.generation.server_addresses = [fake_server.address]
    with pytest.raises(ValueError, match=r"bad.parquet is not a readable parquet file"):
        run_generation(cfg)
    cfg.data.train_files = str(tmp_path / "nope.parquet")
    with pytest.raises(ValueError, match=r"data.train_files: .*nope.parquet does not exist"):
        run_generation(cfg)


def test_prompt_that_is_not_a_chat_list_is_named(tmp_path):
    pd.DataFrame({"prompt": ["plain text"]}).to_parquet(tmp_path / "p.parquet")
    cfg = _config(str(tmp_path / "p.parquet"), str(tmp_path / "o.parquet"))
    cfg.generation.server_addresses = ["127.0.0.1:1"]
    with pytest.raises(ValueError, match="row 0 of column data.prompt_key='prompt' is not a chat message list"):
        run_generation(cfg)


def test_unreachable_replica_is_named_and_finished_rows_are_kept(tmp_path, fake_server):
    data = _write_prompts(tmp_path / "p.parquet", 4)
    out = str(tmp_path / "gen.parquet")
    fake_server.fail = {"q3": 10**6}
    run_generation(_config(data, out, **{"generation.server_addresses": f"[{fake_server.address}]"}))
    before = Path(f"{out}.progress.jsonl").read_text()
    cfg = _config(data, out, **{"generation.server_addresses": "[127.0.0.1:1]"})
    with pytest.raises(ValueError, match=r"replica 0 at http://127.0.0.1:1 is unreachable"):
        run_generation(cfg)
    assert Path(f"{out}.progress.jsonl").read_text() == before  # rows 0-2 (and the failure) are still there


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"actor_rollout_ref.rollout.temperature": 0}, r"temperature=0 with actor_rollout_ref.rollout.n=2 generates 2"),
        ({"actor_rollout_ref.rollout.load_format": "dummy"}, r"load_format=dummy .* randomly initialised model"),
        ({"actor_rollout_ref.rollout.name": "nope"}, r"unknown rollout replica 'nope'.*\['hf', 'sglang', 'vllm'"),
        ({"data.output_path": "null"}, r"data.output_path is not set"),
        ({"actor_rollout_ref.rollout.tensor_model_parallel_size": 3}, r"cannot be split into replicas of 3"),
        ({"actor_rollout_ref.model.path": "/no/such/model"}, r"model.path=/no/such/model does not exist"),
        ({"generation.max_concurrency": 0}, r"generation.max_concurrency=0 must be >= 1"),
    ],
)
def test_bad_config_is_refused_before_ray_starts(tmp_path, tiny_model_dir, monkeypatch, extra, message):
    import verl.trainer.main_ppo as main_ppo

    monkeypatch.setattr(main_ppo, "init_ray", lambda config: pytest.fail("Ray was started"))
    data = _write_prompts(tmp_path / "p.parquet", 2)
    base = {"trainer.n_gpus_per_node": 2, "trainer.nnodes": 1}
    cfg = _config(data, str(tmp_path / "o.parquet"), tiny_model_dir, **{**base, **extra})
    with pytest.raises(ValueError, match=message):
        run_generation(cfg)


def test_ppo_trainer_config_with_its_dummy_load_format_is_refused(tmp_path, tiny_model_dir):
    cfg = compose_config(
        "ppo_trainer",
        overrides=[
            "+data.output_path=/tmp/o.parquet",
            "actor_rollout_ref.rollout.name=hf",
            f"actor_rollout_ref.model.path={tiny_model_dir}",
        ],
    )
    with pytest.raises(ValueError, match="load_format=dummy in standalone mode.*load_format=auto"):
        validate_generation_config(cfg)


def test_run_eval_switch_calls_main_eval_or_is_refused(tmp_path, fake_server, monkeypatch):
    import importlib.machinery

    import verl.trainer.main_generation_server as mgs

    data = _write_prompts(tmp_path / "p.parquet", 2)
    out = str(tmp_path / "gen.parquet")
    extra = {"generation.server_addresses": f"[{fake_server.address}]", "generation.run_eval": True}
    monkeypatch.setattr(mgs, "_eval_available", lambda: False)
    with pytest.raises(ValueError, match="generation.run_eval=true needs verl.trainer.main_eval.run_eval"):
        run_generation(_config(data, out, **extra))
    assert not fake_server.counts  # refused before any request

    calls = []
    fake = types.ModuleType("verl.trainer.main_eval")
    fake.__spec__ = importlib.machinery.ModuleSpec("verl.trainer.main_eval", None)
    fake.run_eval = lambda cfg: calls.append(cfg)
    monkeypatch.setitem(sys.modules, "verl.trainer.main_eval", fake)
    monkeypatch.setattr(mgs, "_eval_available", lambda: True)
    run_generation(_config(data, out, **extra))
    assert len(calls) == 1 and calls[0].data.path == out


# ------------------------------------------------------------------------------------------ real replicas


def _replica_run(tmp_path, tiny_model_dir, name: str, replicas: int = 2) -> pd.DataFrame:
    data = _write_prompts(tmp_path / "p.parquet", 6)
    out = str(tmp_path / "gen.parquet")
    extra = {
        "actor_rollout_ref.rollout.name": name,
        "actor_rollout_ref.rollout.n": 3,
        "actor_rollout_ref.rollout.max_model_len": 128,
        "trainer.n_gpus_per_node": replicas,
        "trainer.nnodes": 1,
        "generation.max_concurrency": 4,
        "generation.seed": 7,
    }
    cfg = _config(data, out, tiny_model_dir, **extra)
    cfg.trainer.device = "cpu"
    run_generation(cfg)
    return pd.read_parquet(out)


@pytest.mark.ray
@pytest.mark.e2e
@pytest.mark.slow
def test_two_standalone_hf_replicas_generate_n_responses(tmp_path, tiny_model_dir, ray_cluster):
    df = _replica_run(tmp_path, tiny_model_dir, "hf")
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    assert all(len(r) == 3 and all(isinstance(s, str) for s in r) for r in df["responses"])
    assert (df["completion_tokens"] > 0).all() and (df["prompt_tokens"] > 0).all()
    assert (df["response_tokens"] <= 8).all()  # max_tokens = rollout.response_length per response
    assert not ray_cluster.util.placement_group_table() or all(
        pg["state"] == "REMOVED" for pg in ray_cluster.util.placement_group_table().values()
    )


@pytest.mark.ray
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.vllm
def test_a_standalone_vllm_replica_generates_n_responses(tmp_path, tiny_model_dir, ray_cluster):
    """vLLM behind main_generation_server (one replica: the fan-out over two is the hf test's; a second vLLM engine
    would add ~12 s to the suite and test nothing more)."""
    df = _replica_run(tmp_path, tiny_model_dir, "vllm", replicas=1)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    assert all(len(r) == 3 for r in df["responses"])
    assert (df["completion_tokens"] > 0).all() and (df["response_tokens"] <= 8).all()


def test_no_arguments_names_the_missing_inputs_and_the_example(tmp_path):
    cmd = [sys.executable, "-m", "verl.trainer.main_generation_server"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    assert "main_generation_server: error: missing input:" in out.stderr
    assert "data.output_path is not set" in out.stderr
    assert "data.train_files=~/data/rlhf/gsm8k/train.parquet does not exist" in out.stderr
    assert "actor_rollout_ref.model.path=~/models/deepseek-llm-7b-chat does not exist" in out.stderr
    assert 'main_generation_server --config-path "$PWD/examples/phase0" --config-name phase0_eval' in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 8, out.stderr


def test_only_the_inputs_still_missing_are_named(tmp_path):
    data = _write_prompts(tmp_path / "p.parquet", 2)
    cmd = [sys.executable, "-m", "verl.trainer.main_generation_server", f"data.train_files={data}"]
    cmd += ["data.output_path=o.parquet", "actor_rollout_ref.model.path=models/nope"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr + out.stdout
    problems = [line.strip() for line in out.stderr.splitlines() if line.startswith("  ") and "=" in line]
    assert problems[0] == "actor_rollout_ref.model.path=models/nope does not exist (the model the replicas serve)"
    assert "data.output_path" not in out.stderr.split("usage:")[0]
    assert "data.train_files" not in out.stderr.split("usage:")[0]
    assert not (tmp_path / "o.parquet").exists()


def test_phase0_example_config_composes_and_validates(tiny_model_dir):
    cfg = compose_config(
        "phase0_eval",
        overrides=[f"actor_rollout_ref.model.path={tiny_model_dir}"],
        config_dir=str(REPO / "examples" / "phase0"),
    )
    settings, n_replicas = validate_generation_config(cfg)
    assert n_replicas == 2 and settings.sampling["n"] == 4 and cfg.actor_rollout_ref.rollout.load_format == "auto"
    assert os.path.isfile(REPO / cfg.data.train_files) and cfg.generation.run_eval


def test_balancer_picks_the_least_loaded_replica_and_rotates_ties():
    from verl.trainer.generation.client import ReplicaBalancer

    b = ReplicaBalancer(["a", "b", "c"])
    assert [b.acquire() for _ in range(4)] == [0, 1, 2, 0]  # ties rotate; then 0 is among the least loaded
    b.release(1)  # in flight now: a=2, b=0, c=1
    assert b.acquire() == 1
    assert b.acquire(avoid=1) == 2  # a retry goes elsewhere: c (1 in flight) beats a (2)
    assert b.inflight == [2, 1, 2]
