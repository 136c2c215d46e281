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


def test_buffer_without_max_resp_len_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="max_resp_len"):
        DAPORewardManager(tokenizer, 0, overlong_buffer_cfg={"enable": True, "len": 4, "penalty_factor": 1.0})
