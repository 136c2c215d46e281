"""Signs of the entropy bonus and the KL loss in ``DataParallelPPOActor.update_policy``.

The policy in the exact tests is a table of free logits, one ``(P+R, V)`` block per row, picked by the row's first
prompt token. One SGD step with ``lr=1`` then moves each logit by exactly minus the gradient of the actor's loss
w.r.t. that logit, and the tests compare that move with the gradient worked out here in closed form:

* entropy ``H = -sum_v p_v log p_v`` has ``dH/dz_v = -p_v (log p_v + H)``;
* ``lp = log p_y`` (the response token ``y``) has ``d lp/dz_v = 1[v = y] - p_v``; the KL estimators are functions
  of ``lp - ref``: k1 ``lp - ref`` (slope 1), k2 ``(lp - ref)^2 / 2`` (slope ``lp - ref``), k3
  ``exp(ref - lp) - (ref - lp) - 1`` (slope ``1 - exp(ref - lp)``), and ``k3+`` keeps k3's value with k2's slope.

Advantages are zero, so the policy-gradient term contributes no gradient, and each mini-batch is one micro-batch, so
any per-micro-batch loss scaling is 1. Flipping the sign of either term in ``dp_actor`` flips the step and fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from verl.protocol import DataProto
from verl.workers.actor import DataParallelPPOActor

P, R, V = 2, 4, 5  # prompt length, response length, vocabulary
LENGTHS = [4, 2, 3]  # valid response tokens per row; the rest is padding and must not move


class FreeLogits(nn.Module):
    """``logits[row]`` for each row, where ``row = input_ids[:, 0]``: a policy whose parameters are its logits."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())  # (rows, P+R, V)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.logits[input_ids[:, 0]]  # (b, P+R, V)


def _config(**overrides):
    cfg = {
        "ppo_mini_batch_size": len(LENGTHS),
        "ppo_micro_batch_size_per_gpu": len(LENGTHS),
        "use_dynamic_bsz": False,
        "ppo_epochs": 1,
        "clip_ratio": 0.2,
        "clip_ratio_c": 3.0,
        "policy_loss": {"loss_mode": "vanilla"},
        "loss_agg_mode": "token-mean",
        "entropy_coeff": 0.0,
        "use_kl_loss": False,
        "kl_loss_coef": 0.0,
        "kl_loss_type": "low_var_kl",
        "grad_clip": 1e9,
        "use_remove_padding": False,  # FreeLogits reads its rows from the padded layout
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _case(seed: int = 0) -> tuple[FreeLogits, DataProto]:
    """Three rows of random logits and tokens, with zero advantages and a reference 0.1-0.5 nats off the policy."""
    g = torch.Generator().manual_seed(seed)
    bs = len(LENGTHS)
    model = FreeLogits(torch.randn(bs, P + R, V, generator=g))
    prompts = torch.randint(0, V, (bs, P), generator=g)
    prompts[:, 0] = torch.arange(bs)  # the row id the model looks up
    responses = torch.randint(0, V, (bs, R), generator=g)
    response_mask = (torch.arange(R) < torch.tensor(LENGTHS)[:, None]).long()
    attention_mask = torch.cat([torch.ones(bs, P, dtype=torch.long), response_mask], dim=-1)
    with torch.no_grad():
        lp = _token_log_probs(model.logits, responses)
    offset = (torch.rand(bs, R, generator=g) * 0.4 + 0.1) * torch.where(torch.rand(bs, R, generator=g) < 0.5, -1, 1)
    data = DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=-1),
            "attention_mask": attention_mask,
            "position_ids": torch.arange(P + R).expand(bs, -1).clone(),
            "response_mask": response_mask,
            "advantages": torch.zeros(bs, R),
            "old_log_probs": lp,
            "ref_log_prob": lp + offset,
        },
        meta_info={"temperature": 1.0},
    )
    return model, data


def _response_logits(table: torch.Tensor) -> torch.Tensor:
    return table[:, P - 1 : -1]  # (bs, R, V): position t scores token t+1


def _token_log_probs(table: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(_response_logits(table), dim=-1)
    return logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)  # (bs, R)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float((values * mask).sum() / mask.sum())


def _one_sgd_step(model: FreeLogits, data: DataProto, **cfg) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """Run ``update_policy`` once with SGD(lr=1); return the logit change ``(bs, P+R, V)`` and the metrics."""
    model = copy.deepcopy(model)
    before = model.logits.detach().clone()
    actor = DataParallelPPOActor(_config(**cfg), model, torch.optim.SGD(model.parameters(), lr=1.0))
    metrics = actor.update_policy(data)
    return model.logits.detach() - before, metrics


def _expected_step(model: FreeLogits, data: DataProto, per_token_grad: torch.Tensor) -> torch.Tensor:
    """``-d loss/d logits`` for a token-mean loss whose per-token gradient w.r.t. the response logits is given."""
    mask = data.batch["response_mask"].float()
    step = torch.zeros_like(model.logits)
    step[:, P - 1 : -1] = -per_token_grad * (mask / mask.sum()).unsqueeze(-1)
    return step


def test_entropy_bonus_steps_along_the_entropy_gradient():
    model, data = _case(seed=0)
    coeff = 0.5
    logp = torch.log_softmax(_response_logits(model.logits.detach()), dim=-1)  # (bs, R, V)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)  # (bs, R)
    d_entropy = -p * (logp + entropy.unsqueeze(-1))  # dH/dz
    # loss = pg - coeff * H  ->  d loss/dz = -coeff * dH/dz per token, so SGD moves z by +coeff * dH/dz (mask-weighted)
    expected = _expected_step(model, data, -coeff * d_entropy)

    step, metrics = _one_sgd_step(model, data, entropy_coeff=coeff)

    torch.testing.assert_close(step, expected, atol=1e-6, rtol=1e-5)
    mask = data.batch["response_mask"]
    assert metrics["actor/entropy"] == [pytest.approx(_masked_mean(entropy, mask), abs=1e-5)]
    after = torch.log_softmax(_response_logits(model.logits.detach() + step), dim=-1)
    assert _masked_mean(-(after.exp() * after).sum(-1), mask) > _masked_mean(entropy, mask)


@pytest.mark.parametrize(
    "kl_type, slope",
    [
        ("k1", lambda d: torch.ones_like(d)),
        ("kl", lambda d: torch.ones_like(d)),
        ("k2", lambda d: d),
        ("mse", lambda d: d),
        ("low_var_kl", lambda d: 1 - torch.exp(-d)),
        ("k3", lambda d: 1 - torch.exp(-d)),
        ("low_var_kl+", lambda d: d),  # straight-through: k3's value, k2's gradient
    ],
)
def test_kl_loss_steps_against_the_kl_gradient(kl_type, slope):
    model, data = _case(seed=1)
    coeff = 0.7
    responses, ref = data.batch["responses"], data.batch["ref_log_prob"]
    logp = torch.log_softmax(_response_logits(model.logits.detach()), dim=-1)  # (bs, R, V)
    lp = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    d_lp = nn.functional.one_hot(responses, V).float() - logp.exp()  # d lp/dz
    # loss = pg + coeff * KL(lp - ref)  ->  d loss/dz = coeff * KL'(lp - ref) * d lp/dz
    expected = _expected_step(model, data, coeff * slope(lp - ref).unsqueeze(-1) * d_lp)

    step, metrics = _one_sgd_step(model, data, use_kl_loss=True, kl_loss_coef=coeff, kl_loss_type=kl_type)

    torch.testing.assert_close(step, expected, atol=1e-6, rtol=1e-5)
    assert metrics["actor/kl_coef"] == [coeff]
    assert len(metrics["actor/kl_loss"]) == 1


def test_kl_loss_step_brings_the_policy_towards_the_reference():
    model, data = _case(seed=2)
    mask, responses, ref = data.batch["response_mask"], data.batch["responses"], data.batch["ref_log_prob"]

    def k3(table: torch.Tensor) -> float:
        log_ratio = ref - _token_log_probs(table, responses)
        return _masked_mean(log_ratio.exp() - log_ratio - 1, mask)

    before = k3(model.logits.detach())
    step, metrics = _one_sgd_step(model, data, use_kl_loss=True, kl_loss_coef=1.0, kl_loss_type="low_var_kl")

    assert metrics["actor/kl_loss"] == [pytest.approx(before, abs=1e-5)]  # the loss of the (only) micro-batch
    assert k3(model.logits.detach() + step) < before


def test_kl_loss_needs_the_reference_log_probs():
    model, data = _case()
    data.batch.pop("ref_log_prob")
    actor = DataParallelPPOActor(_config(use_kl_loss=True), model, torch.optim.SGD(model.parameters(), lr=1.0))
    with pytest.raises(ValueError, match="ref_log_prob"):
        actor.update_policy(data)
