"""MATH boxed-answer reward, DAPO's Answer: reward, NuminaMath and Geometry3K on top of the same equivalence."""

from __future__ import annotations

import pytest

from verl.utils.reward_score import geo3k, math_dapo, math_reward, prime_math


@pytest.mark.parametrize(
    "completion, truth, score",
    [
        (r"so $\boxed{5}$", "5", 1.0),
        (r"$\boxed{\frac{1}{2}}$", "0.5", 1.0),  # numeric equivalence
        (r"$\boxed{\dfrac12}$", r"\frac{1}{2}", 1.0),  # dfrac + shorthand
        (r"$\boxed{1/2}$", r"\frac{1}{2}", 1.0),  # slash fraction
        (r"\boxed{1,000}", "1000", 1.0),  # thousands separator
        (r"\boxed{x = 3}", "3", 1.0),  # short variable prefix dropped
        (r"\boxed{90^\circ}", "90", 1.0),  # degrees
        (r"\boxed{50\%}", "50", 1.0),  # percent
        (r"\boxed{5 \text{ cm}}", "5", 1.0),  # unit after \text{ }
        (r"\boxed{\text{Monday}}", "Monday", 1.0),
        (r"\boxed{\left( 1, 2 \right)}", "(1,2)", 1.0),  # sizing commands and spaces
        (r"\boxed{2\sqrt3}", r"2\sqrt{3}", 1.0),
        (r"\boxed 7$", "7", 1.0),  # "\boxed 7" form
        (r"\fbox{7}", "7", 1.0),
        (r"first \boxed{3}, finally \boxed{4}", "4", 1.0),  # the last box wins
        (r"first \boxed{3}, finally \boxed{4}", "3", 0.0),
        (r"\boxed{0.333}", r"\frac{1}{3}", 0.0),  # close is not equal
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 0.0),  # symbolic equivalence is out of scope
        ("the answer is 5", "5", 0.0),  # no box
        (r"\boxed{5", "5", 0.0),  # unbalanced braces
        (r"$\boxed{5}$", r"\boxed{5}", 1.0),  # a boxed reference is unboxed
    ],
)
def test_math_score_table(completion, truth, score):
    assert math_reward.compute_score(completion, truth) == score


def test_last_boxed_only_string_keeps_nested_braces():
    assert math_reward.last_boxed_only_string(r"x \boxed{\frac{a}{b}} y") == r"\boxed{\frac{a}{b}}"
    assert math_reward.last_boxed_only_string("no box") is None


@pytest.mark.parametrize(
    "completion, truth, score, pred",
    [
        ("work\nAnswer: 42", "42", 1.0, "42"),
        ("Answer: 41\nthen Answer: 42", "42", 1.0, "42"),  # last Answer: line
        ("answer: $12$ dollars", "12", 1.0, "12"),  # unit word and dollars stripped
        (r"Answer: \boxed{\frac{1}{2}}", "0.5", 1.0, r"\frac{1}{2}"),
        ("Answer: 41", "42", -1.0, "41"),
        ("I cannot tell", "42", -1.0, "[INVALID]"),
    ],
)
def test_dapo_score_table(completion, truth, score, pred):
    result = math_dapo.compute_score(completion, truth)
    assert result == {"score": score, "acc": score > 0, "pred": pred}


def test_dapo_strict_box_verify_reads_the_box():
    assert math_dapo.compute_score(r"Answer: 3 so \boxed{4}", "4", strict_box_verify=True)["acc"] is True
    assert math_dapo.compute_score("Answer: 4", "4", strict_box_verify=True)["acc"] is False


@pytest.mark.parametrize(
    "completion, truth, expected",
    [
        (r"hence $\boxed{12}$", "12", (True, True, "12")),
        ("The answer is 7.", "7", (True, True, "7")),
        ("The final answer is $\\frac{3}{4}$", "0.75", (True, True, r"\frac{3}{4}")),
        (r"\boxed{5}", r"\boxed{6}", (False, True, "5")),
        ("no answer", "5", (False, False, None)),
    ],
)
def test_prime_math_table(completion, truth, expected):
    assert prime_math.compute_score(completion, truth) == expected


@pytest.mark.parametrize(
    "completion, truth, score",
    [
        (r"<think>sum of angles</think> so \boxed{30}", "30", 1.0),  # accuracy 0.9 + format 0.1
        (r"<think>hm</think> \boxed{31}", "30", 0.1),  # format only
        (r"\boxed{30}", "30", 0.9),  # accuracy only
        ("30", "30", 0.0),
    ],
)
def test_geo3k_table(completion, truth, score):
    assert geo3k.compute_score(completion, truth) == pytest.approx(score)
