"""``SPDRollout``: the decision contract, seeded Bernoulli statistics, and log-probs the PPO actor reproduces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import spd_scorer
from verl.protocol import DataProto
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.spd_rollout import SPDRollout

PAD = 3
# Three rows: K = 4, 2, 3. Row 0 mismatches at 1 and 3; row 1 at 0; row 2 has none.
DRAFTS = [[40, 41, 42, 43], [50, 51], [60, 61, 62]]
TARGETS = [[40, 99, 42, 98], [97, 51], [60, 61, 62]]
MISMATCH = [[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]]  # padded to R = 4


def _config(**overrides):
    cfg = {
        "name": "spd",
        "temperature": 1.0,
        "do_sample": True,
        "response_length": 4,
        "val_kwargs": {"temperature": 0, "top_p": 1.0, "top_k": -1, "do_sample": False, "n": 1},
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _prompts(drafts=DRAFTS, targets=TARGETS, seed: int | None = 0) -> DataProto:
    # left-padded contexts of lengths 3, 1, 2
    ids = torch.tensor([[10, 11, 12], [PAD, PAD, 13], [PAD, 14, 15]])
    mask = (ids != PAD).long()
    pos = torch.clamp(mask.cumsum(-1) - 1, min=0)
    meta = {"pad_token_id": PAD, "eos_token_id": 2}
    if seed is not None:
        meta["seed"] = seed
    n = len(drafts)
    return DataProto.from_dict(
        tensors={"input_ids": ids[:n], "attention_mask": mask[:n], "position_ids": pos[:n]},
        non_tensors={
            "spd_draft_ids": np.array([np.array(d) for d in drafts] + [None], dtype=object)[:-1],
            "spd_target_ids": np.array([list(t) for t in targets] + [None], dtype=object)[:-1],
            "uid": np.array([f"u{i}" for i in range(n)], dtype=object),
        },
        meta_info=meta,
    )


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    model = spd_scorer.ScoringActor.from_backbone(tiny_model_dir, seed=0)
    with torch.no_grad():  # a larger head so p is spread over (0, 1) instead of ~0.5
        model.score.weight.mul_(50.0)
    return model.eval()


class ConstantScorer(nn.Module):
    """Accept probability ``p`` at every position, in the ScoringActor's output format."""

    def __init__(self, p: float):
        super().__init__()
        self.s = math.log(p / (1 - p))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        scores = torch.full(input_ids.shape, self.s)
        return type("Out", (), {"logits": spd_scorer.accept_logits(scores)})()


def test_registry_resolves_spd_sync_and_takes_the_workers_arguments(scorer):
    assert get_rollout_class("spd", "sync") is SPDRollout
    # the FSDP worker builds non-hf engines as engine_cls(module, typed_config, model_config=..., seed=...)
    rollout = SPDRollout(scorer, _config(), model_config={"path": "x"}, seed=7)
    assert rollout.module is scorer and rollout.config.name == "spd"


def test_output_contract_by_hand(scorer):
    prompts = _prompts()
    out = SPDRollout(scorer, _config()).generate_sequences(prompts)
    b = out.batch
    assert b["prompts"].tolist() == prompts.batch["input_ids"].tolist()
    # input_ids = context + DRAFT (pad after each row's K), not + responses
    assert b["input_ids"][:, 3:].tolist() == [[40, 41, 42, 43], [50, 51, PAD, PAD], [60, 61, 62, PAD]]
    assert b["attention_mask"][:, 3:].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    # positions continue the prompt's last one (2, 0, 1) by +1
    assert b["position_ids"][:, 3:].tolist() == [[3, 4, 5, 6], [1, 2, 3, 4], [2, 3, 4, 5]]
    a = b["responses"]
    m = torch.tensor(MISMATCH)
    # matches forced to 1 (valid positions), padding 0
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert (a[(m == 0) & (valid == 1)] == 1).all() and (a[valid == 0] == 0).all()
    assert b["response_mask"].tolist() == spd_scorer.decision_mask(a, m).tolist()
    assert b["response_mask"][2].tolist() == [0, 0, 0, 0]  # no mismatch: nothing to learn from
    lp = b["rollout_log_probs"]
    assert (lp[b["response_mask"] == 0] == 0).all() and (lp[b["response_mask"] == 1] < 0).all()
    nt = out.non_tensor_batch
    assert [list(x) for x in nt["spd_decisions"]] == [a[0].tolist(), a[1, :2].tolist(), a[2, :3].tolist()]
    assert nt["spd_num_mismatches"].tolist() == [2, 1, 0]
    assert nt["spd_accepted_mismatches"].tolist() == spd_scorer.accepted_mismatches(a, m).tolist()
    first = spd_scorer.first_rejection(a, m).tolist()
    assert nt["spd_first_rejection"].tolist() == [min(first[0], 4), min(first[1], 2), 3]  # row K when none
    assert nt["uid"].tolist() == ["u0", "u1", "u2"]


def test_decisions_follow_the_scorer_probabilities_by_hand():
    """p = 0.3 everywhere; seed 0 draws u ~ U(0, 1) and accepts where u < 0.3, exactly as torch.rand does."""
    out = SPDRollout(ConstantScorer(0.3), _config()).generate_sequences(_prompts(seed=0))
    u = torch.rand((3, 4), generator=torch.Generator().manual_seed(0))
    m = torch.tensor(MISMATCH)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    expected = torch.where(m.bool(), (u < 0.3).long(), valid)
    assert out.batch["responses"].tolist() == expected.tolist()
    # log Bernoulli: log 0.3 = -1.203973 on accepts, log 0.7 = -0.356675 on rejects, inside the mask
    mask = out.batch["response_mask"].bool()
    lp = torch.where(expected.bool(), math.log(0.3), math.log(0.7)) * mask
    torch.testing.assert_close(out.batch["rollout_log_probs"], lp.float(), atol=1e-6, rtol=0)


def test_seeded_bernoulli_statistics_match_p():
    # 400 rows x 10 mismatching positions = 4000 draws of p = 0.3
    rows = 400
    drafts, targets = [[1] * 10] * rows, [[2] * 10] * rows
    prompts = DataProto.from_dict(
        tensors={
            "input_ids": torch.full((rows, 2), 7),
            "attention_mask": torch.ones(rows, 2, dtype=torch.long),
            "position_ids": torch.arange(2).repeat(rows, 1),
        },
        non_tensors={"spd_draft_ids": drafts, "spd_target_ids": targets},
        meta_info={"seed": 123, "pad_token_id": PAD},
    )
    rollout = SPDRollout(ConstantScorer(0.3), _config(response_length=10))
    out = rollout.generate_sequences(prompts)
    mean = out.batch["responses"].float().mean().item()
    # sigma = sqrt(0.3 * 0.7 / 4000) = 0.007246; 3 sigma = 0.0217
    assert abs(mean - 0.3) < 3 * math.sqrt(0.3 * 0.7 / 4000)
    # the first decision is a rejection with probability 0.7: sigma = sqrt(0.21 / 400) = 0.0229
    p_first = (out.non_tensor_batch["spd_first_rejection"] == 0).mean()
    assert abs(p_first - 0.7) < 3 * math.sqrt(0.21 / 400)
    # same seed, same draws, whatever the micro-batching; another seed differs
    again = SPDRollout(ConstantScorer(0.3), _config(response_length=10), micro_batch_size=64)
    assert torch.equal(again.generate_sequences(prompts).batch["responses"], out.batch["responses"])
    prompts.meta_info["seed"] = 124
    assert not torch.equal(rollout.generate_sequences(prompts).batch["responses"], out.batch["responses"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_log_probs_equal_what_the_actor_recomputes(scorer, temperature):
    from verl.workers.actor.dp_actor import DataParallelPPOActor

    out = SPDRollout(scorer, _config(temperature=temperature)).generate_sequences(_prompts(seed=5))
    config = {
        "ppo_mini_batch_size": 3,
        "ppo_micro_batch_size_per_gpu": 3,
        "use_dynamic_bsz": False,
        "ppo_epochs": 1,
        "policy_loss": {"loss_mode": "vanilla"},
        "loss_agg_mode": "token-mean",
    }
    actor = DataParallelPPOActor(config, scorer)
    out.meta_info.update(temperature=temperature, micro_batch_size=2)
    recomputed = actor.compute_log_prob(out)["log_probs"]
    mask = out.batch["response_mask"].float()
    assert mask.sum() >= 2
    torch.testing.assert_close(recomputed * mask, out.batch["rollout_log_probs"], atol=1e-5, rtol=0)


def test_validation_is_greedy(scorer):
    rollout = SPDRollout(scorer, _config())
    prompts = _prompts(seed=None)
    prompts.meta_info["validate"] = True
    first = rollout.generate_sequences(prompts).batch["responses"]
    second = rollout.generate_sequences(prompts).batch["responses"]
    assert torch.equal(first, second)
    # p >= 0.5 <=> log p >= log(1 - p): the greedy decision is the likelier one, so its log-prob is >= log 0.5
    out = rollout.generate_sequences(prompts)
    lp = out.batch["rollout_log_probs"][out.batch["response_mask"].bool()]
    assert (lp >= math.log(0.5) - 1e-6).all()


def test_missing_columns_and_short_response_length_are_clear_errors(scorer):
    prompts = _prompts()
    prompts.non_tensor_batch.pop("spd_target_ids")
    with pytest.raises(ValueError, match="spd_target_ids"):
        SPDRollout(scorer, _config()).generate_sequences(prompts)
    with pytest.raises(ValueError, match="response_length"):
        SPDRollout(scorer, _config(response_length=3)).generate_sequences(_prompts())
    with pytest.raises(ValueError, match="row 0"):
        SPDRollout(scorer, _config()).generate_sequences(_prompts(targets=[[40], [97, 51], [60, 61, 62]]))
