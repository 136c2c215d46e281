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

EOS, PAD, R, VOCAB = 2, 3, 4, 512

# Two rows as SGLang 0.5.2 returns them for return_logprob=True, top_logprobs_num=2: row 0 stops at EOS (the EOS is
# in output_ids), row 1 runs to max_new_tokens. input_token_logprobs is [(None, last prompt id, None)] by default.
OUTPUTS = [
    {
        "text": " yes no",
        "output_ids": [40, 41, 2],
        "meta_info": {
            "id": "r0",
            "finish_reason": {"type": "stop", "matched": 2},
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "cached_tokens": 0,
            "weight_version": "default",
            "e2e_latency": 0.12,
            "input_token_logprobs": [(None, 12, None)],
            "output_token_logprobs": [(-1.5, 40, None), (-0.25, 41, None), (-0.75, 2, None)],
            "input_top_logprobs": [None],
            "output_top_logprobs": [
                [(-0.5, 7, None), (-1.5, 40, None)],
                [(-0.25, 41, None), (-2.0, 9, None)],
                [(-0.75, 2, None), (-1.0, 8, None)],
            ],
        },
    },
    {
        "text": " one two three four",
        "output_ids": [50, 51, 52, 53],
        "meta_info": {
            "id": "r1",
            "finish_reason": {"type": "length", "length": 4},
            "prompt_tokens": 2,
            "completion_tokens": 4,
            "cached_tokens": 0,
            "weight_version": "default",
            "e2e_latency": 0.12,
            "input_token_logprobs": [(None, 21, None)],
            "output_token_logprobs": [(-1.0, 50, None), (-2.0, 51, None), (-3.0, 52, None), (-0.5, 53, None)],
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


class FakeEngine:
    """Records the calls an adapter makes and answers with literal SGLang response dicts."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = []

    def generate(self, **kwargs):
        self.calls.append(("generate", kwargs))
        return self.outputs

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        self.calls.append(("update", [n for n, _ in named_tensors], flush_cache))

    def flush_cache(self):
        self.calls.append(("flush",))


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


def _adapter(outputs=OUTPUTS, **overrides):
    engine = FakeEngine(outputs)
    return SGLangAdapter(None, _config(**overrides), engine=engine, vocab_size=VOCAB), engine


def test_request_carries_unpadded_ids_and_the_sampling_params():
    adapter, engine = _adapter()
    adapter.generate_sequences(_prompts())
    (_, kwargs) = engine.calls[0]
    assert kwargs["input_ids"] == [[10, 11, 12], [20, 21]]  # left padding removed, one request per row
    assert kwargs["sampling_params"] == {
        "max_new_tokens": R,
        "temperature": 0.9,
        "top_p": 0.95,
        "top_k": 20,
        "stop_token_ids": [EOS],
        "ignore_eos": False,
        "skip_special_tokens": False,
        "n": 1,
    }
    assert kwargs["return_logprob"] is True and kwargs["top_logprobs_num"] == 0


def test_validate_is_greedy_and_logprobs_are_asked_only_when_needed():
    adapter, engine = _adapter(calculate_log_probs=False)
    adapter.generate_sequences(_prompts(validate=True))
    params = engine.calls[0][1]["sampling_params"]
    assert (params["temperature"], params["top_p"], params["top_k"]) == (0.0, 1.0, -1)
    assert "return_logprob" not in engine.calls[0][1]


def test_outputs_become_the_rollout_contract():
    adapter, _ = _adapter()
    prompts = _prompts()
    out = adapter.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, EOS, PAD)
    # Row 0 ends at its EOS (kept, mask 1) and is padded after; row 1 fills the response.
    assert out.batch["responses"].tolist() == [[40, 41, 2, PAD], [50, 51, 52, 53]]
    assert out.batch["response_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert out.batch["rollout_log_probs"].tolist() == [[-1.5, -0.25, -0.75, 0.0], [-1.0, -2.0, -3.0, -0.5]]
    assert out.meta_info["aborted_rows"] == 0


def test_misaligned_logprobs_are_an_error():
    broken = [dict(OUTPUTS[0]), OUTPUTS[1]]
    broken[0]["meta_info"] = dict(OUTPUTS[0]["meta_info"], output_token_logprobs=[(-1.5, 40, None)])
    adapter, _ = _adapter(broken)
    with pytest.raises(ValueError, match="do not match output_ids"):
        adapter.generate_sequences(_prompts())


def test_an_aborted_request_keeps_its_tokens():
    aborted = {
        "output_ids": [40],
        "meta_info": {
            "id": "r0",
            "finish_reason": {"type": "abort", "message": "Abort before decode", "status_code": 400, "err_type": None},
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "cached_tokens": 0,
            "input_token_logprobs": [(None, 12, None)],
            "output_token_logprobs": [(-1.5, 40, None)],
        },
    }
    adapter, _ = _adapter([aborted, OUTPUTS[1]])
    prompts = _prompts()
    out = adapter.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, EOS, PAD)
    assert out.batch["response_mask"][0].tolist() == [1, 0, 0, 0] and out.meta_info["aborted_rows"] == 1


def test_topk_capture_through_logit_capture():
    adapter, engine = _adapter(logit_capture={"enable": True, "mode": "topk", "k": 2})
    out = adapter.generate_sequences(_prompts())
    kwargs = engine.calls[0][1]
    assert (kwargs["return_logprob"], kwargs["top_logprobs_num"], kwargs["token_ids_logprob"]) == (True, 2, None)
    topk = out.batch["rollout_topk_logprobs"]  # (B, R, k), sorted best first, 0 on padding
    assert topk[0].tolist() == [[-0.5, -1.5], [-0.25, -2.0], [-0.75, -1.0], [0.0, 0.0]]
    assert out.batch["rollout_topk_ids"][1].tolist() == [[6, 50], [5, 51], [4, 52], [53, 5]]
    assert out.batch["rollout_log_probs"][0].tolist() == [-1.5, -0.25, -0.75, 0.0]


def test_weight_sync_goes_bucket_by_bucket_then_flushes():
    adapter, engine = _adapter()
    weights = [("a", torch.zeros(4)), ("b", torch.zeros(4)), ("c", torch.zeros(8))]  # 16, 16, 32 bytes
    asyncio.run(adapter.update_weights(weights, bucket_bytes=32))
    assert engine.calls == [("update", ["a", "b"], False), ("update", ["c"], False), ("flush",)]


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
    rollout.engine.shutdown()
