"""Search-R1 exact-match QA reward."""

from __future__ import annotations

import numpy as np
import pytest

from verl.utils.reward_score import search_r1_like_qa_em as qa_em


@pytest.mark.parametrize(
    "completion, truth, score",
    [
        ("<answer>Paris</answer>", {"target": ["Paris"]}, 1.0),
        ("<answer> the paris! </answer>", {"target": ["Paris"]}, 1.0),  # case, article, punctuation
        ("<answer>Lyon</answer>", {"target": ["Paris", "Lyon"]}, 1.0),  # any target
        ("<answer>Paris</answer>", {"target": np.array(["Paris"], dtype=object)}, 1.0),  # parquet arrays
        ("<answer>Paris</answer>", {"target": "Paris"}, 1.0),  # a single string target
        ("<answer>x</answer> ... <answer>Paris</answer>", {"target": ["Paris"]}, 1.0),  # last span
        ("<answer>Paris, France</answer>", {"target": ["Paris"]}, 0.0),  # exact, not substring
        ("Paris", {"target": ["Paris"]}, 0.0),  # no answer span
    ],
)
def test_exact_match_table(completion, truth, score):
    assert qa_em.compute_score(completion, truth) == score


def test_wrong_answer_gets_format_score_and_subem_matches_substrings():
    assert qa_em.compute_score("<answer>Rome</answer>", {"target": ["Paris"]}, format_score=0.2) == 0.2
    assert qa_em.compute_score_subem("<answer>Paris, France</answer>", {"target": ["Paris"]}) == 1.0
