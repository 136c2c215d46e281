"""GSM8K rule reward: answer extraction and scoring, as (completion, truth, score) tables."""

from __future__ import annotations

import pytest

from verl.utils.reward_score import gsm8k


@pytest.mark.parametrize(
    "completion, truth, score",
    [
        ("3 + 4 = 7\n#### 7", "7", 1.0),
        ("#### 1,000", "1000", 1.0),  # thousands separator removed
        ("#### -3", "-3", 1.0),
        ("#### 5 then later #### 6", "6", 1.0),  # the last marker wins
        ("#### 5 then later #### 6", "5", 0.0),
        ("#### 7.0", "7", 0.0),  # exact string match, no numeric equivalence
        ("the answer is 7", "7", 0.0),  # strict mode needs the marker
        ("####7", "7", 0.0),  # marker needs the space
        ("#### " + "7" + " filler" * 60, "7", 0.0),  # marker outside the last 300 characters
        ("", "7", 0.0),
    ],
)
def test_strict_score_table(completion, truth, score):
    assert gsm8k.compute_score(completion, truth) == score


@pytest.mark.parametrize(
    "completion, truth, score",
    [
        ("so it is 12 apples, total 15", "15", 1.0),  # last number
        ("it costs $1,200", "1,200", 1.0),  # flexible keeps separators verbatim
        ("total 15.", "15", 0.5),  # "15." != "15": format_score
        ("no digits here", "15", 0.0),
    ],
)
def test_flexible_score_table(completion, truth, score):
    assert gsm8k.compute_score(completion, truth, method="flexible", format_score=0.5) == score


def test_wrong_answer_gets_format_score_and_right_answer_gets_score():
    assert gsm8k.compute_score("#### 8", "7", format_score=0.1, score=2.0) == 0.1
    assert gsm8k.compute_score("#### 7", "7", format_score=0.1, score=2.0) == 2.0


def test_extract_solution_returns_none_without_answer_and_rejects_unknown_method():
    assert gsm8k.extract_solution("nothing") is None
    with pytest.raises(ValueError, match="method"):
        gsm8k.extract_solution("#### 1", method="fuzzy")
