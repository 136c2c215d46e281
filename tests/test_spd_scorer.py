"""``spd_scorer``: the masks, the hybrid prefix and the A/B/C/D table by hand; the ScoringActor as an HF model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import spd_scorer
from spd_scorer import (
    ScoringActor,
    accept_logits,
    accepted_mismatches,
    build_scorer_dir,
    compute_reward_tensor,
    decision_mask,
    first_rejection,
    hybrid_prefix_ids,
    mismatch_mask,
    scenario,
    scenario_counts,
)

T = torch.tensor

# ----------------------------------------------------------------------------------------------- masks


def test_mismatch_mask_marks_differing_valid_positions():
    draft = T([[5, 6, 7, 8], [1, 2, 3, 0]])
    target = T([[5, 9, 7, 4], [1, 3, 3, 9]])
    valid = T([[1, 1, 1, 1], [1, 1, 1, 0]])
    # row 0: 5=5, 6!=9, 7=7, 8!=4 -> [0,1,0,1]; row 1: 1=1, 2!=3, 3=3, pad (0 vs 9 differ but invalid) -> [0,1,0,0]
    assert mismatch_mask(draft, target, valid).tolist() == [[0, 1, 0, 1], [0, 1, 0, 0]]
    assert mismatch_mask(draft, target).tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]  # no valid mask: all real
    assert mismatch_mask(draft, target).dtype == torch.long


@pytest.mark.parametrize(
    "mismatch, decisions, expected_mask, expected_first, expected_accepted",
    [
        # no rejection: every mismatch counts, j = K = 5, accepted = mismatches 1, 2, 4 -> 3
        ([0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1], 5, 3),
        # first rejection at 2: mask = mismatches at 1 and 2 (incl. the rejection), 4 is after it; accepted = {1} -> 1
        ([0, 1, 1, 0, 1], [1, 1, 0, 1, 1], [0, 1, 1, 0, 0], 2, 1),
        # rejection at the first mismatch (1): mask = [1] only; a later decision at 4 changes nothing; accepted 0
        ([0, 1, 1, 0, 1], [1, 0, 1, 1, 1], [0, 1, 0, 0, 0], 1, 0),
        # a 0 on a MATCH (position 0) is not a rejection: matches are always accepted
        ([0, 1, 0, 0, 0], [0, 1, 1, 1, 1], [0, 1, 0, 0, 0], 5, 1),
        # no mismatch at all: empty mask, no rejection, nothing accepted
        ([0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], 5, 0),
        # rejection at the last position: mask = 0, 2, 4; accepted = {0, 2} -> 2
        ([1, 0, 1, 0, 1], [1, 1, 1, 1, 0], [1, 0, 1, 0, 1], 4, 2),
    ],
)
def test_decision_mask_first_rejection_and_accepted_by_hand(
    mismatch, decisions, expected_mask, expected_first, expected_accepted
):
    m, a = T([mismatch]), T([decisions])
    assert decision_mask(a, m).tolist() == [expected_mask]
    assert first_rejection(a, m).tolist() == [expected_first]
    assert accepted_mismatches(a, m).tolist() == [expected_accepted]


def test_masks_vectorised_equal_a_python_loop():
    """Every 0/1 pattern of length 4 for mismatch and decisions (256 rows) against a plain loop."""
    rows = list(itertools.product(itertools.product([0, 1], repeat=4), repeat=2))
    m = T([r[0] for r in rows])
    a = T([r[1] for r in rows])
    mask, first, acc = decision_mask(a, m), first_rejection(a, m), accepted_mismatches(a, m)
    for i, (mi, ai) in enumerate(rows):
        j = next((k for k in range(4) if mi[k] and not ai[k]), 4)
        assert first[i].item() == j
        assert mask[i].tolist() == [int(mi[k] and k <= j) for k in range(4)]
        assert acc[i].item() == sum(1 for k in range(min(j, 4)) if mi[k] and ai[k])


# ----------------------------------------------------------------------------------------------- hybrid prefix


def test_hybrid_prefix_takes_drafts_before_the_rejection_then_the_target_token():
    c, d, t = [100, 101], [1, 2, 3, 4], [1, 9, 3, 8]
    # j = 1 (0-based; d_2 in the 1-based notation): c + d[:1] + t[1] = [100, 101, 1, 9]
    assert hybrid_prefix_ids(c, d, t, 1) == [100, 101, 1, 9]
    # j = 3: c + [1, 2, 3] + t[3] = [100, 101, 1, 2, 3, 8]
    assert hybrid_prefix_ids(c, d, t, 3) == [100, 101, 1, 2, 3, 8]
    # j = 0: the first draft token is already replaced by the target's: c + [1]
    assert hybrid_prefix_ids(c, d, t, 0) == [100, 101, 1]
    # no rejection (j = K = 4): the whole draft
    assert hybrid_prefix_ids(c, d, t, 4) == [100, 101, 1, 2, 3, 4]


def test_hybrid_prefix_from_sampled_decisions():
    c, d, t = [7], [1, 2, 3], [1, 5, 6]
    m = mismatch_mask(T([d]), T([t]))  # [0, 1, 1]
    a = T([[1, 1, 0]])  # accept the mismatch at 1, reject at 2
    j = int(first_rejection(a, m)[0])  # 2
    assert hybrid_prefix_ids(c, d, t, j) == [7, 1, 2, 6]  # c + d[:2] + t[2]


def test_hybrid_prefix_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        hybrid_prefix_ids([1], [1, 2], [1], 0)
    with pytest.raises(ValueError, match=">= 0"):
        hybrid_prefix_ids([1], [1], [1], -1)


# ----------------------------------------------------------------------------------------------- rewards


@pytest.mark.parametrize(
    "correct, accepted, k, alpha, beta, expected, case",
    [
        (True, 2, 8, 1.0, 1.0, 1.25, "A"),  # 1 + 1.0 * 2/8 = 1.25
        (True, 3, 4, 0.5, 1.0, 1.375, "A"),  # 1 + 0.5 * 3/4 = 1.375
        (True, 0, 8, 1.0, 1.0, 1.0, "B"),  # plain speculative decoding
        (True, 0, 8, 3.0, 2.0, 1.0, "B"),  # alpha/beta do not touch B
        (False, 1, 8, 1.0, 1.0, -1.0, "C"),  # -beta
        (False, 5, 8, 1.0, 2.5, -2.5, "C"),  # -beta, whatever the count
        (False, 0, 8, 1.0, 1.0, 0.0, "D"),
        (False, 0, 8, 4.0, 4.0, 0.0, "D"),
    ],
)
def test_reward_table_every_case(correct, accepted, k, alpha, beta, expected, case):
    reward = compute_reward_tensor(T([correct]), T([accepted]), T([k]), alpha=alpha, beta=beta)
    assert reward.dtype == torch.float32
    assert reward.tolist() == pytest.approx([expected])
    assert scenario(correct, accepted) == case


def test_reward_batch_with_defaults_and_scalar_k():
    correct = T([True, True, False, False])
    accepted = T([4, 0, 1, 0])
    # defaults alpha = beta = 1, K = 8 for all: A 1 + 4/8 = 1.5, B 1, C -1, D 0
    assert compute_reward_tensor(correct, accepted, 8).tolist() == [1.5, 1.0, -1.0, 0.0]
    assert scenario_counts(correct, accepted) == {"A": 1, "B": 1, "C": 1, "D": 1}
    assert (spd_scorer.DEFAULT_ALPHA, spd_scorer.DEFAULT_BETA) == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------- ScoringActor


def test_accept_logits_shift_and_zero_reject_column():
    s = T([[0.5, -1.0, 2.0]])
    logits = accept_logits(s)
    # position t holds s_{t+1}: [s1, s2, 0] = [-1, 2, 0]; reject column is 0
    assert logits[0, :, 1].tolist() == [-1.0, 2.0, 0.0]
    assert logits[0, :, 0].tolist() == [0.0, 0.0, 0.0]
    # log_softmax([0, s]) = (log(1 - sigmoid(s)), log sigmoid(s)); for s = 2: log sigmoid(2) = -0.126928
    lp = torch.log_softmax(logits, -1)
    assert lp[0, 1, 1].item() == pytest.approx(math.log(1 / (1 + math.exp(-2.0))), abs=1e-6)
    assert lp[0, 1, 0].item() == pytest.approx(math.log(1 - 1 / (1 + math.exp(-2.0))), abs=1e-6)


@pytest.fixture(scope="module")
def scorer_dir(tiny_model_dir, tmp_path_factory):
    return str(build_scorer_dir(tiny_model_dir, tmp_path_factory.mktemp("scorer"), seed=0))


def test_scorer_round_trips_through_auto_model_for_causal_lm(scorer_dir, tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    assert AutoConfig.from_pretrained(scorer_dir).model_type == "spd_scoring_actor"
    loaded = AutoModelForCausalLM.from_pretrained(scorer_dir)
    assert isinstance(loaded, ScoringActor)
    fresh = ScoringActor.from_backbone(tiny_model_dir, seed=0)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    # the body is the backbone's transformer, weight for weight; the head is the only new part
    backbone = AutoModel.from_pretrained(tiny_model_dir)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, atol=0, rtol=0)
    assert loaded.score.weight.abs().sum() > 0
    # save -> load again keeps a changed head
    with torch.no_grad():
        loaded.score.bias.fill_(0.75)
    loaded.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert again.score.bias.item() == pytest.approx(0.75)
    assert (
        AutoTokenizer.from_pretrained(scorer_dir).get_vocab()
        == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()
    )


def test_forward_matches_the_dp_actor_calling_convention(scorer_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(scorer_dir).eval()
    ids = T([[3, 3, 40, 41, 42, 43]])
    mask = T([[0, 0, 1, 1, 1, 1]])
    pos = torch.clamp(mask.cumsum(-1) - 1, min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    assert out.logits.shape == (1, 6, 2)
    assert out.logits[..., 0].abs().sum() == 0 and out.logits[0, -1, 1] == 0
    # logits[:, t] = the head on the hidden state at t + 1
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        s = model.score(hidden)[..., 0]
    torch.testing.assert_close(out.logits[0, :-1, 1], s[0, 1:])
    torch.testing.assert_close(model.accept_probs(ids, mask, pos)[0, 1:], torch.sigmoid(s[0, 1:]))


def test_build_causal_lm_builds_the_scorer(scorer_dir):
    from verl.utils.hf_models import build_causal_lm
    from verl.utils.import_utils import import_external_libs

    import_external_libs("spd_scorer", "actor_rollout_ref.model.external_lib")
    model = build_causal_lm(scorer_dir, dtype="fp32", override_config={"attn_implementation": "eager"})
    assert isinstance(model, ScoringActor)
    assert model.model.config._attn_implementation == "eager"
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = T([[40, 41, 42]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=T([[0, 1, 2]]), use_cache=False)
    out.logits[..., 1].sum().backward()
    assert model.score.weight.grad is not None and model.model.embed_tokens.weight.grad is not None


def test_cli_writes_a_loadable_scorer_dir(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    spd_scorer.main(["--init_from", tiny_model_dir, "--out", str(tmp_path / "s"), "--seed", "3"])
    assert isinstance(AutoModelForCausalLM.from_pretrained(str(tmp_path / "s")), ScoringActor)
