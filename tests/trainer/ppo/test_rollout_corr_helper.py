"""Rollout correction: IS weights, rejection sampling, off-policy metrics, the batch entry points, the bypass loss.

Literal examples carry their arithmetic in a comment. Ratios are r = pi_train / pi_rollout = exp(lambda).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.config import RolloutCorrectionConfig
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import (
    apply_bypass_mode,
    compute_rollout_corr_metrics_from_logprobs,
    compute_rollout_correction_and_add_to_batch,
    compute_rollout_correction_and_rejection_mask,
    compute_rollout_is_weights,
    compute_rollout_rejection_mask,
    parse_rollout_rs,
)

LN = math.log
P = "rollout_corr/"


def _log(values) -> torch.Tensor:
    return torch.log(torch.tensor(values, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------------------------------
# importance weights
# ---------------------------------------------------------------------------------------------------------------------

# Row 0: r = (0.25, 1, 4); row 1: r = 3 then two padded tokens whose huge log-ratio must be ignored.
IS_LOG_RATIO = torch.tensor([[LN(0.25), 0.0, LN(4.0)], [LN(3.0), 99.0, 99.0]])
IS_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_token_is_weights_truncate_at_threshold_and_report_pre_truncation_metrics():
    weights, m = compute_rollout_is_weights(IS_LOG_RATIO, IS_MASK, "token", 2.0)
    # pre-truncation (0.25, 1, 4 | 3, 0, 0) -> min(w, 2) = (0.25, 1, 2 | 2, 0, 0)
    torch.testing.assert_close(weights, torch.tensor([[0.25, 1.0, 2.0], [2.0, 0.0, 0.0]]))
    assert not weights.requires_grad
    assert m[P + "rollout_is_mean"] == pytest.approx(8.25 / 4)  # (0.25 + 1 + 4 + 3) / 4 valid tokens
    assert m[P + "rollout_is_max"] == pytest.approx(4.0)
    assert m[P + "rollout_is_min"] == pytest.approx(0.25)
    assert m[P + "rollout_is_ratio_fraction_high"] == pytest.approx(0.5)  # 4 and 3 exceed 2
    assert m[P + "rollout_is_ratio_fraction_low"] == pytest.approx(0.25)  # 0.25 < 1/2
    # std and ESS on weights clamped to [0.5, 2]: (0.5, 1, 2, 2), mean 1.375
    # var = (0.875^2 + 0.375^2 + 0.625^2 + 0.625^2) / 4 = 1.6875 / 4 = 0.421875
    assert m[P + "rollout_is_std"] == pytest.approx(math.sqrt(0.421875), rel=1e-5)
    # ESS = 1 / mean((w / 1.375)^2) = 1.375^2 / ((0.25 + 1 + 4 + 4) / 4) = 1.890625 / 2.3125
    assert m[P + "rollout_is_eff_sample_size"] == pytest.approx(1.890625 / 2.3125, rel=1e-5)
    # row means of the pre-truncation weights: (0.25 + 1 + 4) / 3 = 1.75 and 3
    assert m[P + "rollout_is_seq_mean"] == pytest.approx(2.375, rel=1e-5)
    assert m[P + "rollout_is_seq_std"] == pytest.approx(0.625, rel=1e-5)
    assert m[P + "rollout_is_seq_max"] == pytest.approx(3.0, rel=1e-5)
    assert m[P + "rollout_is_seq_min"] == pytest.approx(1.75, rel=1e-5)
    assert m[P + "rollout_is_seq_max_deviation"] == pytest.approx(2.0, rel=1e-5)  # |3 - 1|
    assert m[P + "rollout_is_seq_fraction_high"] == pytest.approx(0.5)
    assert m[P + "rollout_is_seq_fraction_low"] == pytest.approx(0.0)


def test_sequence_is_weights_use_the_row_log_ratio_sum():
    log_ratio = torch.cat([IS_LOG_RATIO, _log([[0.5, 0.5, 7.0]])])
    mask = torch.cat([IS_MASK, torch.tensor([[1.0, 1.0, 0.0]])])
    weights, m = compute_rollout_is_weights(log_ratio, mask, "sequence", 2.0)
    # row sums: ln(0.25 * 1 * 4) = 0 -> 1;  ln 3 -> 3 -> truncated to 2;  ln(0.5 * 0.5) -> 0.25 (the 7 is padding)
    expected = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, 0.0], [0.25, 0.25, 0.0]])
    torch.testing.assert_close(weights, expected)
    assert m[P + "rollout_is_mean"] == pytest.approx(4.25 / 3, rel=1e-5)  # rows (1 + 3 + 0.25) / 3
    assert m[P + "rollout_is_max"] == pytest.approx(3.0, rel=1e-5)
    assert m[P + "rollout_is_min"] == pytest.approx(0.25, rel=1e-5)
    assert m[P + "rollout_is_ratio_fraction_high"] == pytest.approx(1 / 3)
    assert m[P + "rollout_is_ratio_fraction_low"] == pytest.approx(1 / 3)


def test_sequence_is_weight_clamps_the_log_ratio_sum_at_20():
    # 3 tokens of lambda = 10 sum to 30 -> clamp 20 -> exp(20) pre-truncation, 5 after truncation
    weights, m = compute_rollout_is_weights(torch.full((1, 3), 10.0), torch.ones(1, 3), "sequence", 5.0)
    torch.testing.assert_close(weights, torch.full((1, 3), 5.0))
    assert m[P + "rollout_is_max"] == pytest.approx(math.exp(20.0), rel=1e-5)


def test_token_is_batch_normalize_rescales_to_mean_one_and_logs_the_factor():
    weights, m = compute_rollout_is_weights(IS_LOG_RATIO, IS_MASK, "token", 2.0, rollout_is_batch_normalize=True)
    # truncated valid weights (0.25, 1, 2, 2) have mean 5.25 / 4 = 1.3125
    expected = torch.tensor([[0.25, 1.0, 2.0], [2.0, 0.0, 0.0]]) / 1.3125
    torch.testing.assert_close(weights, expected)
    assert m[P + "rollout_is_batch_norm_factor"] == pytest.approx(1.3125)
    assert weights[IS_MASK.bool()].mean().item() == pytest.approx(1.0)


def test_sequence_is_batch_normalize_averages_over_non_empty_rows():
    log_ratio = torch.tensor([[LN(3.0), 0.0], [LN(0.5), 0.0], [5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # the empty row must not count
    weights, m = compute_rollout_is_weights(log_ratio, mask, "sequence", 2.0, rollout_is_batch_normalize=True)
    # truncated row weights 2 and 0.5 -> mean 1.25 -> 1.6 and 0.4
    torch.testing.assert_close(weights, torch.tensor([[1.6, 1.6], [0.4, 0.0], [0.0, 0.0]]))
    assert m[P + "rollout_is_batch_norm_factor"] == pytest.approx(1.25)


def test_is_weights_are_detached_from_the_log_ratio():
    log_ratio = torch.zeros(1, 2, requires_grad=True)
    weights, _ = compute_rollout_is_weights(log_ratio, torch.ones(1, 2), "token", 2.0)
    assert weights.grad_fn is None and torch.equal(weights, torch.ones(1, 2))


def test_unknown_is_level_raises_naming_the_key():
    with pytest.raises(ValueError, match="algorithm.rollout_correction.rollout_is"):
        compute_rollout_is_weights(IS_LOG_RATIO, IS_MASK, "geometric", 2.0)


# ---------------------------------------------------------------------------------------------------------------------
# rejection sampling
# ---------------------------------------------------------------------------------------------------------------------

# r per token: row 0 (1, 1), row 1 (3, 1), row 2 (0.3, 1), row 3 (5, pad). The pad has r = e^-10, so any rule that
# looked at it would reject row 3 for a second reason; masked_fraction checks that it does not.
RS_LOG_RATIO = torch.tensor([[0.0, 0.0], [LN(3.0), 0.0], [LN(0.3), 0.0], [LN(5.0), -10.0]])
RS_MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
# token statistics of the non-trivial tokens:
#   k1 = -ln r:          r=3 -1.0986, r=0.3 1.2040, r=5 -1.6094
#   k2 = (ln r)^2 / 2:   r=3 0.6035,  r=0.3 0.7248, r=5 1.2951
#   k3 = r - 1 - ln r:   r=3 0.9014,  r=0.3 0.5040, r=5 2.3906
ROWS_KEPT = {
    (1, 0, 0, 0): [[1, 1], [0, 0], [0, 0], [0, 0]],
    (1, 1, 0, 0): [[1, 1], [1, 1], [0, 0], [0, 0]],
    (1, 0, 1, 0): [[1, 1], [0, 0], [1, 1], [0, 0]],
    (1, 1, 1, 0): [[1, 1], [1, 1], [1, 1], [0, 0]],
}


@pytest.mark.parametrize(
    "option, threshold, expected",
    [
        # keep ln 0.5 <= -ln r <= ln 4, i.e. 1/4 <= r <= 2 (not [0.5, 4]): r=3 and r=5 go, r=0.3 stays
        ("token_k1", "0.5_4.0", [[1, 1], [0, 1], [1, 1], [0, 0]]),
        ("token_k2", "0.65", [[1, 1], [1, 1], [0, 1], [0, 0]]),  # 0.6035 kept; 0.7248, 1.2951 rejected
        ("token_k3", 0.6, [[1, 1], [0, 1], [1, 1], [0, 0]]),  # 0.5040 kept; 0.9014, 2.3906 rejected
        ("seq_sum_k1", "2.0", ROWS_KEPT[(1, 0, 0, 0)]),  # |row sum| <= ln 2 = 0.693: only row 0
        ("seq_sum_k1", "0.25_4.0", ROWS_KEPT[(1, 1, 1, 0)]),  # [-1.386, 1.386]: -1.6094 of row 3 fails
        ("seq_sum_k2", "0.65", ROWS_KEPT[(1, 1, 0, 0)]),  # sums 0, 0.6035, 0.7248, 1.2951
        ("seq_sum_k3", "1.0", ROWS_KEPT[(1, 1, 1, 0)]),  # sums 0, 0.9014, 0.5040, 2.3906
        ("seq_mean_k1", "2.0", ROWS_KEPT[(1, 1, 1, 0)]),  # means 0, -0.549, 0.602, -1.609 vs +-0.693
        ("seq_mean_k2", "0.35", ROWS_KEPT[(1, 1, 0, 0)]),  # means 0, 0.3017, 0.3624, 1.2951 (row 3 has 1 token)
        ("seq_mean_k3", "0.3", ROWS_KEPT[(1, 0, 1, 0)]),  # means 0, 0.4507, 0.2520, 2.3906
        ("seq_max_k2", "0.7", ROWS_KEPT[(1, 1, 0, 0)]),  # maxima 0, 0.6035, 0.7248, 1.2951
        ("seq_max_k3", "0.6", ROWS_KEPT[(1, 0, 1, 0)]),  # maxima 0, 0.9014, 0.5040, 2.3906
    ],
)
def test_each_rejection_option_on_a_small_batch(option, threshold, expected):
    new_mask, metrics = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, option, threshold)
    expected = torch.tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(new_mask, expected)
    assert metrics[P + "rollout_rs_masked_fraction"] == pytest.approx(1 - expected.sum().item() / 7)
    assert metrics[P + f"rollout_rs_{option}_masked_fraction"] == pytest.approx(1 - expected.sum().item() / 7)


def test_token_k1_metrics_with_asymmetric_bounds():
    _, m = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, "token_k1", "0.5_4.0")
    k1 = [0.0, 0.0, -LN(3.0), 0.0, -LN(0.3), 0.0, -LN(5.0)]  # the 7 valid tokens
    assert m[P + "rollout_rs_token_k1_mean"] == pytest.approx(sum(k1) / 7, rel=1e-5)
    assert m[P + "rollout_rs_token_k1_max"] == pytest.approx(-LN(0.3), rel=1e-5)
    assert m[P + "rollout_rs_token_k1_min"] == pytest.approx(-LN(5.0), rel=1e-5)
    assert m[P + "rollout_rs_token_k1_fraction_high"] == pytest.approx(0.0)  # nothing above ln 4
    assert m[P + "rollout_rs_token_k1_fraction_low"] == pytest.approx(2 / 7)  # -1.0986, -1.6094 below ln 0.5
    # row means 0, -0.549, 0.602, -1.609: only row 3 is below ln 0.5
    assert m[P + "rollout_rs_token_k1_seq_fraction_low"] == pytest.approx(0.25)
    assert m[P + "rollout_rs_token_k1_seq_max_deviation"] == pytest.approx(LN(5.0), rel=1e-5)
    assert m[P + "rollout_rs_token_k1_seq_masked_fraction"] == pytest.approx(0.5)  # rows 1 and 3 lose a token
    assert m[P + "rollout_rs_seq_masked_fraction"] == pytest.approx(0.5)


def test_only_k1_options_log_seq_fraction_low():
    _, m = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, "seq_max_k2", "0.7")
    assert P + "rollout_rs_seq_max_k2_seq_fraction_high" in m
    assert P + "rollout_rs_seq_max_k2_seq_fraction_low" not in m
    assert m[P + "rollout_rs_seq_max_k2_fraction_low"] == 0.0
    assert m[P + "rollout_rs_seq_max_k2_fraction_high"] == pytest.approx(0.5)  # rows 2, 3 above 0.7


def test_options_combine_with_and_and_take_per_option_thresholds():
    new_mask, m = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, "token_k1, seq_max_k2", "0.5_4.0,0.7")
    # token_k1: [[1,1],[0,1],[1,1],[0,0]]  AND  seq_max_k2 rows (1,1,0,0)
    torch.testing.assert_close(new_mask, torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert m[P + "rollout_rs_masked_fraction"] == pytest.approx(4 / 7)
    assert m[P + "rollout_rs_seq_masked_fraction"] == pytest.approx(0.75)
    assert m[P + "rollout_rs_token_k1_masked_fraction"] == pytest.approx(2 / 7)
    assert m[P + "rollout_rs_seq_max_k2_masked_fraction"] == pytest.approx(3 / 7)


def test_a_single_threshold_is_broadcast_to_every_option():
    new_mask, _ = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, "token_k2,token_k3", "0.65")
    # token_k2 @0.65: [[1,1],[1,1],[0,1],[0,0]]; token_k3 @0.65: [[1,1],[0,1],[1,1],[0,0]]
    torch.testing.assert_close(new_mask, torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))


def test_legacy_lower_bound_and_token_level_name_map_to_token_k1():
    assert parse_rollout_rs("token", 4.0, 0.5) == [("token_k1", 0.5, 4.0)]
    assert parse_rollout_rs("sequence,geometric", "2.0") == [("seq_sum_k1", 0.5, 2.0), ("seq_mean_k1", 0.5, 2.0)]
    new_mask, _ = compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, "token", 4.0, rollout_rs_threshold_lower=0.5)
    torch.testing.assert_close(new_mask, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))


def test_token_veto_rejects_rows_with_one_low_ratio_token_ignoring_padding():
    weights, new_mask, m = compute_rollout_correction_and_rejection_mask(
        RS_LOG_RATIO, torch.zeros(4, 2), RS_MASK, rollout_token_veto_threshold=0.5
    )
    # only row 2 has a valid token with r = 0.3 < 0.5; row 3's padded r = e^-10 does not count
    assert weights is None
    torch.testing.assert_close(new_mask, torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert m[P + "rollout_rs_veto_fraction"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    "rollout_rs, threshold, key",
    [
        ("token_k4", "2.0", "algorithm.rollout_correction.rollout_rs="),
        ("seq_max_k1", "2.0", "algorithm.rollout_correction.rollout_rs="),
        ("token_k1", None, "algorithm.rollout_correction.rollout_rs_threshold="),
        ("token_k2", "0.5_2.0", "algorithm.rollout_correction.rollout_rs_threshold="),
        ("token_k1,token_k2", "1.5,2.0,3.0", "algorithm.rollout_correction.rollout_rs_threshold="),
        ("token_k1", "abc", "algorithm.rollout_correction.rollout_rs_threshold="),
        ("token_k1", "2.0_0.5", "algorithm.rollout_correction.rollout_rs_threshold="),  # lo > up
        ("token_k1", "0.5", "algorithm.rollout_correction.rollout_rs_threshold="),  # lo = 2 > up = 0.5
        ("token_k3", "-1", "algorithm.rollout_correction.rollout_rs_threshold="),
    ],
)
def test_bad_option_or_threshold_raises_naming_the_key_and_choices(rollout_rs, threshold, key):
    with pytest.raises(ValueError, match=key) as info:
        compute_rollout_rejection_mask(RS_LOG_RATIO, RS_MASK, rollout_rs, threshold)
    assert "seq_mean_k3" in str(info.value)  # the valid options are listed


# ---------------------------------------------------------------------------------------------------------------------
# off-policy metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_off_policy_metrics_literal_example():
    train = _log([[0.5, 0.25], [0.5, 1.0]])
    rollout = _log([[0.5, 0.5], [0.125, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    m = compute_rollout_corr_metrics_from_logprobs(train, rollout, mask)
    ln2 = LN(2.0)
    # row log-ppl: train (1.5 ln2, ln2), rollout (ln2, 3 ln2); lambda tokens (0, -ln2 | 2 ln2)
    expected = {
        "training_log_ppl": 1.25 * ln2,
        "training_ppl": (2**1.5 + 2) / 2,
        "rollout_log_ppl": 2 * ln2,
        "rollout_ppl": (2 + 8) / 2,
        "log_ppl_diff": -0.75 * ln2,  # (0.5 ln2 - 2 ln2) / 2
        "log_ppl_abs_diff": 1.25 * ln2,
        "log_ppl_diff_max": 0.5 * ln2,
        "log_ppl_diff_min": -2 * ln2,
        "ppl_ratio": (2**0.5 + 0.25) / 2,
        "kl": (0 + ln2 - 2 * ln2) / 3,  # mean(log p_roll - log p_train)
        "k3_kl": (0 + (0.5 - 1 + ln2) + (4 - 1 - 2 * ln2)) / 3,  # rho - 1 - ln rho for rho = 1, 0.5, 4
        "chi2_token": (1 + 0.25 + 16) / 3 - 1,
        "chi2_seq": (0.25 + 16) / 2 - 1,  # row ratios 0.5 and 4, squared
    }
    assert set(m) == {P + k for k in expected}
    for key, value in expected.items():
        assert m[P + key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


# ---------------------------------------------------------------------------------------------------------------------
# batch entry points
# ---------------------------------------------------------------------------------------------------------------------


def _batch(rollout_log_probs: bool = True) -> DataProto:
    rollout = torch.zeros(4, 2)
    tensors = {"old_log_probs": RS_LOG_RATIO.clone(), "response_mask": RS_MASK.clone()}
    if rollout_log_probs:
        tensors["rollout_log_probs"] = rollout
    return DataProto.from_dict(tensors=tensors)


def test_add_to_batch_overwrites_the_mask_and_adds_weights():
    config = {"rollout_is": "token", "rollout_is_threshold": 2.0, "rollout_rs": "token_k1", "rollout_rs_threshold": 2}
    batch, metrics = compute_rollout_correction_and_add_to_batch(_batch(), config)
    # token_k1 @2 keeps 0.5 <= r <= 2: rejects r=3, r=0.3, r=5
    torch.testing.assert_close(batch.batch["response_mask"], torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0, 0]]))
    # weights on the incoming mask: min(r, 2) with r = (1,1 | 3,1 | 0.3,1 | 5,pad)
    expected = torch.tensor([[1.0, 1.0], [2.0, 1.0], [0.3, 1.0], [2.0, 0.0]])
    torch.testing.assert_close(batch.batch["rollout_is_weights"], expected)
    for key in ("rollout_is_mean", "rollout_rs_masked_fraction", "rollout_rs_token_k1_mean", "kl", "chi2_seq"):
        assert P + key in metrics
    assert metrics[P + "rollout_rs_masked_fraction"] == pytest.approx(3 / 7)


def test_add_to_batch_without_is_adds_no_weights_but_still_logs_off_policy_metrics():
    batch, metrics = compute_rollout_correction_and_add_to_batch(_batch(), RolloutCorrectionConfig(rollout_is=None))
    assert "rollout_is_weights" not in batch.batch.keys()
    torch.testing.assert_close(batch.batch["response_mask"], RS_MASK)
    assert not any("rollout_is" in k or "rollout_rs" in k for k in metrics)
    assert metrics[P + "chi2_token"] == pytest.approx((1 + 1 + 9 + 1 + 0.09 + 1 + 25) / 7 - 1, rel=1e-5)


def test_add_to_batch_requires_rollout_log_probs():
    with pytest.raises(ValueError, match="calculate_log_probs"):
        compute_rollout_correction_and_add_to_batch(_batch(rollout_log_probs=False), {"rollout_is": "token"})


def test_apply_bypass_mode_uses_rollout_log_probs_as_old_log_probs():
    batch = apply_bypass_mode(_batch(), {"bypass_mode": True})
    assert torch.equal(batch.batch["old_log_probs"], torch.zeros(4, 2))
    with pytest.raises(ValueError, match="actor_rollout_ref.rollout.calculate_log_probs"):
        apply_bypass_mode(_batch(rollout_log_probs=False), {"bypass_mode": True})


# ---------------------------------------------------------------------------------------------------------------------
# bypass-mode policy loss
# ---------------------------------------------------------------------------------------------------------------------


def _actor_config(rollout_correction: dict | None, **extra) -> dict:
    policy_loss = {"loss_mode": "bypass_mode"}
    if rollout_correction is not None:
        policy_loss["rollout_correction"] = rollout_correction
    return {"clip_ratio": 0.2, "clip_ratio_c": 3.0, "policy_loss": policy_loss, **extra}


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean"])
def test_bypass_ppo_clip_equals_vanilla_when_nothing_is_rejected(loss_agg_mode):
    gen = torch.Generator().manual_seed(0)
    rollout = -torch.rand(3, 4, generator=gen) - 0.5
    advantages = torch.randn(3, 4, generator=gen)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    current = (rollout + 0.3 * torch.randn(3, 4, generator=gen)).requires_grad_()
    reference = current.detach().clone().requires_grad_()
    bypass = core_algos.get_policy_loss_fn("bypass_mode")
    config = _actor_config({"rollout_is": "token", "rollout_rs": "token_k1", "rollout_rs_threshold": "100.0"})
    loss, metrics = bypass(rollout, current, advantages, mask, loss_agg_mode, config)
    vanilla, vanilla_metrics = core_algos.compute_policy_loss_vanilla(
        rollout, reference, advantages, mask, loss_agg_mode, config
    )
    loss.backward()
    vanilla.backward()
    assert loss.item() == pytest.approx(vanilla.item())
    torch.testing.assert_close(current.grad, reference.grad)
    for key, value in vanilla_metrics.items():
        assert metrics[key] == pytest.approx(value)
    assert metrics[P + "rollout_rs_masked_fraction"] == 0.0
    assert P + "rollout_is_mean" in metrics and P + "kl" in metrics


def test_bypass_ppo_clip_drops_rejected_rows_from_the_loss():
    rollout = torch.zeros(2, 2)
    current = torch.tensor([[0.0, 0.0], [LN(5.0), 0.0]], requires_grad=True)
    advantages = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    config = _actor_config({"rollout_is": None, "rollout_rs": "seq_sum_k1", "rollout_rs_threshold": 2.0})
    loss, _ = core_algos.get_policy_loss_fn("bypass_mode")(
        rollout, current, advantages, torch.ones(2, 2), config=config
    )
    loss.backward()
    # row 1 (r = 5) is rejected; row 0 has r = 1 -> token loss -A * 1 = -1, token-mean over 2 kept tokens
    assert loss.item() == pytest.approx(-1.0)
    torch.testing.assert_close(current.grad, torch.tensor([[-0.5, -0.5], [0.0, 0.0]]))


def test_bypass_reinforce_gradient_is_minus_advantage_times_weight_over_n():
    rollout = _log([[0.25, 0.5, 0.125]])
    current = _log([[0.5, 0.5, 0.5]]).requires_grad_()  # r = (2, 1, 4) -> w = min(r, 3) = (2, 1, 3)
    advantages = torch.tensor([[1.0, -2.0, 0.5]])
    rc = {"rollout_is": "token", "rollout_is_threshold": 3.0, "loss_type": "reinforce"}
    loss, metrics = core_algos.get_policy_loss_fn("bypass_mode")(
        rollout, current, advantages, torch.ones(1, 3), "token-mean", _actor_config(rc)
    )
    loss.backward()
    # d/dlogp of -(A w logp) / N, N = 3: -(1*2, -2*1, 0.5*3) / 3
    torch.testing.assert_close(current.grad, torch.tensor([[-2 / 3, 2 / 3, -0.5]]))
    assert metrics["actor/ppo_kl"] == pytest.approx(-(LN(2.0) + LN(4.0)) / 3, rel=1e-5)  # mean(log p_roll - log p)
    assert "actor/pg_clipfrac" not in metrics


def test_bypass_reinforce_passes_the_global_batch_info_and_maps_use_policy_gradient():
    rollout = _log([[0.25, 0.5, 0.125]])
    current = _log([[0.5, 0.5, 0.5]]).requires_grad_()
    advantages = torch.tensor([[1.0, -2.0, 0.5]])
    rc = {"rollout_is": "token", "rollout_is_threshold": 3.0, "use_policy_gradient": True}
    config = _actor_config(rc, global_batch_info={"dp_size": 2, "batch_num_tokens": 12})
    loss, _ = core_algos.get_policy_loss_fn("bypass_mode")(
        rollout, current, advantages, torch.ones(1, 3), config=config
    )
    loss.backward()
    # token-mean with dp_size 2 over 12 global tokens: -(A w) * 2 / 12
    torch.testing.assert_close(current.grad, torch.tensor([[-1 / 3, 1 / 3, -0.25]]))


def test_bypass_without_a_rollout_correction_node_uses_the_dataclass_defaults():
    # defaults: rollout_is = "sequence" with threshold 2 -> the sequence metrics are logged
    _, metrics = core_algos.get_policy_loss_fn("bypass_mode")(
        torch.zeros(1, 2), torch.full((1, 2), 0.1), torch.ones(1, 2), torch.ones(1, 2), config=_actor_config(None)
    )
    assert metrics[P + "rollout_is_mean"] == pytest.approx(math.exp(0.2), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"rollout_is": "batch"}, "algorithm.rollout_correction.rollout_is="),
        ({"loss_type": "ppo"}, "algorithm.rollout_correction.loss_type="),
        ({"rollout_is_threshold": 0.0}, "algorithm.rollout_correction.rollout_is_threshold="),
        ({"rollout_token_veto_threshold": -1.0}, "algorithm.rollout_correction.rollout_token_veto_threshold="),
        ({"rollout_rs_threshold_lower": 0.0}, "algorithm.rollout_correction.rollout_rs_threshold_lower="),
        ({"rollout_rs": "seq_k2", "rollout_rs_threshold": 1.0}, "algorithm.rollout_correction.rollout_rs="),
    ],
)
def test_config_validation_names_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RolloutCorrectionConfig(**kwargs)


def test_config_defaults_and_use_policy_gradient_alias():
    config = RolloutCorrectionConfig()
    assert (config.rollout_is, config.rollout_is_threshold, config.loss_type) == ("sequence", 2.0, "ppo_clip")
    assert RolloutCorrectionConfig(use_policy_gradient=True).loss_type == "reinforce"


def test_yaml_node_builds_with_v071_keys_and_is_off_by_default():
    from omegaconf import OmegaConf

    from verl.utils.config import omega_conf_to_dataclass

    path = os.path.join(os.path.dirname(core_algos.__file__), "..", "config", "ppo_trainer.yaml")
    node = OmegaConf.load(path).algorithm.rollout_correction
    config = omega_conf_to_dataclass(node)
    assert isinstance(config, RolloutCorrectionConfig)
    assert config.rollout_is is None and config.rollout_rs is None and config.bypass_mode is False
    assert (config.loss_type, config.rollout_is_batch_normalize) == ("ppo_clip", False)


# ---------------------------------------------------------------------------------------------------------------------
# batch normalisation across ranks (2 gloo processes)
# ---------------------------------------------------------------------------------------------------------------------


def _normalise_on_rank(rank: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # rank 0 holds r = 1.5, rank 1 holds r = 0.5, 0.5; global mean (1.5 + 0.5 + 0.5) / 3 = 5/6
    log_ratio = _log([[1.5]]) if rank == 0 else _log([[0.5], [0.5]])
    weights, m = compute_rollout_is_weights(log_ratio, torch.ones_like(log_ratio), "token", 2.0, True)
    expected = torch.full_like(log_ratio, 1.8 if rank == 0 else 0.6)  # 1.5 / (5/6), 0.5 / (5/6)
    torch.testing.assert_close(weights, expected)
    assert abs(m[P + "rollout_is_batch_norm_factor"] - 5 / 6) < 1e-6
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: 20-30 s on a shared 2-core machine
def test_batch_normalize_uses_the_mean_over_all_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, str(port)], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_normalise_on_rank, args=(int(sys.argv[1]),), nprocs=2, join=True)


@pytest.mark.parametrize("option", ["seq_sum_k1", "seq_mean_k2", "seq_max_k3", "token_k3"])
def test_vectorised_rejection_matches_a_per_row_loop(option):
    gen = torch.Generator().manual_seed(1)
    log_ratio = 0.6 * torch.randn(6, 5, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.3).float()
    new_mask, _ = compute_rollout_rejection_mask(log_ratio, mask, option, "0.5_1.5" if option.endswith("k1") else "0.2")
    ((name, lower, upper),) = parse_rollout_rs(option, "0.5_1.5" if option.endswith("k1") else "0.2")
    for i in range(6):
        lam = [log_ratio[i, t].item() for t in range(5) if mask[i, t] > 0]
        k = {"k1": [-x for x in lam], "k2": [x * x / 2 for x in lam], "k3": [math.exp(x) - 1 - x for x in lam]}
        stats = k[name[-2:]]
        ok = (lambda v: LN(lower) <= v <= LN(upper)) if lower is not None else (lambda v: v <= upper)
        if name.startswith("token"):
            expected = [float(ok(v)) for v in stats]
        else:
            agg = {
                "seq_sum": sum,
                "seq_mean": lambda v: sum(v) / max(len(v), 1),
                "seq_max": lambda v: max(v, default=0),
            }
            expected = [float(ok(agg[name.rsplit("_", 1)[0]](stats)))] * len(stats)
        assert new_mask[i][mask[i] > 0].tolist() == expected, i


def test_rejection_without_a_threshold_builds_but_is_refused_before_ray():
    # verl builds the node without a threshold; the pre-flight refuses the run, naming the key
    assert RolloutCorrectionConfig(rollout_rs="token_k2").rollout_rs_threshold is None
    from verl.trainer.config.build import build_trainer_config
    from verl.utils.config import compose_config

    overrides = [
        "actor_rollout_ref.rollout.name=hf",
        "algorithm.rollout_correction.rollout_rs=token_k2",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "critic.ppo_micro_batch_size_per_gpu=2",
    ]
    with pytest.raises(ValueError, match="algorithm.rollout_correction.rollout_rs_threshold=None"):
        build_trainer_config(compose_config(overrides=overrides), n_ranks=1)


def test_presets_match_their_yaml():
    preset = RolloutCorrectionConfig.decoupled_geo_rs_seq_tis(rs_threshold=1.001)
    assert (preset.rollout_is, preset.rollout_rs, preset.rollout_rs_threshold) == ("sequence", "seq_mean_k1", 1.001)
    assert RolloutCorrectionConfig.pg_is().loss_type == "reinforce" and RolloutCorrectionConfig.pg_is().bypass_mode
    assert RolloutCorrectionConfig.disabled().rollout_is is None
