"""The agent loop: tool turns with their masks and failure texts (scripted engine), agent selection and batching
into the rollout contract, and multi-turn ids that are exactly the real hf engine's (tiny model)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verl.experimental.agent_loop import AgentLoopBase, AgentLoopOutput, register, run_agent_loops
from verl.experimental.agent_loop.agent_loop import AsyncLLMServerManager
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop, truncate_tool_response
from verl.experimental.agent_loop.tool_parser import ParsedCall, ToolParser
from verl.protocol import DataProto
from verl.tools.base_tool import BaseTool
from verl.tools.retrieval_server import RetrievalServer
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse
from verl.tools.search_tool import SearchTool
from verl.workers.config import RolloutConfig
from verl.workers.config.rollout import MultiTurnConfig
from verl.workers.rollout.engine import GenerationOutput, InferenceEngine, SamplingParams

DOCS = [{"id": "0", "contents": "Zorblat\nThe capital of Zorblat is Quimby."}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class ScriptedEngine(InferenceEngine):
    """Replies to call ``c`` of every prompt with ``replies[c]`` (tokenised, plus EOS), cut to ``max_tokens``."""

    max_model_len, pad_token_id, vocab_size = 1 << 20, 0, 512

    def __init__(self, tokenizer, replies: list[str]):
        self.eos_token_ids = (tokenizer.eos_token_id,)
        self.replies = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in replies]
        self.turn: dict[tuple, int] = {}
        self.batches: list[int] = []

    def generate(self, prompts, params):
        self.batches.append(len(prompts))
        out = []
        for prompt, p in zip(prompts, params):
            key = tuple(prompt[:8])  # the prompt's start identifies the sample
            turn = self.turn.get(key, 0)
            self.turn[key] = turn + 1
            ids = self.replies[min(turn, len(self.replies) - 1)][: p.max_tokens]
            out.append(GenerationOutput(list(ids), None, "stop" if ids and ids[-1] in self.eos_token_ids else "length"))
        return out


def trainer_config(response_length=256, **multi_turn):
    return SimpleNamespace(
        rollout=RolloutConfig(response_length=response_length, multi_turn=MultiTurnConfig(**multi_turn))
    )


def call(name: str, arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


class EchoTool(BaseTool):
    """Echoes its ``text`` argument ``times`` times; ``raise`` makes it raise, ``sleep`` makes it slow."""

    async def execute(self, instance_id, parameters, **kwargs):
        if parameters.get("raise"):
            raise RuntimeError("echo exploded")
        if parameters.get("sleep"):
            await asyncio.sleep(parameters["sleep"])
        return ToolResponse(text=str(parameters.get("text", "")) * int(parameters.get("times", 1))), 0.5, {}


ECHO_SCHEMA = OpenAIFunctionToolSchema.model_validate(
    {"type": "function", "function": {"name": "echo", "description": "echo", "parameters": {"type": "object"}}}
)


def run_one(loop: AgentLoopBase, tokenizer, question="Where is it?") -> AgentLoopOutput:
    messages = [{"role": "user", "content": question}]
    return asyncio.run(loop.run({}, request_id="row0", raw_prompt=messages, tools_kwargs={}))


def make_loop(tokenizer, engine, tools, **multi_turn) -> ToolAgentLoop:
    params = SamplingParams(max_tokens=2048, temperature=0.0, stop_token_ids=engine.eos_token_ids)
    manager = AsyncLLMServerManager(engine, params)
    return ToolAgentLoop(trainer_config(**multi_turn), manager, tokenizer, tools={t.name: t for t in tools})


def test_search_turn_masks_tool_tokens_and_keeps_the_engine_ids(tokenizer):
    replies = [call("search", {"query_list": ["capital of Zorblat"]}), "Quimby"]
    engine = ScriptedEngine(tokenizer, replies)
    with RetrievalServer(DOCS) as server:
        tool = SearchTool({"retrieval_service_url": server.url, "topk": 1}, None)
        out = run_one(make_loop(tokenizer, engine, [tool]), tokenizer)
    ids, mask = np.array(out.response_ids), np.array(out.response_mask)
    assert ids[mask == 1].tolist() == engine.replies[0] + engine.replies[1]  # the policy's ids, verbatim
    tool_text = tokenizer.decode(ids[mask == 0].tolist())
    assert "The capital of Zorblat is Quimby." in tool_text and "<tool_call>" not in tool_text
    assert out.num_turns == 4 and out.extra_fields["tool_call_count"] == 1 and out.extra_fields["tool_error_count"] == 0
    rendered = tokenizer.apply_chat_template(out.extra_fields["messages"], tokenize=False)
    # what it trains on is the conversation (the template closes the last turn with a newline the model never wrote)
    assert tokenizer.decode(out.prompt_ids + out.response_ids) == rendered.removesuffix("\n")
    assert out.metrics.tool_calls > 0 and out.metrics.generate_sequences >= 0


def test_every_tool_failure_becomes_an_observation(tokenizer):
    slow = EchoTool(
        {"call_timeout": 0.2},
        ECHO_SCHEMA.model_copy(update={"function": ECHO_SCHEMA.function.model_copy(update={"name": "slow"})}),
    )
    echo = EchoTool({}, ECHO_SCHEMA)
    turn1 = (
        "<tool_call>{oops</tool_call>" + call("nope", {}) + call("echo", {"raise": True}) + call("slow", {"sleep": 5})
    )
    turn2 = call("echo", {"text": "ab", "times": 100}) + call("echo", {"text": "x"}) + call("echo", {"text": "y"})
    engine = ScriptedEngine(tokenizer, [turn1, turn2, "done"])
    loop = make_loop(
        tokenizer, engine, [echo, slow], response_length=2048, max_parallel_calls=4, max_tool_response_length=20
    )
    out = run_one(loop, tokenizer)
    tool_messages = [m["content"] for m in out.extra_fields["messages"] if m["role"] == "tool"]
    assert "not valid JSON" in tool_messages[0]
    assert "unknown tool 'nope'; available tools: ['echo', 'slow']" in tool_messages[1]
    assert "echo failed: RuntimeError: echo exploded" in tool_messages[2]
    assert "slow did not answer within 0.2 s" in tool_messages[3]
    assert tool_messages[4] == "ab" * 5 + "...(truncated)" + "ab" * 5  # middle truncation to 20 characters
    assert tool_messages[5] == "x" and tool_messages[6] == "y"
    assert out.extra_fields["tool_call_count"] == 7 and out.extra_fields["tool_error_count"] == 4
    assert out.extra_fields["reward_scores"]["tool_rewards"][:3] == [0.0, 0.0, 0.0]

    engine = ScriptedEngine(tokenizer, [turn2, "done"])
    out = run_one(make_loop(tokenizer, engine, [echo], response_length=2048, max_parallel_calls=2), tokenizer)
    tool_messages = [m["content"] for m in out.extra_fields["messages"] if m["role"] == "tool"]
    assert "only 2 tool call(s) per turn" in tool_messages[2] and out.extra_fields["tool_error_count"] == 1


def test_turn_limits_and_budget_end_the_loop(tokenizer):
    echo = EchoTool({}, ECHO_SCHEMA)
    forever = [call("echo", {"text": "x"})]
    out = run_one(make_loop(tokenizer, ScriptedEngine(tokenizer, forever), [echo], max_assistant_turns=3), tokenizer)
    assert out.num_turns == 1 + 3 + 2 and out.extra_fields["tool_call_count"] == 2
    out = run_one(make_loop(tokenizer, ScriptedEngine(tokenizer, forever), [echo], max_user_turns=1), tokenizer)
    assert out.num_turns == 1 + 2 + 1
    out = run_one(make_loop(tokenizer, ScriptedEngine(tokenizer, forever), [echo], response_length=60), tokenizer)
    assert len(out.response_ids) == 60 and len(out.response_mask) == 60


def test_truncation_sides():
    assert truncate_tool_response("abcdef", 10, "left") == "abcdef"
    assert truncate_tool_response("abcdef", 2, "left") == "ab...(truncated)"
    assert truncate_tool_response("abcdef", 2, "right") == "...(truncated)ef"
    assert truncate_tool_response("abcdef", 3, "middle") == "a...(truncated)ef"


@register("test_always_echo_agent")
class AlwaysEchoAgent(ToolAgentLoop):
    """Treats every assistant turn as a call to ``echo`` with the turn's text: multi-turn with a random model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        class Always(ToolParser):
            def extract_tool_calls(self, response_ids):
                return "", [ParsedCall("echo", json.dumps({"text": "seen"}))]

        self.parser = Always(self.tokenizer)

    async def run(self, sampling_params, **kwargs):
        return await super().run({**sampling_params, "max_tokens": 12}, **kwargs)  # 12 tokens per turn


def _prompts(tokenizer, questions, agent_names, width=32) -> DataProto:
    ids = torch.full((len(questions), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    raw = np.empty(len(questions), dtype=object)
    for i, q in enumerate(questions):
        messages = [{"role": "user", "content": q}]
        raw[i] = messages
        row = tokenizer.encode(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask},
        non_tensors={"raw_prompt": raw, "agent_name": np.array(agent_names, dtype=object)},
        meta_info={"pad_token_id": tokenizer.pad_token_id},
    )


def test_real_engine_ids_batching_and_the_rollout_contract(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from verl.workers.rollout.hf_engine import HFEngine
    from verl.workers.rollout.logit_capture import CaptureSpec

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    engine = HFEngine(model)
    spec = CaptureSpec(mode="logprob")
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7, stop_token_ids=engine.eos_token_ids, capture=spec)
    prompts = _prompts(
        tokenizer,
        ["say a digit", "write seven", "count two"],
        ["test_always_echo_agent", "single_turn_agent", "test_always_echo_agent"],
    )
    cfg = trainer_config(response_length=96, max_assistant_turns=3)
    out = run_agent_loops(
        prompts, engine, tokenizer, cfg, params, "single_turn_agent", spec, tools={"echo": EchoTool({}, ECHO_SCHEMA)}
    )
    assert out.meta_info["agent_engine_calls"] == 3  # one batched engine call per round, not one per sample
    assert out.non_tensor_batch["__num_turns__"].tolist() == [6, 2, 6]
    assert out.non_tensor_batch["tool_call_counts"].tolist() == [2, 0, 2]
    responses, rmask = out.batch["responses"], out.batch["response_mask"]
    # replay row 0's turns against the engine directly: the same ids and log-probs, turn by turn
    gen_logits = out.non_tensor_batch["generation_logits"][0]
    prompt = prompts.batch["input_ids"][0][prompts.batch["attention_mask"][0].bool()].tolist()
    row = responses[0][out.batch["attention_mask"][0, 32:].bool()].tolist()
    mask_row = rmask[0][: len(row)].tolist()
    cursor, turn, replayed = 0, 0, []
    while cursor < len(row):
        end = cursor
        while end < len(row) and mask_row[end] == 1:
            end += 1
        if end > cursor:
            seed = 7 + turn * 1_000_003 + 0
            direct = engine.generate(
                [prompt + row[:cursor]], [params.replace(seed=seed, max_tokens=min(12, 96 - cursor))]
            )[0]
            assert direct.token_ids == row[cursor:end]
            replayed += direct.capture.logprobs.tolist()
            turn += 1
        cursor = end
        while cursor < len(row) and mask_row[cursor] == 0:
            cursor += 1
    assert turn == 3
    assert torch.allclose(torch.tensor(replayed), out.batch["rollout_log_probs"][0][rmask[0].bool()], atol=1e-6)
    assert torch.equal(torch.tensor(gen_logits["positions"]), rmask[0].nonzero().flatten())
    assert (out.batch["rollout_log_probs"][rmask == 0] == 0).all()


def test_unknown_agent_name_is_named(tokenizer):
    engine = ScriptedEngine(tokenizer, ["x"])
    prompts = _prompts(tokenizer, ["q"], ["no_such_agent"])
    params = SamplingParams(max_tokens=8)
    with pytest.raises(ValueError, match="unknown agent_name 'no_such_agent'; registered agent loops: .*tool_agent"):
        run_agent_loops(prompts, engine, tokenizer, trainer_config(), params, "single_turn_agent")
