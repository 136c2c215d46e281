"""KL estimators of core_algos: literal values, the '+' straight-through variants, invariances and errors."""

from __future__ import annotations

import math

import pytest
import torch

from verl.trainer.ppo.core_algos import kl_penalty, kl_penalty_forward

# d = logp - ref = [0.5, -0.5]
LOGP = torch.tensor([[0.0, -1.0]])
REF = torch.tensor([[-0.5, -0.5]])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("kl", [0.5, -0.5]),  # d
        ("k1", [0.5, -0.5]),
        ("abs", [0.5, 0.5]),  # |d|
        ("mse", [0.125, 0.125]),  # 0.5 d^2 = 0.5 * 0.25
        ("k2", [0.125, 0.125]),
        # k3 with x = ref - logp = -d: e^x - x - 1 -> e^-0.5 + 0.5 - 1 = 0.106531; e^0.5 - 0.5 - 1 = 0.148721
        ("low_var_kl", [0.106531, 0.148721]),
        ("k3", [0.106531, 0.148721]),
    ],
)
def test_kl_estimators_literal(name, expected):
    assert torch.allclose(kl_penalty(LOGP, REF, name), torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(kl_penalty_forward(LOGP, REF, name), torch.tensor([expected]), atol=1e-6)


def test_low_var_kl_is_clamped_for_extreme_ratios():
    # ref - logp = 30 is clamped to 20 before exp, and the result to 10.
    out = kl_penalty(torch.tensor([[-30.0]]), torch.tensor([[0.0]]), "low_var_kl")
    assert out.item() == 10.0


@pytest.mark.parametrize("base", ["kl", "k1", "abs", "low_var_kl", "k3", "mse", "k2"])
def test_plus_variant_has_base_value_and_k2_gradient(base):
    logp = torch.tensor([[0.0, -1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-0.5, -0.5, -2.5]])
    value = kl_penalty(logp, ref, base + "+")
    assert torch.allclose(value, kl_penalty(logp, ref, base))
    value.sum().backward()
    # d/dlogp of 0.5 (logp - ref)^2 = logp - ref = [0.5, -0.5, 0.5]
    assert torch.allclose(logp.grad, torch.tensor([[0.5, -0.5, 0.5]]))


def test_k3_gradient_differs_from_k3_plus_gradient():
    # k3 gradient: d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - e^(ref-logp); at ref-logp = -0.5: 1 - 0.606531 = 0.393469
    logp = torch.tensor([[0.0]], requires_grad=True)
    kl_penalty(logp, torch.tensor([[-0.5]]), "k3").sum().backward()
    assert logp.grad.item() == pytest.approx(1 - math.exp(-0.5), abs=1e-6)


@pytest.mark.parametrize("name", ["kl", "abs", "mse", "low_var_kl"])
def test_estimators_depend_only_on_the_log_ratio(name):
    torch.manual_seed(0)
    logp, ref = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(kl_penalty(logp + 7.0, ref + 7.0, name), kl_penalty(logp, ref, name), atol=1e-5)


def test_k3_is_nonnegative_and_zero_at_equal_policies():
    torch.manual_seed(1)
    logp, ref = torch.randn(4, 6), torch.randn(4, 6)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logp, logp, "k3"), torch.zeros(4, 6))


def test_k1_and_k3_have_the_same_expectation_under_the_policy():
    # Both are unbiased for KL(pi || ref) when tokens are sampled from pi. Two-token distributions, exact expectation.
    p = torch.tensor([0.7, 0.3])
    q = torch.tensor([0.4, 0.6])
    logp, ref = p.log(), q.log()
    exact = (p * (logp - ref)).sum()
    k1 = (p * kl_penalty(logp, ref, "k1")).sum()
    k3 = (p * kl_penalty(logp, ref, "k3")).sum()
    assert k1.item() == pytest.approx(exact.item(), abs=1e-6) and k3.item() == pytest.approx(exact.item(), abs=1e-6)


@pytest.mark.parametrize("name", ["full", "k4", "low_var_kl++", ""])
def test_unsupported_estimators_raise_not_implemented(name):
    with pytest.raises(NotImplementedError):
        kl_penalty(LOGP, REF, name)
