"""agg_loss, the registered policy losses, the value loss and the entropy loss of core_algos.

Literal examples carry their arithmetic in a comment; gradients are checked where a loss is built to route them in
a particular way (clipping, straight-through ratios, detached weights).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from verl.trainer.ppo import core_algos
from verl.trainer.ppo.core_algos import agg_loss, compute_value_loss, get_policy_loss_fn

LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
LOSS_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])  # the third row is empty and must not count


# ---------------------------------------------------------------------------------------------------------------------
# agg_loss
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 3.0),  # (1+2+3+4+5) / 5 tokens
        ("seq-mean-token-sum", 7.5),  # (6 + 9) / 2 non-empty sequences
        ("seq-mean-token-mean", 3.25),  # (6/3 + 9/2) / 2 = (2 + 4.5) / 2
        ("seq-mean-token-sum-norm", 2.5),  # (6/3 + 9/3) / 2, divisor = response length 3
    ],
)
def test_agg_loss_literal_modes(mode, expected):
    assert agg_loss(LOSS_MAT, LOSS_MASK, mode).item() == pytest.approx(expected)


def test_agg_loss_seq_mean_token_sum_norm_uses_loss_scale_factor():
    # (6/5 + 9/5) / 2 = 1.5
    assert agg_loss(LOSS_MAT, LOSS_MASK, "seq-mean-token-sum-norm", loss_scale_factor=5).item() == pytest.approx(1.5)


def test_agg_loss_unknown_mode_raises_listing_modes():
    with pytest.raises(ValueError, match="token-mean"):
        agg_loss(LOSS_MAT, LOSS_MASK, "token-median")


@pytest.mark.parametrize("mode", core_algos.LOSS_AGG_MODES)
def test_agg_loss_all_masked_is_zero_with_zero_grad(mode):
    loss_mat = torch.randn(2, 3, requires_grad=True)
    loss = agg_loss(loss_mat, torch.zeros(2, 3), mode)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(loss_mat.grad, torch.zeros(2, 3))


@pytest.mark.parametrize("mode", core_algos.LOSS_AGG_MODES)
def test_agg_loss_dp2_with_global_counts_equals_dp1(mode):
    # Two ranks with different token counts; DDP averages rank gradients, so the mean of the rank losses must equal
    # the single-process loss when each rank is given the global counts and dp_size.
    torch.manual_seed(0)
    loss_mat = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).float()
    mask[:, 0] = 1
    full = agg_loss(loss_mat, mask, mode)
    kwargs = {"dp_size": 2, "batch_num_tokens": mask.sum(), "global_batch_size": 6}
    ranks = [agg_loss(loss_mat[s], mask[s], mode, **kwargs) for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, full)


def test_agg_loss_token_mean_micro_batches_accumulate_to_the_full_batch():
    # Gradient accumulation: micro-batch losses scaled by (micro tokens / total tokens) sum to the full token mean.
    torch.manual_seed(1)
    loss_mat, mask = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    mask[:, 0] = 1
    full = agg_loss(loss_mat, mask, "token-mean")
    parts = [
        agg_loss(loss_mat[s], mask[s], "token-mean", batch_num_tokens=mask.sum()) for s in (slice(0, 1), slice(1, 4))
    ]
    torch.testing.assert_close(parts[0] + parts[1], full)


# ---------------------------------------------------------------------------------------------------------------------
# vanilla PPO (dual clip)
# ---------------------------------------------------------------------------------------------------------------------

# Four tokens, clip 0.2, clip_ratio_c 3:
#   A=+1, r=1.5: L1=-1.5, L2=-1.2 -> max -1.2 (clipped)
#   A=+1, r=0.5: L1=-0.5, L2=-0.8 -> max -0.5
#   A=-1, r=1.5: L1= 1.5, L2= 1.2 -> max  1.5; dual bound 3 -> 1.5
#   A=-1, r=5  : L1= 5,   L2= 1.2 -> max  5;   dual bound 3 -> 3 (lower clip)
# token-mean = (-1.2 - 0.5 + 1.5 + 3) / 4 = 0.7; clipfrac 1/4; clipfrac_lower 1/4
# ppo_kl = -mean(log r) = -(0.405465 - 0.693147 + 0.405465 + 1.609438) / 4 = -0.431805
RATIOS = torch.tensor([[1.5, 0.5, 1.5, 5.0]])
ADVANTAGES = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
OLD = torch.zeros(1, 4)
MASK4 = torch.ones(1, 4)


def _log_prob(ratios: torch.Tensor = RATIOS) -> torch.Tensor:
    return torch.log(ratios).clone().requires_grad_(True)


def test_vanilla_literal_example_and_metrics():
    log_prob = _log_prob()
    loss, metrics = get_policy_loss_fn("vanilla")(OLD, log_prob, ADVANTAGES, MASK4, config={"clip_ratio": 0.2})
    assert loss.item() == pytest.approx(0.7, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)
    assert metrics["actor/ppo_kl"] == pytest.approx(-0.431805, abs=1e-6)
    assert set(metrics) == {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    # Gradients: clipped tokens get 0; unclipped get d(-A r)/dlogp / 4 = -A r / 4 -> [0, -0.125, 0.375, 0]
    loss.backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[0.0, -0.125, 0.375, 0.0]]), atol=1e-6)


def test_vanilla_asymmetric_clip_higher():
    # clip_ratio_high 0.28: token 1 becomes -1.28 -> (-1.28 - 0.5 + 1.5 + 3) / 4 = 0.68
    cfg = {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0}
    loss, _ = get_policy_loss_fn("vanilla")(OLD, _log_prob(), ADVANTAGES, MASK4, config=cfg)
    assert loss.item() == pytest.approx(0.68, abs=1e-6)


def test_vanilla_dual_clip_bound_from_config():
    # clip_ratio_c 10: token 4 keeps 5 -> (-1.2 - 0.5 + 1.5 + 5) / 4 = 1.2, no lower clip
    loss, metrics = get_policy_loss_fn("vanilla")(OLD, _log_prob(), ADVANTAGES, MASK4, config={"clip_ratio_c": 10.0})
    assert loss.item() == pytest.approx(1.2, abs=1e-6) and metrics["actor/pg_clipfrac_lower"] == 0.0
    with pytest.raises(ValueError, match="clip_ratio_c"):
        get_policy_loss_fn("vanilla")(OLD, _log_prob(), ADVANTAGES, MASK4, config={"clip_ratio_c": 1.0})


@dataclasses.dataclass
class _PolicyLossCfg:
    loss_mode: str = "vanilla"
    clip_cov_ratio: float = 1.0
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 0.25
    ppo_kl_coef: float = 1.0


@dataclasses.dataclass
class _ActorCfg:
    clip_ratio: float = 0.2
    clip_ratio_low: float | None = None
    clip_ratio_high: float | None = None
    clip_ratio_c: float = 3.0
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    policy_loss: _PolicyLossCfg = dataclasses.field(default_factory=_PolicyLossCfg)


def test_vanilla_same_result_for_none_dict_dataclass_and_omegaconf_configs():
    from omegaconf import OmegaConf

    fn = get_policy_loss_fn("vanilla")
    omega = OmegaConf.structured(_ActorCfg())
    losses = [fn(OLD, _log_prob(), ADVANTAGES, MASK4, config=c)[0].item() for c in (None, {}, _ActorCfg(), omega)]
    assert losses == pytest.approx([0.7] * 4, abs=1e-6)


def test_vanilla_rollout_is_weights_scale_token_losses():
    # weights [2, 1, 1, 0]: (-2.4 - 0.5 + 1.5 + 0) / 4 = -0.35
    weights = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    loss, _ = get_policy_loss_fn("vanilla")(OLD, _log_prob(), ADVANTAGES, MASK4, rollout_is_weights=weights)
    assert loss.item() == pytest.approx(-0.35, abs=1e-6)


def test_vanilla_ignores_masked_tokens_whatever_their_values():
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    wild = torch.log(torch.tensor([[1.5, 0.5, 1e6, 1e-6]]))
    a, _ = get_policy_loss_fn("vanilla")(OLD, _log_prob(), ADVANTAGES, mask)
    b, _ = get_policy_loss_fn("vanilla")(OLD, wild, ADVANTAGES, mask)
    # (-1.2 - 0.5) / 2 = -0.85 in both cases
    assert a.item() == pytest.approx(-0.85, abs=1e-6) and b.item() == pytest.approx(-0.85, abs=1e-6)


def test_deprecated_compute_policy_loss_matches_vanilla():
    with pytest.warns(DeprecationWarning):
        pg_loss, clipfrac, ppo_kl, lower = core_algos.compute_policy_loss(
            OLD, _log_prob(), ADVANTAGES, MASK4, cliprange=0.2, clip_ratio_c=3.0
        )
    assert pg_loss.item() == pytest.approx(0.7, abs=1e-6)
    assert (clipfrac.item(), lower.item()) == pytest.approx((0.25, 0.25))
    assert ppo_kl.item() == pytest.approx(-0.431805, abs=1e-6)


def test_policy_loss_registry_lookup_and_errors():
    assert {"vanilla", "gspo", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo"} <= set(core_algos.POLICY_LOSS_REGISTRY)
    with pytest.raises(ValueError, match="vanilla"):
        get_policy_loss_fn("nope")


def test_register_policy_loss_override_warns_and_replaces(monkeypatch):
    monkeypatch.setattr(core_algos, "POLICY_LOSS_REGISTRY", dict(core_algos.POLICY_LOSS_REGISTRY))

    def mine(*args, **kwargs):
        return torch.tensor(0.0), {}

    with pytest.warns(UserWarning, match="vanilla"):
        core_algos.register_policy_loss("vanilla")(mine)
    assert get_policy_loss_fn("vanilla") is mine


# ---------------------------------------------------------------------------------------------------------------------
# other policy losses
# ---------------------------------------------------------------------------------------------------------------------


def test_gspo_literal_value_and_straight_through_gradient():
    # One sequence, log r = [ln 2, 0] -> sequence ratio exp(ln2 / 2) = sqrt(2) = 1.414214 on both tokens.
    # A = -1, clip 0.2: max(1.414214, 1.2) = 1.414214 per token -> seq-mean-token-mean 1.414214.
    # d/dlogp_t of -A * s_{i,t} = s_i = 1.414214, times the 1/2 token weight -> 0.707107 per token.
    log_prob = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    adv = torch.tensor([[-1.0, -1.0]])
    loss, metrics = get_policy_loss_fn("gspo")(torch.zeros(1, 2), log_prob, adv, torch.ones(1, 2))
    assert loss.item() == pytest.approx(1.414214, abs=1e-6)
    loss.backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[0.707107, 0.707107]]), atol=1e-6)
    assert metrics["actor/pg_clipfrac"] == 0.0


def test_gspo_clips_on_the_sequence_ratio():
    # A = +1: min over -A*s: max(-1.414214, -1.2) = -1.2 on both tokens -> loss -1.2, all tokens clipped.
    log_prob = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    loss, metrics = get_policy_loss_fn("gspo")(torch.zeros(1, 2), log_prob, torch.ones(1, 2), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-1.2, abs=1e-6) and metrics["actor/pg_clipfrac"] == 1.0


def test_gpg_literal():
    # -logp * A = [1*1, 2*2] = [1, 4] -> token-mean 2.5
    loss, metrics = get_policy_loss_fn("gpg")(
        torch.zeros(1, 2), torch.tensor([[-1.0, -2.0]]), torch.tensor([[1.0, 2.0]]), torch.ones(1, 2)
    )
    assert loss.item() == pytest.approx(2.5) and metrics["actor/pg_clipfrac"] == 0.0


# clip_cov / kl_cov: logp = [-1, -3, -2, -2] (centred [1, -1, 0, 0]) and A = [2, -3, 1, 0] (mean 0)
# -> covariance [2, 3, 0, 0].
COV_LOGP = torch.tensor([[-1.0, -3.0, -2.0, -2.0]])
COV_ADV = torch.tensor([[2.0, -3.0, 1.0, 0.0]])


@pytest.mark.parametrize(
    "lb, ub, expected, clipfrac, grad",
    [
        # both covariances in (1, 5): losses [-2, 3, -1, 0] -> [0, 0, -1, 0] -> -0.25
        (1.0, 5.0, -0.25, 0.5, [0.0, 0.0, -0.25, 0.0]),
        # only cov 2: [0, 3, -1, 0] -> 0.5
        (1.0, 2.5, 0.5, 0.25, [0.0, 0.75, -0.25, 0.0]),
        # none: (-2 + 3 - 1 + 0) / 4 = 0
        (4.0, 5.0, 0.0, 0.0, [-0.5, 0.75, -0.25, 0.0]),
    ],
)
def test_clip_cov_literal(lb, ub, expected, clipfrac, grad):
    # r = 1 everywhere, so PPO clipping never triggers and the loss per token is -A; the budget (ratio 1.0 -> 4) is
    # large enough that every candidate is selected, which makes the random pick deterministic.
    cfg = _ActorCfg(policy_loss=_PolicyLossCfg(clip_cov_ratio=1.0, clip_cov_lb=lb, clip_cov_ub=ub))
    log_prob = COV_LOGP.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn("clip_cov")(COV_LOGP, log_prob, COV_ADV, torch.ones(1, 4), config=cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(clipfrac)
    loss.backward()
    # Selected tokens get no gradient; the rest get d(-A r)/dlogp / 4 = -A / 4.
    assert torch.allclose(log_prob.grad, torch.tensor([grad]), atol=1e-6)


def test_kl_cov_literal():
    # old differs from logp on token 1 only: log r = [0, 0.5, 0, 0], r1 = 1.648721.
    # Base -A r = [-2, 4.946164, -1, 0]. kl_cov_ratio 0.25 of 4 tokens -> the top-1 covariance token (1, cov 3)
    # gets + 1.0 * |0.5| -> 5.446164. token-mean = (-2 + 5.446164 - 1 + 0) / 4 = 0.611541; ppo_kl = 0.5/4 = 0.125
    old = torch.tensor([[-1.0, -3.5, -2.0, -2.0]])
    loss, metrics = get_policy_loss_fn("kl_cov")(old, COV_LOGP, COV_ADV, torch.ones(1, 4), config=_ActorCfg())
    assert loss.item() == pytest.approx(0.611541, abs=1e-5)
    assert metrics["actor/ppo_kl"] == pytest.approx(0.125)


def test_geo_mean_literal():
    # clip 0.4 in log space, log r = [0.6, -0.2] on two sequences with sequence-level A = +1 and -1.
    # A=+1: min(l, clamp(l)) = [0.4, -0.2] -> mean 0.1 -> ratio e^0.1 = 1.105171 -> loss -1.105171
    # A=-1: max(l, clamp(l)) = [0.6, -0.2] -> mean 0.2 -> ratio e^0.2 = 1.221403 -> loss +1.221403
    # batch mean = (-1.105171 + 1.221403) / 2 = 0.058116; clipped token 0 of each row -> 1/4 upper, 1/4 lower
    log_prob = torch.tensor([[0.6, -0.2], [0.6, -0.2]])
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    loss, metrics = get_policy_loss_fn("geo_mean")(
        torch.zeros(2, 2), log_prob, adv, torch.ones(2, 2), config={"clip_ratio_low": 0.4, "clip_ratio_high": 0.4}
    )
    assert loss.item() == pytest.approx(0.058116, abs=1e-5)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)


def test_cispo_literal_and_gradient_through_every_token():
    # r = [1.5, 0.5] -> weights clamp to [1.2, 0.8] (both clipped, one from below); A = [1, -1]
    # loss_t = -w A logp = [-1.2 * 0.405465, -0.8 * 0.693147] = [-0.486558, -0.554518] -> mean -0.520538
    # d/dlogp = -w A / 2 = [-0.6, 0.4]: even clipped tokens keep a gradient
    log_prob = torch.log(torch.tensor([[1.5, 0.5]])).requires_grad_(True)
    loss, metrics = get_policy_loss_fn("cispo")(
        torch.zeros(1, 2), log_prob, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    )
    assert loss.item() == pytest.approx(-0.520538, abs=1e-5)
    loss.backward()
    assert torch.allclose(log_prob.grad, torch.tensor([[-0.6, 0.4]]), atol=1e-6)
    assert metrics["actor/pg_clipfrac"] == 1.0 and metrics["actor/pg_clipfrac_lower"] == 0.5


# ---------------------------------------------------------------------------------------------------------------------
# SAPO and DPPO
# ---------------------------------------------------------------------------------------------------------------------


def test_sapo_literal_value_and_gradient():
    # One row, log r = [ln 2, 0] -> r = [2, 1]; A = [+1, -1].
    # token 0 (A > 0, tau_pos 1):    f = sigmoid(1 * (2 - 1)) * 4 / 1 = 0.731059 * 4 = 2.924234 -> loss -2.924234
    # token 1 (A < 0, tau_neg 1.05): f = sigmoid(0) * 4 / 1.05 = 1.904762                 -> loss +1.904762
    # seq-mean-token-mean = (-2.924234 + 1.904762) / 2 = -0.509736
    # d loss / d logp = -A * 4 s (1 - s) * r / 2: token 0: -4 * 0.731059 * 0.268941 * 2 / 2 = -0.786448;
    # token 1: +4 * 0.25 * 1 / 2 = +0.5 (at r = 1 the gate's slope is 1: a plain policy gradient)
    log_prob = torch.tensor([[math.log(2.0), 0.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]])
    loss, metrics = get_policy_loss_fn("sapo")(torch.zeros(1, 2), log_prob, adv, torch.ones(1, 2))
    assert loss.item() == pytest.approx(-0.509736, abs=1e-5)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.786448, 0.5]]), atol=1e-5, rtol=0)
    assert metrics["actor/pg_clipfrac"] == 0.0 and metrics["actor/pg_clipfrac_lower"] == 0.0
    assert metrics["actor/ppo_kl"] == pytest.approx(-math.log(2.0) / 2, abs=1e-6)


def test_sapo_reads_tau_from_dict_dataclass_and_omegaconf():
    from omegaconf import OmegaConf

    # tau_pos 2: f = sigmoid(2) * 4 / 2 = 0.880797 * 2 = 1.761594 -> -1.761594
    # tau_neg 0.5: f = 0.5 * 4 / 0.5 = 4 -> +4;  mean (-1.761594 + 4) / 2 = 1.119203
    log_prob = torch.tensor([[math.log(2.0), 0.0]])
    adv = torch.tensor([[1.0, -1.0]])
    configs = [
        {"tau_pos": 2.0, "tau_neg": 0.5},
        _ActorCfg(tau_pos=2.0, tau_neg=0.5),
        OmegaConf.structured(_ActorCfg(tau_pos=2.0, tau_neg=0.5)),
    ]
    for cfg in configs:
        loss, _ = get_policy_loss_fn("sapo")(torch.zeros(1, 2), log_prob, adv, torch.ones(1, 2), config=cfg)
        assert loss.item() == pytest.approx(1.119203, abs=1e-5), cfg


def test_sapo_forces_seq_mean_token_mean():
    # Rows of 1 and 3 tokens with r = 1 and A = -1: token loss f = 0.5 * 4 / 1.05 = 1.904762 everywhere, so
    # seq-mean-token-mean is 1.904762 whatever mode is asked for; seq-mean-token-sum would give (1 + 3) / 2 * f.
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    for mode in ("token-mean", "seq-mean-token-sum"):
        loss, _ = get_policy_loss_fn("sapo")(torch.zeros(2, 3), torch.zeros(2, 3), -torch.ones(2, 3), mask, mode)
        assert loss.item() == pytest.approx(1.904762, abs=1e-5), mode


# Four tokens (p_old -> p, A), clip 0.2, clip_ratio_c 3:
#   a: 0.5 -> 0.6, A=+1: r = 1.2
#   b: 0.3 -> 0.6, A=+1: r = 2
#   c: 0.5 -> 0.2, A=-1: r = 0.4
#   d: 0.1 -> 0.4, A=-1: r = 4, capped weight 3
DPPO_OLD = torch.log(torch.tensor([[0.5, 0.3, 0.5, 0.1]]))
DPPO_NEW = torch.log(torch.tensor([[0.6, 0.6, 0.2, 0.4]]))
DPPO_ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])


def test_dppo_tv_literal_value_metrics_and_gradient():
    # TV validity: a: +0.1 <= 0.2 valid; b: +0.3 > 0.2 invalid; c: -0.3 < -0.2 invalid; d: +0.3 >= -0.2 valid.
    # loss_a = -1 * 1.2 * ln 0.6 = 0.612991; loss_d = +1 * 3 * ln 0.4 = -2.748872
    # token-mean = (0.612991 + 0 + 0 - 2.748872) / 4 = -0.533970
    # clipfrac = 2/4 (b, c); lower = [r > 3 and valid] = d -> 1/4; ppo_kl = -(ln 1.2 + ln 2 + ln 0.4 + ln 4) / 4
    # grad = -A * sg(weight) * valid / 4 = [-0.3, 0, 0, 0.75]: pushes a up and d down, nothing through b and c
    log_prob = DPPO_NEW.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn("dppo_tv")(DPPO_OLD, log_prob, DPPO_ADV, MASK4)
    assert loss.item() == pytest.approx(-0.533970, abs=1e-5)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)
    assert metrics["actor/ppo_kl"] == pytest.approx(-0.336368, abs=1e-5)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.3, 0.0, 0.0, 0.75]]), atol=1e-6, rtol=0)


def test_dppo_kl_literal_value_and_gradient():
    # binary KL b = p_old ln(p_old / p) + (1 - p_old) ln((1 - p_old) / (1 - p)):
    #   a: 0.5 ln(0.5/0.6) + 0.5 ln(0.5/0.4) = 0.020411 <= 0.2 -> valid
    #   b: 0.3 ln(0.3/0.6) + 0.7 ln(0.7/0.4) = 0.183787 <= 0.2 -> valid (TV rejected it)
    #   c: 0.5 ln(0.5/0.2) + 0.5 ln(0.5/0.8) = 0.223144 > 0.2 and p < p_old -> invalid
    #   d: p >= p_old with A < 0 -> valid
    # loss = (0.612991 + (-1 * 2 * ln 0.6 = 1.021651) + 0 - 2.748872) / 4 = -0.278558
    # grad = [-1.2, -2, 0, 3] / 4 = [-0.3, -0.5, 0, 0.75]
    log_prob = DPPO_NEW.clone().requires_grad_(True)
    loss, metrics = get_policy_loss_fn("dppo_kl")(DPPO_OLD, log_prob, DPPO_ADV, MASK4)
    assert loss.item() == pytest.approx(-0.278558, abs=1e-5)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.25)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(0.25)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.3, -0.5, 0.0, 0.75]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["dppo_tv", "dppo_kl"])
def test_dppo_keeps_moves_against_the_advantage_whatever_the_distance(mode):
    # e: A=+1, p 0.5 -> 0.1 (r = 0.2); f: A=-1, p 0.5 -> 0.9 (r = 1.8). Both are far from p_old (TV 0.4; binary KL
    # 0.5 ln 5 + 0.5 ln(0.5/0.9) = 0.510826 > 0.2) but moved against the advantage, so both stay valid.
    # loss = (-0.2 * ln 0.1 + 1.8 * ln 0.9) / 2 = (0.460517 - 0.189649) / 2 = 0.135434; grad = [-0.2, 1.8] / 2
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    log_prob = torch.log(torch.tensor([[0.1, 0.9]])).requires_grad_(True)
    loss, metrics = get_policy_loss_fn(mode)(old, log_prob, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(0.135434, abs=1e-5) and metrics["actor/pg_clipfrac"] == 0.0
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([[-0.1, 0.9]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["dppo_tv", "dppo_kl"])
def test_dppo_respects_clip_ratio_c_and_loss_agg_mode(mode):
    # clip_ratio_c 5 leaves d's weight at 4: loss_d = 4 ln 0.4 = -3.665163, and nothing exceeds the cap.
    fn = get_policy_loss_fn(mode)
    capped, _ = fn(DPPO_OLD, DPPO_NEW, DPPO_ADV, MASK4)
    loose, metrics = fn(DPPO_OLD, DPPO_NEW, DPPO_ADV, MASK4, config={"clip_ratio_c": 5.0})
    assert (loose - capped).item() == pytest.approx((-3.665163 + 2.748872) / 4, abs=1e-5)
    assert metrics["actor/pg_clipfrac_lower"] == 0.0
    # one row of 4 tokens: seq-mean-token-sum = 4 x token-mean
    summed, _ = fn(DPPO_OLD, DPPO_NEW, DPPO_ADV, MASK4, "seq-mean-token-sum")
    assert summed.item() == pytest.approx(4 * capped.item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# geo_mean and gspo with global batch info: micro-batch invariance
# ---------------------------------------------------------------------------------------------------------------------


def _four_rows(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(old, logp, sequence-level A, ragged mask) for 4 rows of width 5."""
    torch.manual_seed(seed)
    old = -torch.rand(4, 5) * 2
    logp = old + 0.3 * torch.randn(4, 5)
    adv = torch.randn(4, 1).expand(4, 5).contiguous()
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [2], [4], [1]])).float()
    return old, logp, adv, mask


def _accumulated(mode: str, splits: list[slice], config: dict | None) -> tuple[float, torch.Tensor]:
    """Sum of the micro-batch losses and the accumulated gradient w.r.t. logp (like backward per micro-batch)."""
    old, logp, adv, mask = _four_rows()
    logp = logp.requires_grad_(True)
    total = 0.0
    for s in splits:
        loss, _ = get_policy_loss_fn(mode)(old[s], logp[s], adv[s], mask[s], "token-mean", config)
        loss.backward()
        total += loss.item()
    return total, logp.grad


GLOBAL_INFO = {"global_batch_info": {"global_batch_size": 4, "dp_size": 1}}


@pytest.mark.parametrize("mode", ["geo_mean", "gspo", "sapo"])
@pytest.mark.parametrize("splits", [[slice(0, 2), slice(2, 4)], [slice(0, 1), slice(1, 4)]])
def test_sequence_losses_with_global_info_sum_over_micro_batches_to_the_full_batch(mode, splits):
    full_loss, full_grad = _accumulated(mode, [slice(0, 4)], GLOBAL_INFO)
    legacy_full, _ = _accumulated(mode, [slice(0, 4)], None)
    micro_loss, micro_grad = _accumulated(mode, splits, GLOBAL_INFO)
    # one micro-batch holding the whole batch: the global form equals the plain mean over rows
    assert full_loss == pytest.approx(legacy_full, abs=1e-6)
    assert micro_loss == pytest.approx(full_loss, abs=1e-6)
    torch.testing.assert_close(micro_grad, full_grad)


@pytest.mark.parametrize("mode", ["geo_mean", "gspo"])
def test_sequence_losses_without_global_info_depend_on_the_split(mode):
    # Legacy path (upstream behaviour): each micro-batch takes its own mean over rows, so a 1 + 3 split does not sum
    # to the full-batch value; the trainer's GA scaling handles that on the legacy path.
    full_loss, _ = _accumulated(mode, [slice(0, 4)], None)
    micro_loss, _ = _accumulated(mode, [slice(0, 1), slice(1, 4)], None)
    assert micro_loss != pytest.approx(full_loss, abs=1e-3)


def test_geo_mean_global_info_scales_by_dp_size():
    # dp_size 2, global 4 rows, 2 local rows: loss = 2 * (L_0 + L_1) / 4 = the local mean, as agg_loss does.
    old, logp, adv, mask = _four_rows()
    cfg = {"global_batch_info": {"global_batch_size": 4, "dp_size": 2}}
    local, _ = get_policy_loss_fn("geo_mean")(old[:2], logp[:2], adv[:2], mask[:2], config=cfg)
    plain, _ = get_policy_loss_fn("geo_mean")(old[:2], logp[:2], adv[:2], mask[:2])
    assert local.item() == pytest.approx(plain.item(), abs=1e-6)


def test_geo_mean_rollout_is_weights_use_the_row_geometric_mean():
    # r = 1, A = +1 on both tokens; weights [4, 1] -> geometric mean 2 (arithmetic would be 2.5) -> loss -2
    loss, _ = get_policy_loss_fn("geo_mean")(
        torch.zeros(1, 2),
        torch.zeros(1, 2),
        torch.ones(1, 2),
        torch.ones(1, 2),
        rollout_is_weights=torch.tensor([[4.0, 1.0]]),
    )
    assert loss.item() == pytest.approx(-2.0, abs=1e-6)


@pytest.mark.parametrize(
    "mode", ["vanilla", "gspo", "sapo", "dppo_tv", "dppo_kl", "gpg", "clip_cov", "kl_cov", "geo_mean", "cispo"]
)
def test_every_policy_loss_returns_scalar_and_float_metrics_with_the_standard_keys(mode):
    torch.manual_seed(0)
    old, adv, mask = torch.randn(3, 5) - 2, torch.randn(3, 5), torch.ones(3, 5)
    log_prob = (old + 0.1 * torch.randn(3, 5)).requires_grad_(True)
    loss, metrics = get_policy_loss_fn(mode)(old, log_prob, adv, mask, "token-mean", _ActorCfg(), None)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(log_prob.grad).all()
    assert {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())


def test_ratio_one_losses_reduce_to_minus_mean_advantage():
    # With logp == old, r = 1 and no clipping: vanilla and GSPO losses both equal -mean(A) in value.
    torch.manual_seed(2)
    logp, adv, mask = torch.randn(2, 4), torch.randn(2, 4), torch.ones(2, 4)
    expected = -adv.mean()
    for mode in ("vanilla", "gspo"):
        loss, _ = get_policy_loss_fn(mode)(logp, logp.clone(), adv, mask)
        assert loss.item() == pytest.approx(expected.item(), abs=1e-6), mode


# ---------------------------------------------------------------------------------------------------------------------
# value and entropy losses
# ---------------------------------------------------------------------------------------------------------------------


def test_value_loss_literal():
    # clip 0.2: vclip = [0.7, 2.2]; err = [(1-2)^2, (2.5-0)^2] = [1, 6.25]; err_clip = [1.69, 4.84]
    # max = [1.69, 6.25] -> 0.5 * mean = 0.5 * 3.97 = 1.985; clipfrac: token 0 only -> 0.5
    vf_loss, clipfrac = compute_value_loss(
        torch.tensor([[1.0, 2.5]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 2.0]]), torch.ones(1, 2), 0.2
    )
    assert vf_loss.item() == pytest.approx(1.985, abs=1e-6) and clipfrac.item() == pytest.approx(0.5)


def test_value_loss_without_movement_is_half_mse():
    # vpreds == values: clipping is inactive and the loss is 0.5 * masked MSE.
    torch.manual_seed(3)
    v, ret = torch.randn(2, 3), torch.randn(2, 3)
    vf_loss, clipfrac = compute_value_loss(v, ret, v, torch.ones(2, 3), 0.5)
    assert vf_loss.item() == pytest.approx(0.5 * ((v - ret) ** 2).mean().item(), abs=1e-6) and clipfrac.item() == 0


def test_entropy_loss_uniform_logits():
    # uniform over 4 classes -> entropy ln 4 = 1.386294 on every token
    loss = core_algos.compute_entropy_loss(torch.zeros(2, 3, 4), torch.ones(2, 3))
    assert loss.item() == pytest.approx(math.log(4.0), abs=1e-6)
