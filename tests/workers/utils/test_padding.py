"""verl.workers.utils.padding: padded <-> nested (padding-free) batches."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding


def _batch() -> TensorDict:
    # prompt width 4 (left padded), response width 3 (right padded); row 1 has a hole in its response mask
    input_ids = torch.tensor([[0, 0, 11, 12, 13, 14, 0], [21, 22, 23, 24, 25, 26, 27]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    return TensorDict(
        {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": torch.ones(2, 3),
        },
        batch_size=[2],
    )


def test_real_tokens_become_nested_rows_and_the_rest_stays_padded():
    data = _batch()
    nested = left_right_2_no_padding(data)
    assert nested["input_ids"].is_nested and nested["position_ids"].is_nested and nested["loss_mask"].is_nested
    assert [r.tolist() for r in nested["input_ids"].unbind()] == [[11, 12, 13, 14], [21, 22, 23, 24, 25, 26, 27]]
    assert [r.tolist() for r in nested["position_ids"].unbind()] == [[0, 1, 2, 3], list(range(7))]
    # the loss mask covers the real tokens: 0 on the prompt, the response mask (holes included) on the response
    assert [r.tolist() for r in nested["loss_mask"].unbind()] == [[0, 0, 1, 1], [0, 0, 0, 0, 1, 0, 1]]
    assert not nested["advantages"].is_nested and not data["input_ids"].is_nested  # the input is left alone


def test_per_token_values_come_back_aligned_with_the_responses():
    data = _batch()
    nested = left_right_2_no_padding(data)
    # value t predicts token t + 1: shifting the ids by one position gives back each row's response tokens
    following = torch.nested.as_nested_tensor(
        [torch.cat([r[1:], r.new_zeros(1)]) for r in nested["input_ids"].unbind()], layout=torch.jagged
    )
    assert no_padding_2_padding(following, nested).tolist() == [[13, 14, 0], [25, 26, 27]]
