"""GDPO and the optimal-token-baseline estimators of advantage_estimators (re-exported by core_algos).

The older estimators are tested in test_core_algos.py. Literal examples carry their arithmetic in a comment.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from verl.trainer.ppo.core_algos import (
    compute_gdpo_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_optimal_token_baseline_advantage,
    compute_tir_optimal_token_baseline_advantage,
    get_adv_estimator_fn,
)
from verl.utils import torch_functional as verl_F


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


# ---------------------------------------------------------------------------------------------------------------------
# GDPO
# ---------------------------------------------------------------------------------------------------------------------

GDPO_UID = np.array(["a", "a", "b", "b"], dtype=object)
GDPO_MASK = _mask([2, 1, 3, 2], 3)
GDPO_COLUMNS = {"acc": np.array([1.0, 0.0, 1.0, 1.0]), "fmt": np.array([1.0, 1.0, 0.5, 0.0]), "uid": GDPO_UID}


def test_gdpo_two_reward_keys_with_weights_literal():
    # acc per group: a = [1, 0] -> mean 0.5, unbiased std 0.707107 -> +-0.5 / (0.707107 + 1e-6) = +-0.707106;
    #                b = [1, 1] -> std 0 -> 0, 0
    # fmt per group: a = [1, 1] -> 0, 0; b = [0.5, 0] -> mean 0.25, std 0.353553 -> +-0.25 / 0.353554 = +-0.707105
    # combined = acc + 0.5 * fmt = [0.707106, -0.707106, 0.353552, -0.353552]
    # whitening over tokens (lengths 2, 1, 3, 2 -> 8 tokens):
    #   mean = (2 * 0.707106 - 0.707106 + 3 * 0.353552 - 2 * 0.353552) / 8 = 0.132582
    #   var (Bessel) = sum_tokens (x - mean)^2 / 7 = 0.283481 -> std 0.532429
    #   A = (combined - mean) / std = [1.079060, -1.577088, 0.415022, -0.913050] on each row's tokens
    cfg = {"gdpo_reward_keys": ["acc", "fmt"], "gdpo_reward_weights": [1.0, 0.5]}
    adv, ret = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3), GDPO_MASK, GDPO_UID, config=cfg, non_tensor_batch=GDPO_COLUMNS
    )
    expected = torch.tensor([1.079060, -1.577088, 0.415022, -0.913050])[:, None] * GDPO_MASK
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv is ret or torch.equal(adv, ret)


def test_gdpo_weights_change_the_result_and_default_to_one():
    base = {"gdpo_reward_keys": ["acc", "fmt"]}
    ones, _ = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3), GDPO_MASK, GDPO_UID, config=base, non_tensor_batch=GDPO_COLUMNS
    )
    explicit, _ = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3),
        GDPO_MASK,
        GDPO_UID,
        config={**base, "gdpo_reward_weights": [1.0, 1.0]},
        non_tensor_batch=GDPO_COLUMNS,
    )
    halved, _ = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3),
        GDPO_MASK,
        GDPO_UID,
        config={**base, "gdpo_reward_weights": [1.0, 0.5]},
        non_tensor_batch=GDPO_COLUMNS,
    )
    torch.testing.assert_close(ones, explicit)
    assert not torch.allclose(ones, halved)


def test_gdpo_with_one_key_is_whitened_grpo_of_that_column():
    # One component: GDPO = whiten(GRPO(acc)), with GRPO computed on rewards holding acc on the last token.
    torch.manual_seed(0)
    uid = np.array([0, 0, 0, 1, 1, 2])
    acc = torch.rand(6)
    mask = _mask([3, 1, 2, 3, 2, 1], 3)
    rewards = torch.zeros(6, 3)
    rewards[torch.arange(6), mask.sum(-1).long() - 1] = acc
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uid, norm_adv_by_std_in_grpo=True)
    gdpo, _ = compute_gdpo_outcome_advantage(
        torch.zeros(6, 3), mask, uid, config={"gdpo_reward_keys": ["acc"]}, non_tensor_batch={"acc": acc.numpy()}
    )
    torch.testing.assert_close(gdpo, verl_F.masked_whiten(grpo, mask) * mask)


def test_gdpo_ignores_norm_adv_by_std_like_upstream_dispatch():
    cfg = {"gdpo_reward_keys": ["acc"], "norm_adv_by_std_in_grpo": False}
    with_flag, _ = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3), GDPO_MASK, GDPO_UID, config=cfg, non_tensor_batch=GDPO_COLUMNS
    )
    without, _ = compute_gdpo_outcome_advantage(
        torch.zeros(4, 3), GDPO_MASK, GDPO_UID, config={"gdpo_reward_keys": ["acc"]}, non_tensor_batch=GDPO_COLUMNS
    )
    torch.testing.assert_close(with_flag, without)


def test_gdpo_errors_name_the_config_key_and_the_missing_column():
    with pytest.raises(ValueError, match="algorithm.gdpo_reward_keys"):
        compute_gdpo_outcome_advantage(torch.zeros(4, 3), GDPO_MASK, GDPO_UID, config={}, non_tensor_batch=GDPO_COLUMNS)
    with pytest.raises(ValueError, match="'length'"):
        compute_gdpo_outcome_advantage(
            torch.zeros(4, 3),
            GDPO_MASK,
            GDPO_UID,
            config={"gdpo_reward_keys": ["acc", "length"]},
            non_tensor_batch=GDPO_COLUMNS,
        )
    with pytest.raises(ValueError, match="gdpo_reward_weights"):
        compute_gdpo_outcome_advantage(
            torch.zeros(4, 3),
            GDPO_MASK,
            GDPO_UID,
            config={"gdpo_reward_keys": ["acc"], "gdpo_reward_weights": [1.0, 2.0]},
            non_tensor_batch=GDPO_COLUMNS,
        )


def test_gdpo_bare_call_uses_token_level_rewards_and_accepts_extra_kwargs():
    # No config and no columns: the single component is the row sum of the rewards, as upstream.
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    acc_like = {"gdpo_reward_keys": ["r"]}
    bare, _ = get_adv_estimator_fn("gdpo")(
        token_level_rewards=rewards, response_mask=GDPO_MASK, index=GDPO_UID, values=None, attention_mask=None
    )
    keyed, _ = compute_gdpo_outcome_advantage(
        rewards, GDPO_MASK, GDPO_UID, config=acc_like, non_tensor_batch={"r": rewards.sum(-1).numpy()}
    )
    torch.testing.assert_close(bare, keyed)


# ---------------------------------------------------------------------------------------------------------------------
# optimal token baseline
# ---------------------------------------------------------------------------------------------------------------------


def _otb_example() -> dict:
    """Group a = rows 0, 1; group b = row 2 alone. Width 3.

    row 0: length 3, reward 1 on t=2, pi = 0.5, sum pi^2 = 0.5  -> w = 1 - 1 + 0.5 = 0.5, W = [0.5, 1, 1.5], G = 1
    row 1: length 2, reward 2 on t=1, pi = 0.25, sum pi^2 = 0.25 -> w = 0.75, W = [0.75, 1.5], G = [2, 2, 0]
    row 2: length 1, reward 3 on t=0 (any pi)                    -> G = [3, 0, 0]
    """
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    pi = torch.tensor([[0.5] * 3, [0.25] * 3, [0.5] * 3])
    return {
        "token_level_rewards": rewards,
        "response_mask": _mask([3, 2, 1], 3),
        "index": np.array(["a", "a", "b"], dtype=object),
        "old_log_probs": torch.log(pi),
        "sum_pi_squared": pi.clone(),
    }


def test_otb_literal_with_single_member_group_and_zero_tail():
    # group a, t=0: B = (1 * 0.5 + 2 * 0.75) / (0.5 + 0.75) = 2 / 1.25 = 1.6
    #          t=1: B = (1 * 1 + 2 * 1.5) / (1 + 1.5) = 4 / 2.5 = 1.6
    #          t=2: only row 0 is valid -> B = 1 * 1.5 / 1.5 = 1, but row 0 is the unique longest (3 > 2), so its
    #               baseline is 0 from column 2 on (zero tail) -> A = 1
    # row 0: A = [1 - 1.6, 1 - 1.6, 1 - 0] = [-0.6, -0.6, 1];  row 1: [2 - 1.6, 2 - 1.6, 0] = [0.4, 0.4, 0]
    # group b has one member -> B = 0 -> row 2: A = G * m = [3, 0, 0]
    adv, ret = compute_optimal_token_baseline_advantage(**_otb_example())
    torch.testing.assert_close(adv, torch.tensor([[-0.6, -0.6, 1.0], [0.4, 0.4, 0.0], [3.0, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_otb_without_zero_tail_the_lone_tail_token_gets_advantage_zero():
    # Same as above but row 0, t=2 keeps B = 1.5 / (1.5 + 1e-8) ~ 1 -> A ~ 0.
    adv, _ = compute_optimal_token_baseline_advantage(**_otb_example(), handle_zero_tail=False)
    assert abs(adv[0, 2].item()) < 1e-6
    torch.testing.assert_close(adv[:, :2], torch.tensor([[-0.6, -0.6], [0.4, 0.4], [3.0, 0.0]]))


def test_otb_rollout_is_weights_enter_squared():
    # rho = 2 on row 1: w = 0.75 * 4 = 3 -> W = [3, 6]
    # t=0: B = (0.5 + 2 * 3) / 3.5 = 1.857143; t=1: B = (1 + 2 * 6) / 7 = 1.857143
    # row 0: A = [-0.857143, -0.857143, 1]; row 1: [0.142857, 0.142857, 0]
    example = _otb_example()
    rho = torch.ones(3, 3)
    rho[1] = 2.0
    adv, _ = compute_optimal_token_baseline_advantage(**example, rollout_is_weights=rho)
    expected = torch.tensor([[-0.857143, -0.857143, 1.0], [0.142857, 0.142857, 0.0], [3.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("fn", [compute_optimal_token_baseline_advantage, compute_tir_optimal_token_baseline_advantage])
def test_otb_requires_sum_pi_squared_and_accepts_a_superset_of_kwargs(fn):
    example = _otb_example()
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.calculate_sum_pi_squared"):
        fn(**{**example, "sum_pi_squared": None})
    adv, _ = fn(**example, config={"gamma": 1.0}, non_tensor_batch={}, attention_mask=None, values=None)
    assert adv.shape == (3, 3)


def _tir_example() -> dict:
    """Multi-turn masks with holes. Width 4; group a = rows 0, 1, 3 (row 3 empty); group b = row 2 alone.

    row 0: mask [1, 0, 1, 1] (a tool observation at t=1), reward 1 on t=3, pi = 0.5, sum pi^2 = 0.5 -> w = 0.5
    row 1: mask [1, 1, 0, 0], reward 2 on t=1, pi = 0.25, sum pi^2 = 0.25                         -> w = 0.75
    row 2: mask [0, 1, 1, 0], reward 3 on t=2
    row 3: mask [0, 0, 0, 0]
    """
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    rewards = torch.zeros(4, 4)
    rewards[0, 3], rewards[1, 1], rewards[2, 2] = 1.0, 2.0, 3.0
    pi = torch.tensor([[0.5] * 4, [0.25] * 4, [0.5] * 4, [0.5] * 4])
    return {
        "token_level_rewards": rewards,
        "response_mask": mask,
        "index": np.array(["a", "a", "b", "a"], dtype=object),
        "old_log_probs": torch.log(pi),
        "sum_pi_squared": pi.clone(),
    }


def test_tir_otb_aligns_on_the_kth_valid_token_literal():
    # Compacted, row 0 is valid tokens k = 0, 1, 2 at positions [0, 2, 3]: G = [1, 1, 1], W = [0.5, 1, 1.5]; row 1
    # is k = 0, 1: G = [2, 2], W = [0.75, 1.5]. Row 3 is empty and leaves group a. So, as in the OTB example:
    # B_k = [1.6, 1.6, zero tail] -> row 0 A_k = [-0.6, -0.6, 1] scattered to positions 0, 2, 3; row 1 [0.4, 0.4].
    # Group b (row 2) has one member: A = G * m = [0, 3, 3, 0]. Row 3: 0 everywhere.
    adv, ret = compute_tir_optimal_token_baseline_advantage(**_tir_example())
    expected = torch.tensor([[-0.6, 0.0, -0.6, 1.0], [0.4, 0.4, 0.0, 0.0], [0.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    # returns = reward-to-go on the original positions (masked positions keep the sum of later valid rewards)
    torch.testing.assert_close(ret[0], torch.tensor([1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(ret[2], torch.tensor([3.0, 3.0, 3.0, 0.0]))


def test_position_aligned_otb_differs_from_tir_on_masks_with_holes():
    # Position-aligned, row 0's t=2 has no partner (row 1 is padding there) and falls in the zero tail: A = 1, not
    # the -0.6 TIR gives by pairing it with row 1's second valid token.
    adv, _ = compute_optimal_token_baseline_advantage(**_tir_example())
    assert adv[0, 2].item() == pytest.approx(1.0)
    assert adv[0, 0].item() == pytest.approx(-0.6)


def test_tir_otb_drops_empty_rows_from_their_group():
    # uid "a" holds row 0 (2 valid tokens, reward 1 at the end) and row 1 (empty). Without the zero tail:
    # TIR drops row 1, so row 0 is alone: B = 0 and A = G = [1, 1]. Position-aligned OTB keeps a group of two, whose
    # baseline is row 0's own return (B = G W / (W + 1e-8)), so A ~ 0.
    example = {
        "token_level_rewards": torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        "response_mask": torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
        "index": np.array(["a", "a"], dtype=object),
        "old_log_probs": torch.log(torch.full((2, 2), 0.5)),
        "sum_pi_squared": torch.full((2, 2), 0.5),
        "handle_zero_tail": False,
    }
    tir, _ = compute_tir_optimal_token_baseline_advantage(**example)
    torch.testing.assert_close(tir, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    otb, _ = compute_optimal_token_baseline_advantage(**example)
    assert otb.abs().max().item() < 1e-6


def test_otb_and_tir_agree_when_masks_have_no_holes():
    torch.manual_seed(1)
    lengths = [5, 3, 4, 5, 2, 1]
    mask = _mask(lengths, 5)
    example = {
        "token_level_rewards": torch.rand(6, 5) * mask,
        "response_mask": mask,
        "index": np.array([0, 0, 0, 1, 1, 2]),
        "old_log_probs": -torch.rand(6, 5) * 3,
        "sum_pi_squared": torch.rand(6, 5) * 0.5 + 0.3,
    }
    otb = compute_optimal_token_baseline_advantage(**example)
    tir = compute_tir_optimal_token_baseline_advantage(**example)
    torch.testing.assert_close(otb[0], tir[0])
    torch.testing.assert_close(otb[1], tir[1])
    assert math.isfinite(otb[0].abs().sum().item())
