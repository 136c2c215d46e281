"""DAPO reward manager: the soft overlong penalty on top of the naive score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl import DataProto
from verl.utils.tokenizer import hf_tokenizer
from verl.workers.reward_manager import DAPORewardManager
from verl.workers.reward_manager.dapo import overlong_penalty

PROMPT_LEN, MAX_RESP_LEN = 2, 10


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return hf_tokenizer(tiny_model_dir)


def batch_with_response_lengths(tokenizer, lengths: list[int]) -> DataProto:
    """Responses of the given valid lengths (token ids are arbitrary digits), right padded to 10."""
    digit = tokenizer.convert_tokens_to_ids("7")
    pad = tokenizer.pad_token_id
    responses = [[digit] * n + [pad] * (MAX_RESP_LEN - n) for n in lengths]
    masks = [[1] * PROMPT_LEN + [1] * n + [0] * (MAX_RESP_LEN - n) for n in lengths]
    return DataProto.from_dict(
        tensors={
            "prompts": torch.full((len(lengths), PROMPT_LEN), digit),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": np.array(["math_dapo"] * len(lengths), dtype=object),
            "reward_model": np.array([{"ground_truth": "7"}] * len(lengths), dtype=object),
        },
    )


@pytest.mark.parametrize(
    "length, penalty",
    [
        # max_resp_len 10, buffer 4, factor 1: free up to 10 - 4 = 6 tokens
        (5, 0.0),
        (6, 0.0),
        (7, -0.25),  # -(7 - 6) / 4 * 1
        (8, -0.5),  # -(8 - 6) / 4
        (10, -1.0),  # -(10 - 6) / 4: the full penalty_factor at the maximum length
    ],
)
def test_overlong_penalty_arithmetic(length, penalty):
    assert overlong_penalty(length, max_resp_len=10, buffer_len=4, penalty_factor=1.0) == pytest.approx(penalty)


def test_penalty_is_added_to_the_score_and_logged(tokenizer):
    cfg = {"enable": True, "len": 4, "penalty_factor": 0.5, "log": True}

    def scorer(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": 1.0, "acc": True}

    manager = DAPORewardManager(tokenizer, 0, scorer, max_resp_len=MAX_RESP_LEN, overlong_buffer_cfg=cfg)
    out = manager(batch_with_response_lengths(tokenizer, [6, 8, 10]), return_dict=True)
    # penalties with factor 0.5: 0, -(8-6)/4*0.5 = -0.25, -(10-6)/4*0.5 = -0.5
    rewards = out["reward_tensor"]
    assert rewards[0, 5].item() == pytest.approx(1.0)
    assert rewards[1, 7].item() == pytest.approx(0.75)
    assert rewards[2, 9].item() == pytest.approx(0.5)
    assert out["reward_extra_info"]["overlong_reward"] == pytest.approx([0.0, -0.25, -0.5])
    assert out["reward_extra_info"]["overlong"] == [False, True, True]
    assert out["reward_extra_info"]["acc"] == [True, True, True]


def test_disabled_buffer_leaves_scores_alone(tokenizer):
    cfg = {"enable": False, "len": 4, "penalty_factor": 1.0, "log": True}
    manager = DAPORewardManager(tokenizer, 0, lambda **kw: 1.0, max_resp_len=MAX_RESP_LEN, overlong_buffer_cfg=cfg)
    out = manager(batch_with_response_lengths(tokenizer, [10]), return_dict=True)
    assert out["reward_tensor"][0, 9].item() == 1.0 and "overlong" not in out["reward_extra_info"]


def test_plain_number_score_is_also_logged_as_acc(tokenizer):
    cfg = {"enable": True, "len": 4, "penalty_factor": 1.0, "log": False}
    manager = DAPORewardManager(tokenizer, 0, lambda **kw: 1, max_resp_len=MAX_RESP_LEN, overlong_buffer_cfg=cfg)
    out = manager(batch_with_response_lengths(tokenizer, [6, 8]), return_dict=True)
    # rewards 1 + 0 and 1 - (8-6)/4 = 0.5; acc keeps the scorer's value, before the penalty
    assert out["reward_tensor"][0, 5].item() == 1.0 and out["reward_tensor"][1, 7].item() == 0.5
    assert out["reward_extra_info"] == {"acc": [1.0, 1.0]}


def test_dict_score_copies_every_key_into_extra_info(tokenizer):
    manager = DAPORewardManager(tokenizer, 0, lambda **kw: {"score": -1.0, "pred": "7", "acc": False})
    out = manager(batch_with_response_lengths(tokenizer, [3]), return_dict=True)
    assert out["reward_extra_info"] == {"score": [-1.0], "pred": ["7"], "acc": [False]}
    assert out["reward_tensor"][0, 2].item() == -1.0  # L = 3 -> column 2


def test_empty_response_score_lands_on_the_last_column(tokenizer):
    manager = DAPORewardManager(tokenizer, 0, lambda **kw: 1.0)
    rewards = manager(batch_with_response_lengths(tokenizer, [0]))
    # L = 0 -> column -1 (index 9 of 10), not column 0
    assert rewards[0, -1].item() == 1.0 and rewards[0, :-1].abs().sum().item() == 0.0


def test_num_turns_and_rollout_reward_scores_reach_the_scorer(tokenizer):
    seen = []

    def spy(data_source, solution_str, ground_truth, extra_info=None):
        seen.append(extra_info)
        return 0.0

    data = batch_with_response_lengths(tokenizer, [2, 3])
    data.non_tensor_batch["__num_turns__"] = np.array([3, 1], dtype=np.int32)
    data.non_tensor_batch["reward_scores"] = np.array([{"tool": 1.0}, {}], dtype=object)
    DAPORewardManager(tokenizer, 0, spy)(data)
    assert seen == [
        {"num_turns": 3, "rollout_reward_scores": {"tool": 1.0}},
        {"num_turns": 1, "rollout_reward_scores": {}},
    ]


class CharTokenizer:
    """Token i decodes to letter i (0 -> "a"); token 9 is an EOS that decode does not skip, as some tokenizers do."""

    eos_token = "</s>"

    def decode(self, ids, skip_special_tokens=True):
        return "".join("</s>" if int(i) == 9 else chr(ord("a") + int(i)) for i in ids)


def test_trailing_eos_string_is_stripped_before_scoring():
    seen = []

    def spy(data_source, solution_str, ground_truth, extra_info=None):
        seen.append(solution_str)
        return 0.0

    data = DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([[0], [0]]),
            "responses": torch.tensor([[1, 2, 9], [9, 1, 0]]),
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        },
        non_tensors={
            "data_source": np.array(["s", "s"], dtype=object),
            "reward_model": np.array([{"ground_truth": "x"}] * 2, dtype=object),
        },
    )
    DAPORewardManager(CharTokenizer(), 0, spy)(data)
    # "bc</s>" -> "bc"; "</s>b" keeps its EOS because it is not trailing
    assert seen == ["bc", "</s>b"]


@pytest.mark.parametrize(
    "cfg, max_resp_len, message",
    [
        # max_resp_len must be set whenever a buffer config is given, even a disabled one
        ({"enable": True, "len": 4}, None, r"reward_model\.reward_kwargs.*\.max_resp_len is None"),
        ({"enable": False, "len": 4}, None, r"reward_model\.reward_kwargs.*\.max_resp_len is None"),
        # max_resp_len >= len, checked even when disabled
        (
            {"enable": False, "len": 12},
            10,
            r"max_resp_len=10 must be >= reward_model\.reward_kwargs.*overlong_buffer_cfg\.len=12",
        ),
        # enable -> len > 0
        ({"enable": True, "len": 0}, 10, r"reward_model\.reward_kwargs.*overlong_buffer_cfg\.len=0 must be > 0"),
    ],
)
def test_construction_errors_name_the_key(tokenizer, cfg, max_resp_len, message):
    with pytest.raises(ValueError, match=message):
        DAPORewardManager(tokenizer, 0, max_resp_len=max_resp_len, overlong_buffer_cfg=cfg)


def test_valid_or_absent_buffer_configs_construct():
    DAPORewardManager(None, 0)  # no buffer config: max_resp_len not needed
    DAPORewardManager(None, 0, max_resp_len=4, overlong_buffer_cfg={"enable": True, "len": 4})  # len == max is fine
    DAPORewardManager(None, 0, max_resp_len=4, overlong_buffer_cfg={"enable": False, "len": 0})
