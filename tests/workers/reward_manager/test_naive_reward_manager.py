"""Naive and batch reward managers on a hand-built DataProto (left-padded prompts, right-padded responses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl import DataProto
from verl.utils.tokenizer import hf_tokenizer
from verl.workers.reward_manager import BatchRewardManager, NaiveRewardManager

PROMPT_LEN, RESPONSE_LEN = 8, 6


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return hf_tokenizer(tiny_model_dir)


def build_batch(tokenizer, rows: list[tuple[str, str, str]], **non_tensor) -> DataProto:
    """rows: (prompt text, response text, ground truth); prompts left padded to 8, responses right padded to 6."""
    pad = tokenizer.pad_token_id
    prompts, responses, masks = [], [], []
    for prompt, response, _ in rows:
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert len(p_ids) <= PROMPT_LEN and len(r_ids) <= RESPONSE_LEN, (p_ids, r_ids)
        p_pad, r_pad = PROMPT_LEN - len(p_ids), RESPONSE_LEN - len(r_ids)
        prompts.append([pad] * p_pad + p_ids)
        responses.append(r_ids + [pad] * r_pad)
        masks.append([0] * p_pad + [1] * len(p_ids) + [1] * len(r_ids) + [0] * r_pad)
    non_tensors = {
        "data_source": ["openai/gsm8k"] * len(rows),
        "reward_model": [{"style": "rule", "ground_truth": truth} for _, _, truth in rows],
        "extra_info": [{"index": i} for i in range(len(rows))],
    }
    non_tensors.update(non_tensor)
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor(prompts),
            "responses": torch.tensor(responses),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors=non_tensors,
    )


def valid_response_lengths(data: DataProto) -> list[int]:
    return data.batch["attention_mask"][:, PROMPT_LEN:].sum(-1).tolist()


def test_score_lands_on_last_valid_response_token(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7"), ("what is 1 + 1", "#### 3", "2")])
    rewards = NaiveRewardManager(tokenizer, num_examine=0)(data)
    assert rewards.shape == (2, RESPONSE_LEN) and rewards.dtype == torch.float32
    expected = torch.zeros(2, RESPONSE_LEN)
    first_len = valid_response_lengths(data)[0]
    expected[0, first_len - 1] = 1.0  # correct answer at the last real token; the wrong one scores 0 everywhere
    assert torch.equal(rewards, expected)


def test_compute_score_sees_decoded_valid_prompt_and_response(tokenizer):
    calls = []

    def spy(data_source, solution_str, ground_truth, extra_info=None):
        calls.append((data_source, solution_str, ground_truth, extra_info))
        return 0.5

    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7")])
    manager = NaiveRewardManager(tokenizer, num_examine=0, compute_score=spy)
    rewards = manager(data)
    # no __num_turns__ column -> no num_turns; no reward_scores column -> rollout_reward_scores defaults to {}
    assert calls == [("openai/gsm8k", "#### 7", "7", {"index": 0, "rollout_reward_scores": {}})]
    assert data.non_tensor_batch["extra_info"][0] == {"index": 0}  # the batch is not mutated
    assert rewards[0, valid_response_lengths(data)[0] - 1] == 0.5


def multi_turn_batch(tokenizer) -> DataProto:
    rows = [("what is 3 + 4", "#### 7", "7"), ("what is 1 + 1", "#### 3", "2")]
    return build_batch(
        tokenizer,
        rows,
        __num_turns__=np.array([2, 4], dtype=np.int32),
        reward_scores=np.array([{"judge": 0.5}, {}], dtype=object),
    )


def test_num_turns_and_rollout_reward_scores_reach_the_scorer(tokenizer):
    seen = []

    def spy(data_source, solution_str, ground_truth, extra_info=None):
        seen.append(extra_info)
        return 0.0

    NaiveRewardManager(tokenizer, num_examine=0, compute_score=spy)(multi_turn_batch(tokenizer))
    # __num_turns__ -> extra_info["num_turns"], reward_scores -> extra_info["rollout_reward_scores"]
    assert seen == [
        {"index": 0, "num_turns": 2, "rollout_reward_scores": {"judge": 0.5}},
        {"index": 1, "num_turns": 4, "rollout_reward_scores": {}},
    ]


def test_batch_manager_extra_infos_carry_num_turns_and_rollout_reward_scores(tokenizer):
    seen = []

    def batched(data_sources, solution_strs, ground_truths, extra_infos):
        seen.extend(extra_infos)
        return [0.0] * len(data_sources)

    BatchRewardManager(tokenizer, num_examine=0, compute_score=batched)(multi_turn_batch(tokenizer))
    assert [(e["num_turns"], e["rollout_reward_scores"]) for e in seen] == [(2, {"judge": 0.5}), (4, {})]


def test_naive_plain_number_score_adds_no_extra_columns(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7")])
    out = NaiveRewardManager(tokenizer, num_examine=0, compute_score=lambda **kw: 1)(data, return_dict=True)
    # an int result is the score; unlike DAPO, naive logs no "acc" for it
    assert out["reward_extra_info"] == {}
    assert out["reward_tensor"].sum().item() == 1.0


def test_empty_response_score_lands_on_the_last_column(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "", "7"), ("what is 1 + 1", "#### 2", "2")])
    assert valid_response_lengths(data)[0] == 0
    rewards = NaiveRewardManager(tokenizer, num_examine=0, compute_score=lambda **kw: 2.0)(data)
    # L = 0 -> column L - 1 = -1, i.e. column 5 of 6 (a masked position), not column 0
    expected_row0 = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 2.0])
    assert torch.equal(rewards[0], expected_row0)
    assert rewards[1, valid_response_lengths(data)[1] - 1] == 2.0


def test_dict_scores_fill_reward_extra_info(tokenizer):
    def scorer(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": 2.0, "acc": solution_str.endswith(ground_truth)}

    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7"), ("what is 1 + 1", "#### 3", "2")])
    out = NaiveRewardManager(tokenizer, num_examine=0, compute_score=scorer)(data, return_dict=True)
    assert set(out) == {"reward_tensor", "reward_extra_info"}
    assert out["reward_extra_info"] == {"score": [2.0, 2.0], "acc": [True, False]}
    assert out["reward_tensor"].sum().item() == 4.0


def test_rm_scores_pass_through(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7")])
    data.batch["rm_scores"] = torch.full((1, RESPONSE_LEN), 0.25)
    out = NaiveRewardManager(tokenizer, num_examine=0)(data, return_dict=True)
    assert torch.equal(out["reward_tensor"], data.batch["rm_scores"])
    assert out["reward_extra_info"] == {}


def test_prints_up_to_num_examine_samples_per_data_source(tokenizer, capsys):
    rows = [("what is 3 + 4", "#### 7", "7")] * 3
    sources = np.array(["openai/gsm8k", "openai/gsm8k", "lighteval/MATH"], dtype=object)
    data = build_batch(tokenizer, rows, data_source=sources)
    NaiveRewardManager(tokenizer, num_examine=1)(data)
    printed = capsys.readouterr().out
    assert printed.count("[prompt]") == 2  # one per data source
    assert "[ground_truth] 7" in printed and "[score]" in printed


def test_missing_reward_fn_key_column_names_the_key(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7")])
    manager = NaiveRewardManager(tokenizer, num_examine=0, reward_fn_key="source")
    with pytest.raises(KeyError, match="'source'.*data.reward_fn_key"):
        manager(data)


def test_batch_manager_calls_once_with_lists_and_reward_kwargs(tokenizer):
    calls = []

    def batched(data_sources, solution_strs, ground_truths, extra_infos, bonus=0.0):
        calls.append((list(data_sources), list(solution_strs), list(ground_truths)))
        return [float(s.endswith(t)) + bonus for s, t in zip(solution_strs, ground_truths)]

    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7"), ("what is 1 + 1", "#### 3", "2")])
    rewards = BatchRewardManager(tokenizer, num_examine=0, compute_score=batched, bonus=0.5)(data)
    assert calls == [(["openai/gsm8k"] * 2, ["#### 7", "#### 3"], ["7", "2"])]
    lengths = valid_response_lengths(data)
    assert rewards[0, lengths[0] - 1] == 1.5 and rewards[1, lengths[1] - 1] == 0.5
    assert rewards.sum().item() == 2.0


def test_batch_manager_falls_back_to_default_compute_score(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7"), ("what is 1 + 1", "#### 3", "2")])
    naive = NaiveRewardManager(tokenizer, num_examine=0)(data)
    batched = BatchRewardManager(tokenizer, num_examine=0)(data)
    assert torch.equal(naive, batched)


def test_batch_manager_rejects_wrong_result_count(tokenizer):
    data = build_batch(tokenizer, [("what is 3 + 4", "#### 7", "7")])
    manager = BatchRewardManager(tokenizer, 0, compute_score=lambda **kw: [1.0, 2.0])
    with pytest.raises(ValueError, match="2 results for 1 rows"):
        manager(data)
