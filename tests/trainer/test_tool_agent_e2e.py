"""The Search-R1 example's pieces through ``main_ppo`` (Ray, 2 FSDP ranks): the tool_agent loop calls the real
retrieval server (verl's tool_agent) or the example's OpenAI-client agent does, the tool metrics appear, and the
model's tool turns reach training. The loops on vLLM and SGLang are tested next to those engines' other tests."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"search_r1_{name}", REPO / "examples/search_r1" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def search_task(tmp_path_factory):
    """The example's data, and a model warm-started (briefly) on dialogues that always search."""
    make_data, warm = _load("make_data"), _load("warm_start")
    out = tmp_path_factory.mktemp("search_r1")
    items = make_data.entities()
    by_name = {e.name: e for e in items}
    train = items[8:]
    with open(out / "corpus.jsonl", "w") as f:
        for i, entity in enumerate(items):
            f.write(json.dumps({"id": str(i), "contents": make_data.passage(entity)}) + "\n")
    rows = make_data.rows(train[:16], by_name, "train")
    pd.DataFrame(rows).to_parquet(out / "train.parquet")
    for row in rows:
        del row["agent_name"]  # the openai variant: rollout.agent.default_agent_loop picks the agent
    pd.DataFrame(rows).to_parquet(out / "train_openai.parquet")
    dialogues = make_data.warm_start_dialogues(train, by_name, 400, search_share=1.0, seed=1)
    model = warm.warm_start(dialogues, out / "model", steps=120, batch_size=16)
    return out, str(model), make_data.TOOL_SCHEMA


@pytest.mark.parametrize(
    "engine, agent",
    [("hf", "tool_agent"), ("hf", "openai")],  # the agent loop on vLLM: tests/workers/rollout/test_vllm_rollout.py
)
def test_search_agent_trains_through_main_ppo(engine, agent, search_task, tmp_path, ray_cluster, monkeypatch):
    """tool_agent: verl's loop runs SearchTool; openai: examples/search_r1/openai_agent.py drives the policy through
    its session endpoint with the openai client and calls the retrieval server itself."""
    from verl.tools.retrieval_server import RetrievalServer

    if engine == "vllm":
        pytest.importorskip("vllm")
    data, model, schema = search_task
    with RetrievalServer(data / "corpus.jsonl") as server:
        if agent == "tool_agent":
            tool = {"class_name": "verl.tools.search_tool.SearchTool", "tool_schema": schema}
            tool["config"] = {"type": "native", "retrieval_service_url": server.url, "topk": 1}
            (tmp_path / "tools.yaml").write_text(json.dumps({"tools": [tool]}))
            agent_overrides = [f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tmp_path / 'tools.yaml'}"]
        else:
            entry = "- name: search_agent\n  _target_: verl.experimental.agent_loop.openai_agent_loop.OpenAIAgentLoop\n"
            entry += f"  agent_fn: {REPO / 'examples/search_r1/openai_agent.py'}:solve\n"
            entry += f"  agent_kwargs: {{retrieval_url: '{server.url}'}}\n"
            (tmp_path / "agents.yaml").write_text(entry)
            agent_overrides = [
                f"actor_rollout_ref.rollout.agent.agent_loop_config_path={tmp_path / 'agents.yaml'}",
                "actor_rollout_ref.rollout.agent.default_agent_loop=search_agent",
                f"data.train_files={data / 'train_openai.parquet'}",
                f"data.val_files={data / 'train_openai.parquet'}",
            ]
        overrides = [
            "algorithm.adv_estimator=grpo",
            f"data.train_files={data / 'train.parquet'}",
            f"data.val_files={data / 'train.parquet'}",
            "data.train_batch_size=4",
            "data.max_prompt_length=32",
            "data.max_response_length=96",
            "data.return_raw_chat=True",
            "data.dataloader_num_workers=0",
            f"actor_rollout_ref.model.path={model}",
            "actor_rollout_ref.actor.strategy=fsdp2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=4",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
            f"actor_rollout_ref.rollout.name={engine}",
            "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
            "actor_rollout_ref.rollout.n=2",
            "actor_rollout_ref.rollout.calculate_log_probs=True",
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
            "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
            f"custom_reward_function.path={REPO / 'examples/search_r1/reward.py'}",
            "trainer.device=cpu",
            "trainer.n_gpus_per_node=2",
            "trainer.logger=[console,file]",
            f"trainer.default_local_dir={tmp_path / 'ckpt'}",
            "trainer.val_before_train=False",
            "trainer.test_freq=-1",
            "trainer.save_freq=-1",
            "trainer.total_training_steps=2",
            "trainer.progress_bar=False",
            *agent_overrides,
        ]
        from verl.trainer.main_ppo import load_config, run_ppo
        from verl.utils.config import compose_config

        monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(tmp_path / "m.jsonl"))
        run_ppo(load_config(compose_config("ppo_trainer", overrides)))
    rows = [json.loads(line)["data"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # the warm-started model searches (briefly trained, it does not every time): tool turns happened, were answered
    # by the server (a tool turn followed by another assistant turn), and were timed
    assert max(row["tool_call_counts/mean"] for row in rows) > 0.25, rows
    assert max(row["num_turns/max"] for row in rows) >= 4, rows
    for row in rows:
        assert row["tool_error_counts/mean"] <= row["tool_call_counts/mean"]
        assert row["timing_s/agent_loop/generate_sequences/mean"] > 0
        assert row["timing_s/agent_loop/tool_calls/mean"] > 0 or row["tool_call_counts/mean"] == 0
        assert "actor/pg_loss" in row and "critic/score/mean" in row
