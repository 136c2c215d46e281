"""Advantage estimators, registries and KL controllers of verl.trainer.ppo.core_algos.

Each estimator has a literal example worked out by hand (arithmetic in the comment), the loop/vectorised pairs are
checked for equivalence on random groups of mixed sizes, and GAE is checked for invariance to masked positions.
Policy losses live in test_policy_losses.py, KL estimators in test_kl_penalty.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from verl.trainer.ppo import core_algos
from verl.trainer.ppo.core_algos import (
    AdvantageEstimator,
    compute_gae_advantage_return,
    compute_gpg_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rewards,
    compute_rloo_outcome_advantage,
    compute_rloo_vectorized_outcome_advantage,
    get_adv_estimator_fn,
    register_adv_est,
)
from verl.utils.groupwise import as_torch_index, group_mean_std


def _outcome(scores: list[float], lengths: list[int], width: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards with each score on the last valid token, and the matching response mask."""
    rewards = torch.zeros(len(scores), width)
    mask = torch.zeros(len(scores), width)
    for i, (score, length) in enumerate(zip(scores, lengths)):
        mask[i, :length] = 1
        rewards[i, length - 1] = score
    return rewards, mask


# ---------------------------------------------------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------------------------------------------------


def test_every_implemented_estimator_is_registered_under_its_enum_value():
    for member in AdvantageEstimator:
        assert get_adv_estimator_fn(member) is get_adv_estimator_fn(member.value)
    assert get_adv_estimator_fn("grpo") is compute_grpo_outcome_advantage
    assert AdvantageEstimator("grpo") == "grpo"


def test_get_adv_estimator_fn_unknown_name_message():
    with pytest.raises(ValueError, match="Unknown advantage estimator simply: not_an_estimator"):
        get_adv_estimator_fn("not_an_estimator")
    with pytest.raises(ValueError, match="Unknown advantage estimator simply: GRPO"):
        get_adv_estimator_fn("GRPO")  # lookup is case-sensitive
    with pytest.raises(ValueError, match="Registered: .*'gdpo'"):
        get_adv_estimator_fn("nope")


def test_registry_is_looked_up_through_the_module_global(monkeypatch):
    fresh: dict = {}
    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", fresh)
    with pytest.raises(ValueError):
        get_adv_estimator_fn("gae")

    @register_adv_est("my_estimator")
    def my_estimator(**kwargs):
        return None

    assert fresh == {"my_estimator": my_estimator}
    assert get_adv_estimator_fn("my_estimator") is my_estimator


def test_register_same_function_twice_is_a_noop_and_returns_it(monkeypatch):
    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})

    def fn(**kwargs):
        return None

    assert register_adv_est("twice")(fn) is fn
    assert register_adv_est("twice")(fn) is fn
    assert core_algos.ADV_ESTIMATOR_REGISTRY == {"twice": fn}


def test_register_different_function_under_taken_name_raises(monkeypatch):
    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})
    register_adv_est("taken")(lambda **kw: 1)
    with pytest.raises(ValueError, match="taken"):
        register_adv_est("taken")(lambda **kw: 2)


def test_register_with_enum_uses_its_value(monkeypatch):
    monkeypatch.setattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})

    def fn(**kwargs):
        return None

    register_adv_est(AdvantageEstimator.GDPO)(fn)
    assert list(core_algos.ADV_ESTIMATOR_REGISTRY) == ["gdpo"]
    assert get_adv_estimator_fn("gdpo") is fn


# ---------------------------------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------------------------------


def test_gae_literal_example():
    # gamma = lam = 0.5 (gamma*lam = 0.25), r = [0, 0, 1], V = [1, 2, 3]:
    # t=2: delta = 1 + 0.5*0 - 3 = -2          A2 = -2
    # t=1: delta = 0 + 0.5*3 - 2 = -0.5        A1 = -0.5 + 0.25*(-2) = -1
    # t=0: delta = 0 + 0.5*2 - 1 = 0           A0 = 0 + 0.25*(-1) = -0.25
    # returns = A + V = [0.75, 1, 1]; whitened A: mean -13/12, unbiased std 0.877971 -> [0.949158, 0.094916, -1.044074]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[1.0, 2.0, 3.0]])
    adv, ret = compute_gae_advantage_return(rewards, values, torch.ones(1, 3), 0.5, 0.5)
    assert torch.allclose(ret, torch.tensor([[0.75, 1.0, 1.0]]))
    assert torch.allclose(adv, torch.tensor([[0.949158, 0.094916, -1.044074]]), atol=1e-5)


def test_gae_skips_masked_positions_literal():
    # mask [1, 0, 1], gamma = lam = 0.5, r = [0, 0, 1], V = [1, 9, 3]:
    # t=2: A2 = 1 - 3 = -2; t=1 is masked: V_next stays 3, A_next stays -2 (recorded A1 = -2);
    # t=0: delta = 0 + 0.5*3 - 1 = 0.5, A0 = 0.5 + 0.25*(-2) = 0 -> returns = A + V = [1, 7, 1]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[1.0, 9.0, 3.0]])
    _, ret = compute_gae_advantage_return(rewards, values, torch.tensor([[1.0, 0.0, 1.0]]), 0.5, 0.5)
    assert torch.allclose(ret, torch.tensor([[1.0, 7.0, 1.0]]))


def test_gae_is_invariant_to_values_and_rewards_on_masked_positions():
    torch.manual_seed(0)
    bs, length = 4, 12
    rewards = torch.randn(bs, length)
    mask = (torch.rand(bs, length) > 0.4).float()
    mask[:, 0] = 1
    values1, values2 = torch.randn(bs, length), torch.randn(bs, length)
    values2 = torch.where(mask.bool(), values1, values2)  # differ only where mask == 0
    rewards2 = torch.where(mask.bool(), rewards, torch.randn(bs, length))
    adv1, ret1 = compute_gae_advantage_return(rewards, values1, mask, 0.9, 0.8)
    adv2, ret2 = compute_gae_advantage_return(rewards2, values2, mask, 0.9, 0.8)
    assert torch.equal(adv1, adv2)
    assert torch.equal(ret1 * mask, ret2 * mask)


def test_gae_with_lambda_one_equals_discounted_reward_to_go_minus_value():
    # With lam = 1 the telescoping sum gives A_t = sum_k gamma^(k-t) r_k - V_t, i.e. returns = reward-to-go.
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    gamma = 0.9
    discounts = gamma ** (torch.arange(6)[None, :] - torch.arange(6)[:, None]).clamp(min=0).float()
    reward_to_go = rewards @ torch.triu(discounts).T
    _, ret = compute_gae_advantage_return(rewards, values, torch.ones(3, 6), gamma, 1.0)
    assert torch.allclose(ret, reward_to_go, atol=1e-5)


def test_gae_reads_gamma_and_lam_from_config_when_not_given():
    torch.manual_seed(2)
    rewards, values, mask = torch.randn(2, 5), torch.randn(2, 5), torch.ones(2, 5)
    explicit = compute_gae_advantage_return(rewards, values, mask, 0.7, 0.6)
    from_cfg = get_adv_estimator_fn("gae")(
        token_level_rewards=rewards, values=values, response_mask=mask, config={"gamma": 0.7, "lam": 0.6}
    )
    assert torch.equal(explicit[1], from_cfg[1])


# ---------------------------------------------------------------------------------------------------------------------
# GRPO family
# ---------------------------------------------------------------------------------------------------------------------

GRPO_INDEX = np.array(["a", "a", "b", "b", "b", "c"], dtype=object)
GRPO_SCORES = [1.0, 0.0, 1.0, 2.0, 3.0, 5.0]
GRPO_LENGTHS = [2, 4, 1, 3, 4, 2]


@pytest.mark.parametrize("fn", [compute_grpo_outcome_advantage, compute_grpo_vectorized_outcome_advantage])
def test_grpo_literal_example(fn):
    # group a = [1, 0]: mean 0.5, unbiased std sqrt(0.5) = 0.707107 -> +-0.5 / 0.707108 = +-0.707106
    # group b = [1, 2, 3]: mean 2, std 1 -> [-1, 0, 1] / (1 + 1e-6)
    # group c = [5]: singleton uses mean 0, std 1 -> 5 / (1 + 1e-6) = 4.999995
    rewards, mask = _outcome(GRPO_SCORES, GRPO_LENGTHS)
    adv, ret = fn(rewards, mask, GRPO_INDEX)
    expected = torch.tensor([0.707106, -0.707106, -0.999999, 0.0, 0.999999, 4.999995])
    assert torch.allclose(adv, expected[:, None] * mask, atol=1e-5)
    assert torch.equal(adv, ret)


def test_grpo_without_std_normalisation_literal():
    # Dr. GRPO: s - mean -> a: [0.5, -0.5], b: [-1, 0, 1], c: 5 - 0 = 5
    rewards, mask = _outcome(GRPO_SCORES, GRPO_LENGTHS)
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, GRPO_INDEX, norm_adv_by_std_in_grpo=False)
    expected = torch.tensor([0.5, -0.5, -1.0, 0.0, 1.0, 5.0])
    assert torch.allclose(adv, expected[:, None] * mask)
    from_cfg, _ = compute_grpo_outcome_advantage(rewards, mask, GRPO_INDEX, config={"norm_adv_by_std_in_grpo": False})
    assert torch.equal(adv, from_cfg)


def _random_groups(seed: int, num_groups: int, as_strings: bool) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 6, (num_groups,), generator=gen).tolist()  # mixed sizes, singletons included
    ids = np.concatenate([np.full(n, g) for g, n in enumerate(sizes)])
    ids = ids[torch.randperm(len(ids), generator=gen).numpy()]  # groups interleaved, as after shuffling
    index = np.array([f"uid-{i}" for i in ids], dtype=object) if as_strings else ids
    bs, length = len(ids), 7
    rewards = torch.randn(bs, length, generator=gen)
    mask = (torch.rand(bs, length, generator=gen) > 0.3).float()
    return rewards, mask, index


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("as_strings", [True, False])
def test_grpo_loop_and_vectorized_agree(seed, norm, as_strings):
    rewards, mask, index = _random_groups(seed, num_groups=9, as_strings=as_strings)
    loop, _ = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    vec, _ = compute_grpo_vectorized_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(loop, vec, rtol=1e-5, atol=1e-6)


def test_grpo_is_equivariant_to_row_permutation():
    rewards, mask, index = _random_groups(3, num_groups=6, as_strings=True)
    perm = torch.randperm(len(index), generator=torch.Generator().manual_seed(0))
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    adv_perm, _ = compute_grpo_outcome_advantage(rewards[perm], mask[perm], index[perm.numpy()])
    torch.testing.assert_close(adv[perm], adv_perm)


def test_grpo_is_invariant_to_positive_affine_score_transform():
    # (a s + b - (a mu + b)) / (a sigma) = (s - mu) / sigma for groups of >= 2 (epsilon aside).
    rewards, mask = _outcome([1.0, 0.0, 4.0, 2.0, 3.0, 9.0], [2, 3, 4, 1, 2, 3])
    index = np.array([0, 0, 1, 1, 1, 1])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    rewards2, _ = _outcome([3 * s + 7 for s in [1.0, 0.0, 4.0, 2.0, 3.0, 9.0]], [2, 3, 4, 1, 2, 3])
    adv2, _ = compute_grpo_outcome_advantage(rewards2, mask, index)
    torch.testing.assert_close(adv, adv2, rtol=1e-4, atol=1e-5)


def test_group_mean_std_literal_and_singletons():
    # groups: 0 -> [1, 3] mean 2, std sqrt(2) = 1.414214; 1 -> [5] singleton -> mean 0, std 1
    mean, std, count = group_mean_std(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]))
    assert torch.allclose(mean, torch.tensor([2.0, 0.0]))
    assert torch.allclose(std, torch.tensor([1.414214, 1.0]))
    assert count.tolist() == [2.0, 1.0]


def test_as_torch_index_maps_any_ids_to_dense_ints():
    dense = as_torch_index(np.array(["x", "y", "x", "z"], dtype=object))
    assert dense.tolist() == [0, 1, 0, 2]
    assert as_torch_index([10, 30, 10]).tolist() == [0, 1, 0]
    assert as_torch_index(torch.tensor([7, 7, 2])).tolist() == [1, 1, 0]


def test_grpo_passk_literal_example():
    # group a = [1, 0]: best row 0 gets (1 - 0) / (0.707107 + 1e-6) = 1.414212, row 1 gets 0
    # group b = [1, 3, 2]: best row 3 gets (3 - 2) / (std 1 + 1e-6) = 0.999999, others 0
    rewards, mask = _outcome([1.0, 0.0, 1.0, 3.0, 2.0], [2, 2, 3, 1, 4])
    index = np.array(["a", "a", "b", "b", "b"], dtype=object)
    adv, _ = compute_grpo_passk_outcome_advantage(rewards, mask, index, config={"norm_adv_by_std_in_grpo": True})
    expected = torch.tensor([1.414212, 0.0, 0.0, 0.999999, 0.0])
    assert torch.allclose(adv, expected[:, None] * mask, atol=1e-5)
    adv_raw, _ = compute_grpo_passk_outcome_advantage(rewards, mask, index, config={"norm_adv_by_std_in_grpo": False})
    assert torch.allclose(adv_raw, torch.tensor([1.0, 0, 0, 1.0, 0])[:, None] * mask)


def test_grpo_passk_rejects_singleton_groups():
    rewards, mask = _outcome([1.0, 0.0, 2.0], [1, 1, 1])
    with pytest.raises(ValueError, match="at least 2"):
        compute_grpo_passk_outcome_advantage(rewards, mask, np.array(["a", "a", "b"]))


# ---------------------------------------------------------------------------------------------------------------------
# RLOO, OPO, REINFORCE++, ReMax, GPG
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [compute_rloo_outcome_advantage, compute_rloo_vectorized_outcome_advantage])
def test_rloo_literal_example(fn):
    # group [1, 2, 6] (n = 3): leave-one-out means [4, 3.5, 1.5] -> A = [-3, -1.5, 4.5]
    # (= n/(n-1) * (s - mean) = 1.5 * ([1, 2, 6] - 3)); singleton [7] keeps its score 7
    rewards, mask = _outcome([1.0, 2.0, 6.0, 7.0], [1, 2, 3, 4])
    index = np.array([0, 0, 0, 1])
    adv, ret = fn(rewards, mask, index)
    assert torch.allclose(adv, torch.tensor([-3.0, -1.5, 4.5, 7.0])[:, None] * mask)
    assert torch.equal(adv, ret)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("as_strings", [True, False])
def test_rloo_loop_and_vectorized_agree(seed, as_strings):
    rewards, mask, index = _random_groups(seed, num_groups=9, as_strings=as_strings)
    loop, _ = compute_rloo_outcome_advantage(rewards, mask, index)
    vec, _ = compute_rloo_vectorized_outcome_advantage(rewards, mask, index)
    torch.testing.assert_close(loop, vec, rtol=1e-5, atol=1e-6)


def test_rloo_advantages_sum_to_zero_within_each_group():
    # Invariance: sum_i (s_i - mean of others) = n*mu - n*mu = 0 for every group with n > 1.
    rewards, mask = _outcome([3.0, -1.0, 2.5, 0.5, 4.0], [1, 1, 1, 1, 1], width=1)
    adv, _ = compute_rloo_vectorized_outcome_advantage(rewards, mask, np.array([0, 0, 0, 1, 1]))
    assert abs(adv[:3].sum().item()) < 1e-6 and abs(adv[3:].sum().item()) < 1e-6


def test_opo_literal_example():
    # group with lengths [1, 3], scores [2, 6]: baseline (1*2 + 3*6) / 4 = 5 -> A = [-3, 1]; singleton keeps 4
    rewards, mask = _outcome([2.0, 6.0, 4.0], [1, 3, 2])
    adv, _ = compute_opo_outcome_advantage(rewards, mask, np.array(["p", "p", "q"]))
    assert torch.allclose(adv, torch.tensor([-3.0, 1.0, 4.0])[:, None] * mask)


def test_reinforce_plus_plus_baseline_literal_example():
    # groups [1, 0] and [2, 4] -> centred [0.5, -0.5, -1, 1]; two tokens each, so the token values are
    # [.5,.5,-.5,-.5,-1,-1,1,1]: mean 0, unbiased var (4*.25 + 4*1)/7 = 5/7, std 0.845154
    # -> whitened 0.5/0.845154 = 0.591608 and 1/0.845154 = 1.183216
    rewards, mask = _outcome([1.0, 0.0, 2.0, 4.0], [2, 2, 2, 2], width=2)
    adv, _ = compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, np.array([0, 0, 1, 1]))
    expected = torch.tensor([0.591608, -0.591608, -1.183216, 1.183216])[:, None].expand(4, 2)
    assert torch.allclose(adv, expected, atol=1e-5)


def test_reinforce_plus_plus_literal_example_and_reset_on_mask():
    # gamma 0.5, r = [1, 0, 2]. Full mask: G2 = 2, G1 = 0 + 0.5*2 = 1, G0 = 1 + 0.5*1 = 1.5.
    # Mask [1, 0, 1]: the running return is zeroed after the masked t=1 -> G1 = 1, G0 = 1 + 0.5*0 = 1.
    rewards = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    adv, ret = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, config={"gamma": 0.5})
    assert torch.allclose(ret, torch.tensor([[1.5, 1.0, 2.0], [1.0, 1.0, 2.0]]))
    # Row-0-only whitening: mean 1.5, unbiased var (0 + .25 + .25)/2 = .25 -> [0, -1, 1].
    adv0, _ = compute_reinforce_plus_plus_outcome_advantage(rewards[:1], mask[:1], gamma=0.5)
    assert torch.allclose(adv0, torch.tensor([[0.0, -1.0, 1.0]]), atol=1e-4)
    assert torch.isfinite(adv).all()
    assert (adv * (1 - mask)).abs().sum() == 0


def test_remax_literal_example():
    # masked rewards [0, 1, 0] -> reverse cumsum returns [1, 1, 0]; minus baseline 0.5 on masked tokens -> [0.5, 0.5, 0]
    rewards = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = compute_remax_outcome_advantage(rewards, torch.tensor([0.5]), mask)
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(adv, torch.tensor([[0.5, 0.5, 0.0]]))


def test_gpg_literal_example():
    # scores [1, 0, 2, 2], 3 non-zero of 4 -> alpha = 4/3. group a = [1, 0]: mean 0.5 -> +-0.5 * 4/3 = +-0.666667;
    # b and c are singletons (mean 0) -> 2 * 4/3 = 2.666667
    rewards, mask = _outcome([1.0, 0.0, 2.0, 2.0], [1, 2, 3, 4])
    adv, _ = compute_gpg_outcome_advantage(rewards, mask, np.array(["a", "a", "b", "c"]))
    assert torch.allclose(adv, torch.tensor([0.666667, -0.666667, 2.666667, 2.666667])[:, None] * mask, atol=1e-5)


def test_outcome_estimators_are_zero_off_the_mask_and_accept_extra_kwargs():
    rewards, mask, index = _random_groups(5, num_groups=4, as_strings=True)
    for name in ["grpo", "grpo_vectorized", "rloo", "rloo_vectorized", "opo", "gpg", "reinforce_plus_plus_baseline"]:
        adv, _ = get_adv_estimator_fn(name)(
            token_level_rewards=rewards, response_mask=mask, index=index, config={"gamma": 1.0}, unused=1
        )
        assert adv.shape == rewards.shape
        assert (adv * (1 - mask)).abs().sum() == 0, name


def test_compute_rewards_literal():
    # kl = old - ref = [0.5, -1]; scores - 0.1 * kl = [1 - 0.05, 0 + 0.1] = [0.95, 0.1]
    out = compute_rewards(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]), 0.1)
    assert torch.allclose(out, torch.tensor([0.95, 0.1]))


# ---------------------------------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_literal():
    # kl 1.5 vs target 1: error clip(0.5) = 0.2 -> value 0.1 * (1 + 0.2 * 10/100) = 0.102
    # kl 0.9: error -0.1 -> 0.102 * (1 - 0.1 * 10/100) = 0.102 * 0.99 = 0.10098
    ctrl = core_algos.AdaptiveKLController(init_kl_coef=0.1, target_kl=1.0, horizon=100)
    ctrl.update(current_kl=1.5, n_steps=10)
    assert ctrl.value == pytest.approx(0.102)
    ctrl.update(current_kl=0.9, n_steps=10)
    assert ctrl.value == pytest.approx(0.10098)


def test_fixed_kl_controller_never_changes():
    ctrl = core_algos.FixedKLController(kl_coef=0.05)
    ctrl.update(current_kl=100.0, n_steps=1000)
    assert ctrl.value == 0.05


@dataclasses.dataclass
class _KLCtrl:
    type: str = "adaptive"
    kl_coef: float = 0.2
    horizon: int = 500
    target_kl: float = 0.05


def test_get_kl_controller_from_dict_dataclass_and_omegaconf():
    from omegaconf import OmegaConf

    fixed = core_algos.get_kl_controller({"type": "fixed", "kl_coef": 0.03})
    assert isinstance(fixed, core_algos.FixedKLController) and fixed.value == 0.03
    adaptive = core_algos.get_kl_controller(_KLCtrl())
    assert isinstance(adaptive, core_algos.AdaptiveKLController)
    assert (adaptive.value, adaptive.target, adaptive.horizon) == (0.2, 0.05, 500)
    cfg = OmegaConf.create(dataclasses.asdict(_KLCtrl(kl_coef=0.4)))
    assert core_algos.get_kl_controller(cfg).value == 0.4


def test_get_kl_controller_errors():
    with pytest.raises(ValueError, match="horizon"):
        core_algos.get_kl_controller(_KLCtrl(horizon=0))
    with pytest.raises(ValueError, match="pid"):  # the kl_ctrl node refuses an unknown type when it is built
        core_algos.get_kl_controller({"type": "pid", "kl_coef": 0.1})


# ---------------------------------------------------------------------------------------------------------------------
# PF-PPO resampling and the sum of squared probabilities
# ---------------------------------------------------------------------------------------------------------------------


def _draw_frequencies(scores: list[float], method: str, weight_pow: float = 2.0, tiles: int = 2000) -> torch.Tensor:
    """Fraction of draws landing on each of ``scores``' positions, from one call on the scores tiled ``tiles`` times."""
    tiled = torch.tensor(scores).repeat(tiles)
    idx = core_algos.pf_ppo_resample_indices(tiled, method, weight_pow, generator=torch.Generator().manual_seed(0))
    assert idx.dtype == torch.long and idx.shape == tiled.shape
    return torch.bincount(idx % len(scores), minlength=len(scores)).double() / len(idx)


def test_pf_ppo_pow_draws_in_proportion_to_abs_score_to_the_power():
    # |s|^2 = [0, 1, 4, 9] (+1e-8) -> probabilities [0, 1/14, 4/14, 9/14] = [0, 0.0714, 0.2857, 0.6429]
    freq = _draw_frequencies([0.0, 1.0, -2.0, 3.0], "pow")
    assert freq[0] == 0.0
    torch.testing.assert_close(freq[1:], torch.tensor([1 / 14, 4 / 14, 9 / 14], dtype=torch.double), atol=0.015, rtol=0)


def test_pf_ppo_max_min_keeps_only_the_extreme_rows():
    # max 5 (rows 1, 3) and min 1 (rows 0, 4) have weight 1 each; rows 2, 5 only 1e-8 -> 1/4 each, never the others.
    freq = _draw_frequencies([1.0, 5.0, 3.0, 5.0, 1.0, 2.0], "max_min", tiles=1000)
    assert freq[2] == 0.0 and freq[5] == 0.0
    torch.testing.assert_close(freq[[0, 1, 3, 4]], torch.full((4,), 0.25, dtype=torch.double), atol=0.015, rtol=0)


def test_pf_ppo_max_random_favours_the_max_four_to_one():
    # weights [0.1, 0.4, 0.1, 0.1] -> the max row gets 0.4 / 0.7 = 0.5714, each other 0.1429
    freq = _draw_frequencies([1.0, 5.0, 3.0, 2.0], "max_random")
    expected = torch.tensor([1 / 7, 4 / 7, 1 / 7, 1 / 7], dtype=torch.double)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


def test_pf_ppo_is_reproducible_with_a_seeded_generator_and_rejects_unknown_methods():
    scores = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.5])
    draw = [
        core_algos.pf_ppo_resample_indices(scores, "pow", 1.0, generator=torch.Generator().manual_seed(7))
        for _ in range(2)
    ]
    assert torch.equal(draw[0], draw[1]) and draw[0].shape == (5,)
    with pytest.raises(ValueError, match="algorithm.pf_ppo.reweight_method"):
        core_algos.pf_ppo_resample_indices(scores, "softmax", 1.0)


def test_sum_pi_squared_literal_and_stable_for_huge_logits():
    # uniform over 3 -> 3 * (1/3)^2 = 0.333333; logits [0, ln 2, 0] -> pi = [1/4, 1/2, 1/4] -> 1/16 + 1/4 + 1/16 = 0.375
    # [1000, 1000, 0] -> pi ~ [1/2, 1/2, 0] -> 0.5 (a naive softmax in float32 would overflow e^1000)
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [1000.0, 1000.0, 0.0]]])  # (1, 3, 3)
    out = core_algos.compute_sum_pi_squared_from_logits(logits)
    assert out.shape == (1, 3)
    torch.testing.assert_close(out, torch.tensor([[1 / 3, 0.375, 0.5]]))


def test_sum_pi_squared_matches_softmax_formulation():
    torch.manual_seed(4)
    logits = torch.randn(2, 5, 11) * 3
    expected = torch.softmax(logits, dim=-1).square().sum(dim=-1)
    torch.testing.assert_close(core_algos.compute_sum_pi_squared_from_logits(logits), expected)
