"""MultiTurnDialogInteraction: asks its questions in turn and scores exact match blended with P(correct label)."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from verl.interactions.multiturn_dialog_interaction import (
    MultiTurnDialogInteraction,
    extract_answer,
    label_probability,
)
from verl.workers.rollout.logit_capture import CaptureSpec, capture_from_logits

YES, NO, OTHER, EOS, V = 7, 8, 3, 2, 10
QUESTIONS = [{"question": "Is paper A by Ada?", "label": "yes"}, {"question": "Is paper B by Ada?", "label": "no"}]


def capture_dict(token_ids, label_logit, spec, row=0):
    """Logits 0 everywhere except ``label_logit`` on YES at ``row``: P(yes) = e^x / (e^x + V - 1) there."""
    logits = torch.zeros(len(token_ids), V)
    logits[row, YES] = label_logit
    return capture_from_logits(logits, torch.tensor(token_ids), spec).to_dict()


def chat(answer):
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]


def make(prob_weight=0.5):
    return MultiTurnDialogInteraction(
        {"name": "dialog", "prob_weight": prob_weight, "label_token_ids": {"yes": YES, "no": [NO]}}
    )


def score(inter, answer, logits):
    async def run():
        iid = await inter.start_interaction(None, questions=QUESTIONS, name="dialog")
        return await inter.generate_response(iid, chat(answer), generation_logits=logits, name="dialog")

    return asyncio.run(run())


@pytest.mark.parametrize(
    "spec",
    [CaptureSpec("logprob"), CaptureSpec("topk", k=3), CaptureSpec("token_ids", ids=(NO, YES)), CaptureSpec("full")],
    ids=lambda s: s.mode,
)
def test_score_blends_exact_match_with_the_label_probability(spec):
    # logit ln 9 on YES: P(yes) = 9 / (9 + 9) = 0.5 -> score = 0.5 * 1 + 0.5 * 0.5 = 0.75
    # logit ln 27 on YES: P(yes) = 27 / (27 + 9) = 0.75 -> score = 0.5 * 1 + 0.5 * 0.75 = 0.875
    low = score(make(), "Yes.", capture_dict([YES, EOS], math.log(9), spec))
    high = score(make(), "Yes.", capture_dict([YES, EOS], math.log(27), spec))
    assert low[2] == pytest.approx(0.75, abs=1e-5)
    assert high[2] == pytest.approx(0.875, abs=1e-5)  # same text, different probabilities -> different score
    assert low[3]["exact"] == 1.0 and low[3]["label_prob"] == pytest.approx(0.5, abs=1e-5)
    assert (low[0], low[1]) == (False, QUESTIONS[1]["question"])


def test_wrong_answer_still_earns_the_probability_it_gave_the_label():
    # Answered "no" while P(yes) = 27 / 36 = 0.75 at the answer position (token_ids mode knows every label's value).
    spec = CaptureSpec("token_ids", ids=(YES, NO))
    logits = capture_dict([NO, EOS], math.log(27), spec)
    _, _, got, extra = score(make(prob_weight=0.4), "no", logits)
    assert extra["exact"] == 0.0
    assert got == pytest.approx(0.4 * 0.75, abs=1e-5)


def test_logprob_mode_counts_only_a_sampled_correct_label():
    # The model sampled "no"; in logprob mode P(yes) is unknown, so the probability term is 0 (a lower bound).
    logits = capture_dict([NO, EOS], math.log(27), CaptureSpec("logprob"))
    assert score(make(), "no", logits)[2] == 0.0


def test_answer_position_is_the_first_label_token():
    # "I think yes": YES is generated at index 2, where the logits put P(yes) = 0.75; index 0 has P(yes) = 0.1.
    spec = CaptureSpec("full")
    capture = capture_dict([OTHER, OTHER, YES, EOS], math.log(27), spec, row=2)
    assert label_probability(capture, [YES], {YES, NO}) == pytest.approx(0.75, abs=1e-5)
    assert label_probability(capture_dict([OTHER, EOS], 0.0, spec), [YES], {YES, NO}) == pytest.approx(0.1)


def test_dialog_asks_each_question_then_ends_and_averages():
    async def run():
        inter = make(prob_weight=0.0)
        iid = await inter.start_interaction("i", questions=QUESTIONS)
        first = await inter.generate_response(iid, chat("yes"), generation_logits=None)
        second = await inter.generate_response(iid, chat("yes"), generation_logits=None)
        return first, second, await inter.calculate_score(iid)

    first, second, final = asyncio.run(run())
    assert first[:3] == (False, "Is paper B by Ada?", 1.0)
    assert second[:3] == (True, "Thank you.", 0.0)  # label of question 2 is "no"
    assert final == 0.5


def test_without_logits_the_score_is_exact_match():
    assert score(make(prob_weight=0.9), "yes", None)[2] == 1.0


def test_bad_kwargs_and_config_raise_before_generation(tiny_model_dir):
    with pytest.raises(ValueError, match="prob_weight=1.5"):
        MultiTurnDialogInteraction({"prob_weight": 1.5})
    inter = MultiTurnDialogInteraction({"name": "d", "label_token_ids": {"yes": YES}})
    with pytest.raises(ValueError, match="label 'no' has no entry in config label_token_ids"):
        asyncio.run(inter.start_interaction(None, questions=QUESTIONS))
    with pytest.raises(ValueError, match="must be a non-empty list"):
        asyncio.run(inter.start_interaction(None, questions=[]))
    # With a tokenizer the label's first token is found, with and without a leading space.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    by_tok = MultiTurnDialogInteraction({"tokenizer_path": tiny_model_dir})
    asyncio.run(by_tok.start_interaction(None, questions=QUESTIONS))
    assert by_tok.label_token_ids["yes"] == sorted({tok.encode("yes")[0], tok.encode(" yes")[0]})


@pytest.mark.parametrize("text, want", [(" Yes, it does.", "yes"), ("no", "no"), ("", ""), ("NO!", "no")])
def test_extract_answer(text, want):
    assert extract_answer(text) == want
