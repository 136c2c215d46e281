"""Any OpenAI-client agent as a rollout: the session server records the engine's exact ids and log-probs with the
right masks, tool calls come back as ``message.tool_calls``, and history rewrites start a new segment."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from tests.experimental.test_agent_loop import ScriptedEngine, _prompts, call, trainer_config
from verl.experimental.agent_loop import run_agent_loops
from verl.experimental.agent_loop.agent_loop import AsyncLLMServerManager, get_agent_loop_class
from verl.experimental.agent_loop.openai_agent_loop import OpenAIAgentLoop, SessionServer, load_agent_fn
from verl.workers.rollout.engine import SamplingParams

RECORDED: dict[str, list] = {}


async def three_turns(client, raw_prompt, **sample):
    """Two tool round trips with fixed tool text, keeping what the client saw."""
    messages = list(raw_prompt)
    seen = []
    for turn in range(3):
        reply = await client.chat.completions.create(model="policy", messages=messages, max_tokens=10, logprobs=True)
        choice = reply.choices[0]
        seen.append((choice.message.content, [t.logprob for t in choice.logprobs.content]))
        messages.append({"role": "assistant", "content": "(whatever the client echoes is ignored)"})
        if turn < 2:
            messages.append({"role": "tool", "content": f"result {turn}"})
    RECORDED[str(sample["index"])] = seen
    return 1.0


def rewrites_history(client, raw_prompt, **sample):
    """Sync client on a thread; the second request drops the first exchange and asks afresh."""
    client.chat.completions.create(model="policy", messages=list(raw_prompt), max_tokens=4)
    client.chat.completions.create(
        model="policy", messages=[{"role": "user", "content": "something else"}], max_tokens=4
    )


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from verl.workers.rollout.hf_engine import HFEngine

    return HFEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval())


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_recorded_ids_and_log_probs_are_the_engines(hf_engine, tokenizer):
    from verl.workers.rollout.logit_capture import CaptureSpec

    spec = CaptureSpec(mode="logprob")
    params = SamplingParams(
        max_tokens=64, temperature=1.0, seed=3, stop_token_ids=hf_engine.eos_token_ids, capture=spec
    )
    prompts = _prompts(tokenizer, ["say a digit", "count two"], ["openai_agent", "openai_agent"])
    prompts.non_tensor_batch["index"] = np.array([0, 1], dtype=object)
    cfg = trainer_config(response_length=64)
    out = run_agent_loops(prompts, hf_engine, tokenizer, cfg, params, "single_turn_agent", spec, agent_fn=three_turns)
    assert out.non_tensor_batch["__num_turns__"].tolist() == [6, 6]
    assert out.non_tensor_batch["tool_call_counts"].tolist() == [2, 2]
    assert out.non_tensor_batch["agent_reward_score"].tolist() == [1.0, 1.0]
    for row in range(2):
        prompt = prompts.batch["input_ids"][row][prompts.batch["attention_mask"][row].bool()].tolist()
        valid = out.batch["attention_mask"][row, 32:].bool()
        ids = out.batch["responses"][row][valid].tolist()
        mask = out.batch["response_mask"][row][: len(ids)].tolist()
        spans, start = [], None
        for j, m in enumerate(mask + [0]):
            if m and start is None:
                start = j
            elif not m and start is not None:
                spans.append((start, j))
                start = None
        assert len(spans) == 3
        for turn, (a, b) in enumerate(spans):
            seed = 3 + turn * 1_000_003 + row
            direct = hf_engine.generate([prompt + ids[:a]], [params.replace(seed=seed, max_tokens=min(10, 64 - a))])[0]
            assert direct.token_ids == ids[a:b]  # the trained ids are the engine's, turn by turn
            content, logprobs = RECORDED[str(row)][turn]
            assert logprobs == pytest.approx(direct.capture.logprobs.tolist(), abs=1e-6)  # what the client saw
            assert torch.allclose(out.batch["rollout_log_probs"][row][a:b], direct.capture.logprobs, atol=1e-6)
            body = direct.token_ids[:-1] if direct.token_ids[-1] in hf_engine.eos_token_ids else direct.token_ids
            assert content == tokenizer.decode(body, skip_special_tokens=True)
        tool_text = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
        assert "result 0" in tool_text and "result 1" in tool_text and "ignored" not in tool_text


def test_sync_agent_that_rewrites_history_trains_on_its_last_segment(hf_engine, tokenizer):
    params = SamplingParams(max_tokens=32, temperature=0.0, stop_token_ids=hf_engine.eos_token_ids)
    manager = AsyncLLMServerManager(hf_engine, params)

    async def go():
        server = SessionServer(manager, tokenizer, response_length=32)
        await server.start()
        try:
            loop = OpenAIAgentLoop(
                trainer_config(32), manager, tokenizer, session_server=server, agent_fn=rewrites_history
            )
            messages = [{"role": "user", "content": "say a digit"}]
            return await loop.run({}, request_id="r", raw_prompt=messages, raw_prompt_ids=[1, 2])
        finally:
            await server.stop()

    out = asyncio.run(go())
    assert out.extra_fields["session_restarts"] == 1
    assert out.extra_fields["messages"][0] == {"role": "user", "content": "something else"}
    assert tokenizer.decode(out.prompt_ids).startswith("<|im_start|>user\nsomething else")
    assert 0 < len(out.response_ids) <= 4 and all(out.response_mask)


def test_tool_calls_come_back_parsed_and_errors_are_openai_shaped(tokenizer):
    import openai

    engine = ScriptedEngine(tokenizer, [call("search", {"query": "x"}), "done"])
    manager = AsyncLLMServerManager(engine, SamplingParams(max_tokens=256, temperature=0.0))
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]

    async def go():
        server = SessionServer(manager, tokenizer, response_length=256)
        await server.start()
        try:
            session = server.open_session()
            client = openai.AsyncOpenAI(base_url=server.base_url(session), api_key="x", max_retries=0)
            messages = [{"role": "user", "content": "find x"}]
            first = await client.chat.completions.create(model="policy", messages=messages, tools=tools)
            message = first.choices[0].message
            messages += [
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "x is 3"},
            ]
            second = await client.chat.completions.create(model="policy", messages=messages, tools=tools)
            errors = []
            for kwargs in ({"n": 2}, {"stream": True}):
                try:
                    await client.chat.completions.create(model="policy", messages=messages, **kwargs)
                except openai.BadRequestError as err:
                    errors.append(err.message)
            bad = openai.AsyncOpenAI(base_url=server.base_url("nope"), api_key="x", max_retries=0)
            try:
                await bad.chat.completions.create(model="policy", messages=messages)
            except openai.NotFoundError as err:
                errors.append(err.message)
            return first, second, errors, server.sessions[session].request
        finally:
            await server.stop()

    first, second, errors, request = asyncio.run(go())
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.tool_calls[0].function.name == "search"
    assert json.loads(first.choices[0].message.tool_calls[0].function.arguments) == {"query": "x"}
    assert second.choices[0].message.content == "done" and second.choices[0].finish_reason == "stop"
    assert len(errors) == 3 and "n=1 and stream=false" in errors[0] and "unknown session 'nope'" in errors[2]
    assert [m["role"] for m in request.messages] == ["user", "assistant", "tool", "assistant"]
    assert request.response_loss_mask.count(1) == len(engine.replies[0]) + len(engine.replies[1])


def test_agent_fn_is_named_when_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="needs agent_fn"):
        get_agent_loop_class("openai_agent")(trainer_config(), None, None, session_server=None)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_agent_fn(f"{tmp_path}/missing.py:solve")
    (tmp_path / "agent.py").write_text("def other(client, **kw):\n    return None\n")
    with pytest.raises(AttributeError, match="no function 'solve'"):
        load_agent_fn(f"{tmp_path}/agent.py:solve")
    assert load_agent_fn(f"{tmp_path}/agent.py:other").__name__ == "other"
