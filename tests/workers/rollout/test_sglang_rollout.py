"""Tests for verl/workers/rollout/sglang_rollout/: the translation layer on CPU against literal SGLang outputs
(shaped exactly as reference/engine_logprobs.md 1.3 shows them), and the contract against real SGLang on GPU."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.workers.config import RolloutConfig
from verl.workers.rollout.sglang_rollout.adapter import SGLangAdapter

_spec = importlib.util.spec_from_file_location("rollout_contract", Path(__file__).with_name("rollout_contract.py"))
rollout_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rollout_contract)
check_rollout_output = rollout_contract.check_rollout_output

_spec = importlib.util.spec_from_file_location("sglang_double", Path(__file__).with_name("sglang_double.py"))
sglang_double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sglang_double)
SGLangEngineDouble, LoopConflict = sglang_double.SGLangEngineDouble, sglang_double.LoopConflict

EOS, PAD, R, VOCAB = 2, 3, 4, 512  # the tiny tokenizer's EOS and pad ids, and its vocabulary

# Two rows as SGLang 0.5.23 returns them for return_logprob=True, top_logprobs_num=2 (skip_tokenizer_init): row 0
# stops at EOS (the EOS is in output_ids), row 1 runs to max_new_tokens. input_token_logprobs starts at the first
# prompt token with a None logprob (SGLang's default logprob_start_len).
OUTPUTS = [
    {
        "output_ids": [40, 41, 2],
        "meta_info": {
            "id": "r0",
            "finish_reason": {"type": "stop", "matched": 2},
            "prompt_tokens": 3,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": 3,
            "cached_tokens": 0,
            "input_token_logprobs": [(None, 10, None)],
            "output_token_logprobs": [(-1.5, 40, None), (-0.25, 41, None), (-0.75, 2, None)],
            "output_token_logprobs_length": 3,
            "input_top_logprobs": [None],
            "output_top_logprobs": [
                [(-0.5, 7, None), (-1.5, 40, None)],
                [(-0.25, 41, None), (-2.0, 9, None)],
                [(-0.75, 2, None), (-1.0, 8, None)],
            ],
        },
    },
    {
        "output_ids": [50, 51, 52, 53],
        "meta_info": {
            "id": "r1",
            "finish_reason": {"type": "length", "length": 4},
            "prompt_tokens": 2,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "input_token_logprobs": [(None, 20, None)],
            "output_token_logprobs": [(-1.0, 50, None), (-2.0, 51, None), (-3.0, 52, None), (-0.5, 53, None)],
            "output_token_logprobs_length": 4,
            "input_top_logprobs": [None],
            "output_top_logprobs": [
                [(-0.5, 6, None), (-1.0, 50, None)],
                [(-1.25, 5, None), (-2.0, 51, None)],
                [(-0.125, 4, None), (-3.0, 52, None)],
                [(-0.5, 53, None), (-1.5, 5, None)],
            ],
        },
    },
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def _config(**overrides) -> RolloutConfig:
    cfg = dict(name="sglang", response_length=R, temperature=0.9, top_p=0.95, top_k=20, calculate_log_probs=True)
    cfg.update(overrides)
    return RolloutConfig(**cfg)


def _prompts(**meta) -> DataProto:
    ids = torch.tensor([[10, 11, 12], [PAD, 20, 21]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    return DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        non_tensors={"uid": np.array(["a", "b"], dtype=object)},
        meta_info={"eos_token_id": EOS, "pad_token_id": PAD, **meta},
    )


def _adapter(model_dir, outputs=OUTPUTS, engine=None, **overrides):
    engine = engine if engine is not None else SGLangEngineDouble(outputs=outputs)
    return SGLangAdapter(model_dir, _config(**overrides), engine=engine), engine


def test_request_carries_unpadded_ids_and_the_sampling_params(model_dir):
    adapter, engine = _adapter(model_dir)
    adapter.generate_sequences(_prompts())
    (_, kwargs) = engine.calls[0]
    assert kwargs["input_ids"] == [[10, 11, 12], [20, 21]]  # left padding removed, one request per row
    row = {
        "max_new_tokens": R,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 20,
        "stop_token_ids": [EOS],
        "ignore_eos": False,
        "skip_special_tokens": False,
        "n": 1,
    }
    assert kwargs["sampling_params"] == [row, row]
    assert kwargs["return_logprob"] == [True, True] and kwargs["top_logprobs_num"] == [0, 0]


def test_seeds_are_sent_only_to_a_deterministic_engine(model_dir):
    adapter, engine = _adapter(model_dir)
    adapter.generate_sequences(_prompts(seed=7))
    assert all("sampling_seed" not in row for row in engine.calls[0][1]["sampling_params"])
    adapter.engine.seeded = True  # started with engine_kwargs.sglang.enable_deterministic_inference=True
    adapter.generate_sequences(_prompts(seed=7))
    assert [row["sampling_seed"] for row in engine.calls[1][1]["sampling_params"]] == [7, 8]


def test_validate_is_greedy_and_logprobs_are_asked_only_when_needed(model_dir):
    adapter, engine = _adapter(model_dir, calculate_log_probs=False)
    adapter.generate_sequences(_prompts(validate=True))
    params = engine.calls[0][1]["sampling_params"][0]
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.0, 1.0, -1)
    assert engine.calls[0][1]["return_logprob"] is False  # the double records SGLang's default when not sent


def test_outputs_become_the_rollout_contract(model_dir):
    adapter, _ = _adapter(model_dir)
    prompts = _prompts()
    out = adapter.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, EOS, PAD)
    # Row 0 ends at its EOS (kept, mask 1) and is padded after; row 1 fills the response.
    assert out.batch["responses"].tolist() == [[40, 41, 2, PAD], [50, 51, 52, 53]]
    assert out.batch["response_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert out.batch["rollout_log_probs"].tolist() == [[-1.5, -0.25, -0.75, 0.0], [-1.0, -2.0, -3.0, -0.5]]
    assert out.meta_info["aborted_rows"] == 0


def test_misaligned_logprobs_are_an_error(model_dir):
    broken = [dict(OUTPUTS[0]), OUTPUTS[1]]
    broken[0]["meta_info"] = dict(OUTPUTS[0]["meta_info"], output_token_logprobs=[(-1.5, 40, None)])
    adapter, _ = _adapter(model_dir, broken)
    with pytest.raises(ValueError, match="do not match output_ids"):
        adapter.generate_sequences(_prompts())


def test_an_aborted_request_keeps_its_tokens(model_dir):
    aborted = {
        "output_ids": [40],
        "meta_info": {
            "id": "r0",
            "finish_reason": {"type": "abort", "message": "Abort before decode", "status_code": 400, "err_type": None},
            "prompt_tokens": 3,
            "weight_version": "default",
            "num_retractions": 0,
            "reasoning_tokens": 0,
            "completion_tokens": 1,
            "cached_tokens": 0,
            "input_token_logprobs": [(None, 10, None)],
            "output_token_logprobs": [(-1.5, 40, None)],
            "output_token_logprobs_length": 1,
        },
    }
    adapter, _ = _adapter(model_dir, [aborted, OUTPUTS[1]])
    prompts = _prompts()
    out = adapter.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, EOS, PAD)
    assert out.batch["response_mask"][0].tolist() == [1, 0, 0, 0] and out.meta_info["aborted_rows"] == 1


def test_topk_capture_through_logit_capture(model_dir):
    adapter, engine = _adapter(model_dir, logit_capture={"enable": True, "mode": "topk", "k": 2})
    out = adapter.generate_sequences(_prompts())
    kwargs = engine.calls[0][1]
    assert (kwargs["return_logprob"], kwargs["top_logprobs_num"], kwargs["token_ids_logprob"]) == (
        [True, True],
        [2, 2],
        None,
    )
    topk = out.batch["rollout_topk_logprobs"]  # (B, R, k), sorted best first, 0 on padding
    assert topk[0].tolist() == [[-0.5, -1.5], [-0.25, -2.0], [-0.75, -1.0], [0.0, 0.0]]
    assert out.batch["rollout_topk_ids"][1].tolist() == [[6, 50], [5, 51], [4, 52], [53, 5]]
    assert out.batch["rollout_log_probs"][0].tolist() == [-1.5, -0.25, -0.75, 0.0]


def test_full_capture_is_refused_with_what_to_use(model_dir):
    with pytest.raises(ValueError, match=r"SGLang returns log-probabilities, never logits; use mode=topk with k=512"):
        _adapter(model_dir, logit_capture={"enable": True, "mode": "full"})


def test_weight_sync_goes_bucket_by_bucket_then_flushes_off_the_event_loop(model_dir):
    adapter, engine = _adapter(model_dir)
    weights = [("a", torch.zeros(4)), ("b", torch.zeros(4)), ("c", torch.zeros(8))]  # 16, 16, 32 bytes
    # verl's async face runs inside asyncio.run: SGLang's blocking methods must not see the running loop
    asyncio.run(adapter.update_weights(weights, bucket_bytes=32))
    adapter.load_weights(weights, bucket_bytes=32)  # and the worker's blocking call
    expected = [
        ("update_weights_from_tensor", {"names": ["a", "b"], "flush_cache": False}),
        ("update_weights_from_tensor", {"names": ["c"], "flush_cache": False}),
        ("flush_cache", {}),
    ]
    assert engine.calls == expected + expected


def test_the_double_fails_like_sglang_inside_a_running_loop():
    engine = SGLangEngineDouble(replies=[[5, EOS]])

    async def call_directly():
        engine.flush_cache()

    with pytest.raises(LoopConflict, match="Cannot run the event loop while another loop is running"):
        asyncio.run(call_directly())


def test_sleep_and_wake_release_and_resume_the_engine_memory(model_dir):
    adapter, engine = _adapter(model_dir, free_cache_engine=True)
    adapter.sleep()
    with pytest.raises(RuntimeError, match="released"):
        adapter.generate_sequences(_prompts())
    adapter.wake_up(["weights"])
    adapter.load_weights([("a", torch.zeros(2))])
    adapter.wake_up(["kv_cache"])
    adapter.generate_sequences(_prompts())
    names = [c[0] for c in engine.calls]
    assert names == [
        "release_memory_occupation",
        "generate",  # refused by the double: the memory was released
        "resume_memory_occupation",
        "update_weights_from_tensor",
        "flush_cache",
        "resume_memory_occupation",
        "generate",
    ]
    assert [c[1]["tags"] for c in engine.calls if c[0].endswith("occupation")] == [None, ["weights"], ["kv_cache"]]
    adapter_off, engine_off = _adapter(model_dir, free_cache_engine=False)
    adapter_off.sleep()
    adapter_off.wake_up()
    assert engine_off.calls == []  # no memory saver: nothing to release


def test_real_generation_on_the_double_matches_the_model_and_follows_weight_syncs(model_dir):
    """The double generates with the tiny model: SGLang-shaped logprobs (log_softmax(z / T)) equal a teacher-forced
    forward, and after a weight sync they follow the new weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = SGLangEngineDouble(model=model)
    adapter, _ = _adapter(model_dir, engine=engine, top_k=-1, top_p=1.0, temperature=0.7)
    prompts = _prompts()

    def teacher_forced(out, module):
        with torch.no_grad():
            logits = module(
                input_ids=out.batch["input_ids"],
                attention_mask=out.batch["attention_mask"],
                position_ids=out.batch["position_ids"],
            ).logits[:, -R - 1 : -1]
        logp = torch.log_softmax(logits.float() / 0.7, -1).gather(-1, out.batch["responses"][..., None]).squeeze(-1)
        return logp * out.batch["response_mask"]

    out = adapter.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, EOS, PAD)
    torch.testing.assert_close(out.batch["rollout_log_probs"], teacher_forced(out, model), atol=1e-5, rtol=0)
    trained = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapter.load_weights(trained.state_dict().items())
    out = adapter.generate_sequences(prompts)
    torch.testing.assert_close(out.batch["rollout_log_probs"], teacher_forced(out, trained), atol=1e-5, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed here")
@pytest.mark.parametrize("name", ["sglang", "sglang_with_logit"])
def test_sglang_missing_names_the_engine_and_the_extra(name):
    from verl.workers.rollout.base import get_rollout_class

    with pytest.raises(ImportError, match=r"pip install verl\[sglang\]") as err:
        get_rollout_class(name, "async")
    assert repr(name) in str(err.value) and "sglang" in str(err.value)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["sglang", "sglang_with_logit"])
def test_real_sglang_meets_the_contract(tiny_model_dir, name):
    pytest.importorskip("sglang", reason="needs SGLang (GPU)")
    from transformers import AutoTokenizer

    from verl.workers.rollout.base import get_rollout_class

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = _config(name=name, load_format="auto", tensor_model_parallel_size=1, dtype="float32")
    rollout = get_rollout_class(name, "async")(tiny_model_dir, config)
    # the weight sync and the memory lifecycle on the real engine, from plain code and inside an event loop
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    rollout.load_weights(state.items())
    asyncio.run(rollout.update_weights(state.items()))
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in ("say yes", "count one two three")
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True, padding_side="left")
    mask = enc["attention_mask"]
    prompts = DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        meta_info={"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
    )
    out = rollout.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, tokenizer.eos_token_id, tokenizer.pad_token_id)
    rollout.engine.close()


def _with_logit_class(monkeypatch):
    """``SGLangRolloutWithLogit`` without SGLang: a placeholder ``sglang`` module passes the import guard (the class
    never touches SGLang when given an engine); monkeypatch removes it again."""
    import importlib
    import importlib.machinery
    import sys
    import types

    name = "verl.workers.rollout.sglang_rollout.sglang_rollout_with_logit"
    if importlib.util.find_spec("sglang") is None:
        placeholder = types.ModuleType("sglang")
        placeholder.__spec__ = importlib.machinery.ModuleSpec("sglang", None)
        monkeypatch.setitem(sys.modules, "sglang", placeholder)
        for module in (name, "verl.workers.rollout.sglang_rollout.sglang_rollout"):
            monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(name).SGLangRolloutWithLogit


def test_multi_turn_with_sglang_with_logit_runs_the_worker_path_on_the_double(model_dir, monkeypatch):
    """The hybrid worker's multi-turn path (generate_multiturn on rollout.engine) with rollout.name=sglang_with_logit:
    two assistant turns per dialogue generated by the double (the tiny model, SGLang-shaped answers, SGLang's blocking
    calls made inside the loop's event loop go to a worker thread), each turn's capture handed to the interaction,
    and the captured logprobs equal a teacher-forced forward over the final sequences."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction
    from verl.workers.rollout.multiturn import generate_multiturn

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
    config = _config(
        name="sglang_with_logit",
        response_length=48,
        temperature=1.0,
        top_p=1.0,
        top_k=-1,
        multi_turn={"enable": True, "max_assistant_turns": 2},
        logit_capture={"enable": True, "mode": "token_ids", "ids": [yes, no]},
    )
    engine = SGLangEngineDouble(model=model)
    rollout = _with_logit_class(monkeypatch)(model_dir, config, engine=engine)
    inner_generate = rollout.engine.generate

    def short(prompts, params):  # an untrained model rarely emits EOS: turns of at most 6 tokens
        return inner_generate(prompts, [p.replace(max_tokens=min(p.max_tokens, 6)) for p in params])

    monkeypatch.setattr(rollout.engine, "generate", short)
    questions = [{"question": "paper one?", "label": "yes"}, {"question": "paper two?", "label": "no"}]
    chats = [[{"role": "user", "content": t}] for t in ("Does this paper belong to the author?", "Is it by them?")]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    mask = enc["attention_mask"]
    raw = np.empty(2, dtype=object)
    raw[:] = chats
    kwargs = np.empty(2, dtype=object)
    kwargs[:] = [{"name": "dialog", "questions": questions}] * 2
    prompts = DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        non_tensors={"raw_prompt": raw, "interaction_kwargs": kwargs},
        meta_info={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
    )
    dialog = MultiTurnDialogInteraction(
        {"name": "dialog", "prob_weight": 0.5, "label_token_ids": {"yes": yes, "no": no}}
    )
    torch.manual_seed(0)
    out = generate_multiturn(prompts, rollout.engine, tok, rollout.config, {"dialog": dialog}, rollout.capture_spec)

    assert [n for n, _ in engine.calls] == ["generate", "generate"]  # one batched SGLang call per round
    assert out.non_tensor_batch["__num_turns__"].tolist() == [4, 4]  # prompt, 2 assistant turns, 1 user turn
    batch = out.batch
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
    width = prompts.batch["input_ids"].size(1)
    logp = torch.log_softmax(logits[:, width - 1 : -1].float(), dim=-1)  # row t predicts response token t
    forced = logp.gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    assistant = batch["response_mask"].bool()
    torch.testing.assert_close(batch["rollout_log_probs"][assistant], forced[assistant], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        batch["rollout_token_id_logprobs"][assistant], logp[..., [yes, no]][assistant], atol=1e-4, rtol=0
    )
    scores = out.non_tensor_batch["reward_scores"]
    assert all(len(s["dialog"]) == 2 for s in scores)


def _agent_loop_on(engine, tok, capture_spec=None):
    """Three rows through run_agent_loops on ``engine``: two echo agents (3 assistant turns, 2 tool turns) and a
    single-turn row; 6 tokens per turn."""
    from types import SimpleNamespace

    from tests.experimental.test_agent_loop import ECHO_SCHEMA, EchoTool, _prompts  # registers the echo agent
    from verl.experimental.agent_loop import run_agent_loops
    from verl.workers.config.rollout import MultiTurnConfig
    from verl.workers.rollout.engine import SamplingParams

    prompts = _prompts(
        tok,
        ["say a digit", "write seven", "count two"],
        ["test_always_echo_agent", "single_turn_agent", "test_always_echo_agent"],
    )
    cfg = SimpleNamespace(rollout=RolloutConfig(response_length=96, multi_turn=MultiTurnConfig(max_assistant_turns=3)))
    params = SamplingParams(max_tokens=6, temperature=1.0, stop_token_ids=(tok.eos_token_id,), capture=capture_spec)
    return run_agent_loops(
        prompts, engine, tok, cfg, params, "single_turn_agent", capture_spec, tools={"echo": EchoTool({}, ECHO_SCHEMA)}
    )


def test_tool_agent_loop_runs_on_the_sglang_adapter_with_batched_calls(model_dir, monkeypatch):
    """The agent loop on rollout.name=sglang_with_logit (the double: SGLang-shaped answers, and SGLang's refusal of
    blocking calls inside a running event loop): one batched engine call per round, masks and captures in place."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = SGLangEngineDouble(model=model)
    config = _config(name="sglang_with_logit", response_length=96, logit_capture={"enable": True, "mode": "logprob"})
    rollout = _with_logit_class(monkeypatch)(model_dir, config, engine=engine)
    out = _agent_loop_on(rollout.engine, tok, rollout.capture_spec)
    assert [n for n, _ in engine.calls] == ["generate"] * 3  # rounds, not samples
    assert out.non_tensor_batch["__num_turns__"].tolist() == [6, 2, 6]
    mask = out.batch["response_mask"]
    assert ((out.batch["rollout_log_probs"] != 0) <= mask.bool()).all()  # captures only on generated tokens
    assert (out.batch["rollout_log_probs"][mask.bool()] < 0).all()


@pytest.mark.gpu
def test_tool_agent_loop_on_real_sglang(tiny_model_dir):
    pytest.importorskip("sglang", reason="needs SGLang (GPU)")
    from transformers import AutoTokenizer

    from verl.workers.rollout.base import get_rollout_class

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = _config(
        name="sglang", response_length=96, load_format="auto", tensor_model_parallel_size=1, dtype="float32"
    )
    rollout = get_rollout_class("sglang", "async")(tiny_model_dir, config)
    try:
        out = _agent_loop_on(rollout.engine, tok)
        assert out.non_tensor_batch["__num_turns__"].tolist() == [6, 2, 6]
        assert out.non_tensor_batch["tool_call_counts"].tolist() == [2, 0, 2]
    finally:
        rollout.engine.close()
