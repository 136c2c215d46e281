"""Step and validation metrics: hand-computed values on a two-sample batch."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from verl.trainer.ppo.metric_utils import (
    _bootstrap_majority,
    bootstrap_metric,
    calc_maj_val,
    compute_data_metrics,
    compute_throughout_metrics,
    compute_timing_metrics,
    flatten_validation_metrics,
    process_validation_metrics,
)


def _two_sample_tensors() -> dict[str, torch.Tensor]:
    # P = 2 prompt columns, R = 3 response columns.
    # sample 0: 1 prompt token (left pad), 2 response tokens; sample 1: 2 prompt tokens, 3 response tokens.
    return {
        "responses": torch.zeros(2, 3, dtype=torch.long),
        "attention_mask": torch.tensor([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
        "response_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
        "token_level_scores": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]]),
        "token_level_rewards": torch.tensor([[0.0, 0.8, 0.0], [0.0, 0.0, 0.25]]),
        "advantages": torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 5.0]]),
        "returns": torch.tensor([[1.0, 1.0, 7.0], [0.0, 2.0, 2.0]]),
        "values": torch.tensor([[1.0, 0.0, 7.0], [0.0, 1.0, 2.0]]),
    }


def _batch(tensors, meta_info=None, non_tensor=None):
    return types.SimpleNamespace(batch=tensors, meta_info=meta_info or {}, non_tensor_batch=non_tensor or {})


def test_compute_data_metrics_matches_hand_computed_values():
    m = compute_data_metrics(_batch(_two_sample_tensors()), use_critic=True)
    # sequence scores: 0+1+0 = 1, 0+0+0.5 = 0.5
    assert m["critic/score/mean"] == pytest.approx(0.75)
    assert (m["critic/score/max"], m["critic/score/min"]) == (1.0, 0.5)
    # sequence rewards: 0.8, 0.25 -> mean 0.525
    assert m["critic/rewards/mean"] == pytest.approx(0.525)
    # valid advantages (99 is masked): 1,2,3,4,5 -> mean 3
    assert (m["critic/advantages/mean"], m["critic/advantages/max"], m["critic/advantages/min"]) == (3.0, 5.0, 1.0)
    # valid returns 1,1,0,2,2 -> mean 6/5
    assert m["critic/returns/mean"] == pytest.approx(1.2)
    assert (m["critic/returns/max"], m["critic/returns/min"]) == (2.0, 0.0)
    # valid values 1,0,0,1,2 -> mean 4/5
    assert m["critic/values/mean"] == pytest.approx(0.8)
    # returns - values = 0,1,0,1,0: mean 0.4, unbiased var (3*0.16 + 2*0.36)/4 = 0.3
    # returns: mean 1.2, squared deviations .04+.04+1.44+.64+.64 = 2.8, var 2.8/4 = 0.7
    assert m["critic/vf_explained_var"] == pytest.approx(1 - 0.3 / (0.7 + 1e-5), rel=1e-5)
    # response lengths 2, 3 (max width 3 -> one of two clipped)
    assert (m["response_length/mean"], m["response_length/max"], m["response_length/min"]) == (2.5, 3.0, 2.0)
    assert m["response_length/clip_ratio"] == 0.5
    # prompt lengths 1, 2 (width 2 -> one of two at the limit)
    assert (m["prompt_length/mean"], m["prompt_length/max"], m["prompt_length/min"]) == (1.5, 2.0, 1.0)
    assert m["prompt_length/clip_ratio"] == 0.5
    assert m["response_length_non_aborted/mean"] == 2.5
    assert m["response/aborted_ratio"] == 0.0


def test_compute_data_metrics_without_critic_omits_value_metrics():
    m = compute_data_metrics(_batch(_two_sample_tensors()), use_critic=False)
    assert "critic/values/mean" not in m and "critic/vf_explained_var" not in m
    assert "critic/score/mean" in m


def test_compute_data_metrics_falls_back_to_attention_mask_and_reads_tensordict():
    tensors = _two_sample_tensors()
    del tensors["response_mask"]
    td = TensorDict(tensors, batch_size=[2])
    m = compute_data_metrics(_batch(td), use_critic=False)
    # attention_mask[:, -3:] = [1,1,0], [1,1,1]: same lengths as the explicit mask
    assert m["response_length/mean"] == 2.5
    assert m["critic/advantages/mean"] == 3.0


def _three_sample_tensors_with_an_aborted_row() -> dict[str, torch.Tensor]:
    # P = 1, R = 3. Response lengths from attention_mask: 2, 0 (aborted), 3.
    # The aborted row's score sits at column -1, where an empty response's score lands.
    return {
        "responses": torch.zeros(3, 3, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]),
        "token_level_scores": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]),
        "token_level_rewards": torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, -3.0], [0.0, 0.0, 0.25]]),
        "advantages": torch.tensor([[1.0, 3.0, 0.0], [9.0, 9.0, 9.0], [2.0, 2.0, 2.0]]),
        "returns": torch.tensor([[1.0, 1.0, 0.0], [9.0, 9.0, 9.0], [1.0, 1.0, 1.0]]),
    }


def test_aborted_row_is_excluded_from_scores_but_counted_in_response_length():
    m = compute_data_metrics(_batch(_three_sample_tensors_with_an_aborted_row()), use_critic=False)
    # score row sums 1, (5 aborted), 0 -> over the two kept rows: mean 0.5, max 1, min 0 (with row 1: mean 2, max 5)
    assert (m["critic/score/mean"], m["critic/score/max"], m["critic/score/min"]) == (0.5, 1.0, 0.0)
    # reward row sums 0.5, (-3 aborted), 0.25 -> mean 0.375, max 0.5, min 0.25
    assert m["critic/rewards/mean"] == pytest.approx(0.375)
    assert (m["critic/rewards/max"], m["critic/rewards/min"]) == (0.5, 0.25)
    # no response_mask in the batch -> attention response part: tokens 1,3 | none | 2,2,2 -> mean 10/5 = 2
    assert m["critic/advantages/mean"] == pytest.approx(2.0) and m["critic/advantages/max"] == 3.0
    # lengths 2, 0, 3 include the aborted zero: mean 5/3, min 0; one of three at R = 3
    assert m["response_length/mean"] == pytest.approx(5 / 3)
    assert (m["response_length/max"], m["response_length/min"]) == (3.0, 0.0)
    assert m["response_length/clip_ratio"] == pytest.approx(1 / 3)
    # non-aborted lengths 2, 3: mean 2.5, min 2, one of two at R
    assert (m["response_length_non_aborted/mean"], m["response_length_non_aborted/min"]) == (2.5, 2.0)
    assert m["response_length_non_aborted/clip_ratio"] == 0.5
    assert m["response/aborted_ratio"] == pytest.approx(1 / 3)


def test_all_aborted_batch_raises_a_clear_error():
    tensors = _two_sample_tensors()
    tensors["attention_mask"] = torch.tensor([[0, 1, 0, 0, 0], [1, 1, 0, 0, 0]])  # no response token anywhere
    with pytest.raises(ValueError, match="all 2 responses .*empty/aborted"):
        compute_data_metrics(_batch(tensors), use_critic=False)


def test_response_length_comes_from_attention_mask_and_token_stats_from_response_mask():
    tensors = _two_sample_tensors()
    # rejection sampling masked out row 1 entirely; attention_mask still says lengths 2 and 3
    tensors["response_mask"] = torch.tensor([[1, 1, 0], [0, 0, 0]])
    m = compute_data_metrics(_batch(tensors), use_critic=False)
    assert m["response_length/mean"] == 2.5  # (2 + 3) / 2, unchanged
    assert m["response/aborted_ratio"] == 0.0
    assert m["critic/score/mean"] == pytest.approx(0.75)  # row 1 is not aborted: (1 + 0.5) / 2
    # advantages of row 0 only: 1, 2 -> mean 1.5 (row 1's 3, 4, 5 excluded)
    assert (m["critic/advantages/mean"], m["critic/advantages/max"]) == (1.5, 2.0)
    # returns of row 0 only: 1, 1
    assert m["critic/returns/mean"] == 1.0


def test_multi_turn_counters_are_reported():
    non_tensor = {"__num_turns__": np.array([2, 4]), "tool_call_counts": np.array([0, 3])}
    m = compute_data_metrics(_batch(_two_sample_tensors(), non_tensor=non_tensor), use_critic=False)
    assert (m["num_turns/min"], m["num_turns/max"], m["num_turns/mean"]) == (2.0, 4.0, 3.0)
    assert m["tool_call_counts/mean"] == 1.5


def test_timing_metrics_per_token_use_response_tokens_for_gen_and_all_tokens_otherwise():
    timing = {"gen": 1.0, "ref": 0.4, "step": 2.0}
    m = compute_timing_metrics(_batch(_two_sample_tensors()), timing)
    assert m["timing_s/gen"] == 1.0 and m["timing_s/step"] == 2.0
    # response tokens 2+3 = 5 -> 1000 ms / 5 = 200
    assert m["timing_per_token_ms/gen"] == pytest.approx(200.0)
    # all tokens: prompts 1+2 = 3, responses 5 -> 8; 400 ms / 8 = 50
    assert m["timing_per_token_ms/ref"] == pytest.approx(50.0)
    assert "timing_per_token_ms/step" not in m


def test_timing_metrics_with_no_tokens_report_zero_per_token():
    tensors = _two_sample_tensors()
    tensors["attention_mask"] = torch.zeros(2, 5, dtype=torch.long)
    tensors["response_mask"] = torch.zeros(2, 3, dtype=torch.long)
    m = compute_timing_metrics(_batch(tensors), {"gen": 1.0})
    assert m["timing_per_token_ms/gen"] == 0.0


def test_throughput_divides_tokens_by_time_and_devices():
    batch = _batch({}, meta_info={"global_token_num": [3, 5]})
    m = compute_throughout_metrics(batch, {"step": 2.0}, n_gpus=2)
    # 8 tokens / (2 s * 2 devices) = 2 tokens/s/device
    assert m == {"perf/total_num_tokens": 8, "perf/time_per_step": 2.0, "perf/throughput": 2.0}


def test_calc_maj_val_returns_first_value_of_majority_answer():
    data = [{"pred": "A", "val": 0.9}, {"pred": "B", "val": 0.8}, {"pred": "A", "val": 0.7}]
    assert calc_maj_val(data, vote_key="pred", val_key="val") == 0.9
    # tie A/B: the answer seen first (A) wins
    tie = [{"pred": "A", "val": 1.0}, {"pred": "B", "val": 0.0}]
    assert calc_maj_val(tie, vote_key="pred", val_key="val") == 1.0


def test_bootstrap_metric_is_seeded_and_rejects_empty_data():
    a = bootstrap_metric([1, 2, 3, 4, 5], subset_size=3, reduce_fns=[np.mean, np.max], n_bootstrap=200, seed=1)
    b = bootstrap_metric([1, 2, 3, 4, 5], subset_size=3, reduce_fns=[np.mean, np.max], n_bootstrap=200, seed=1)
    assert a == b
    assert abs(a[0][0] - 3.0) < 0.3  # the mean of subset means estimates the mean (3)
    # E[max of 3 draws from 1..5] = sum_k P(max >= k) = 1 + (1-(1/5)^3) + (1-(2/5)^3) + (1-(3/5)^3) + (1-(4/5)^3) = 4.2
    assert abs(a[1][0] - 4.2) < 0.2
    # a constant sample has zero spread
    assert bootstrap_metric([2.0, 2.0], 2, [np.max])[0] == (2.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_metric([], subset_size=1, reduce_fns=[np.mean])


def test_vectorised_majority_bootstrap_equals_the_loop():
    rng = np.random.default_rng(0)
    majority = functools.partial(calc_maj_val, vote_key="pred", val_key="val")
    for n, k in [(2, 2), (3, 2), (5, 4), (8, 8)]:
        values, preds = list(rng.random(n)), [str(x) for x in rng.integers(0, 3, n)]
        votes = [{"val": v, "pred": p} for v, p in zip(values, preds)]
        [loop] = bootstrap_metric(votes, k, [majority], n_bootstrap=300, seed=3)
        assert _bootstrap_majority(values, preds, k, n_bootstrap=300, seed=3) == pytest.approx(loop)


def test_process_validation_metrics_names_and_values():
    # prompt u1 (source a) has 4 responses, u2 (source a) 4, u3 (source b) 1.
    sources = ["a"] * 8 + ["b"]
    uids = ["u1"] * 4 + ["u2"] * 4 + ["u3"]
    infos = {
        "reward": [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.5],
        "pred": ["x", "y", "x", "x", "y", "y", "z", "x", "x"],
        "note": ["s"] * 9,  # not numeric: ignored
    }
    out = process_validation_metrics(sources, uids, infos, seed=0)
    a = out["a"]["reward"]
    # N = 4 -> subset sizes 2 and 4
    expected = {"mean@4", "std@4"} | {
        f"{m}@{k}/{s}" for m in ("best", "worst", "maj") for k in (2, 4) for s in ("mean", "std")
    }
    assert set(a) == expected
    # u1 mean 3/4, u2 mean 1/4 -> 0.5; std: u1 sqrt(3/16), u2 sqrt(3/16)
    assert a["mean@4"] == pytest.approx(0.5)
    assert a["std@4"] == pytest.approx(np.sqrt(3 / 16))
    assert 0.0 <= a["worst@4/mean"] <= a["mean@4"] <= a["best@4/mean"] <= 1.0
    assert "note" not in out["a"] and "pred" not in out["a"]
    # one response: only mean@1
    assert out["b"] == {"reward": {"mean@1": 0.5}}


def test_majority_vote_is_exact_when_one_answer_dominates():
    # every response answers "x", so every bootstrap subset's vote picks a reward-1 response
    out = process_validation_metrics(["s"] * 3, ["u"] * 3, {"acc": [1.0, 1.0, 1.0], "pred": ["x"] * 3})
    assert out["s"]["acc"]["maj@2/mean"] == 1.0 and out["s"]["acc"]["maj@3/mean"] == 1.0


def test_flatten_validation_metrics_puts_largest_n_of_core_variable_in_val_core():
    nested = {"gsm8k": {"reward": {"mean@4": 0.5, "std@4": 0.1, "best@2/mean": 0.6, "best@4/mean": 0.7}}}
    flat = flatten_validation_metrics(nested)
    assert flat == {
        "val-core/gsm8k/reward/mean@4": 0.5,
        "val-aux/gsm8k/reward/std@4": 0.1,
        "val-aux/gsm8k/reward/best@2/mean": 0.6,
        "val-core/gsm8k/reward/best@4/mean": 0.7,
    }
