"""Exact-match QA reward for Search-R1 style agents: the answer is the last ``<answer>...</answer>`` span.

Answers and gold targets are normalised SQuAD-style (lower case, punctuation and the articles a/an/the removed,
whitespace collapsed) before comparison. ``ground_truth`` is ``{"target": str | list[str]}``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Any

__all__ = ["compute_score", "compute_score_subem", "em_check", "extract_solution", "normalize_answer", "subem_check"]

_ANSWER_SPAN = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace.

    Example:
        >>> normalize_answer("The  Eiffel Tower!")
        'eiffel tower'
    """
    text = str(text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _targets(golden_answers: Any) -> list[str]:
    if isinstance(golden_answers, dict):
        golden_answers = golden_answers.get("target", [])
    if isinstance(golden_answers, str):
        return [golden_answers]
    if isinstance(golden_answers, Iterable):
        return [str(answer) for answer in golden_answers]
    return [str(golden_answers)]


def em_check(prediction: str, golden_answers: Any) -> bool:
    """True when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(gold) for gold in _targets(golden_answers))


def subem_check(prediction: str, golden_answers: Any) -> bool:
    """True when any normalised gold answer occurs inside the normalised prediction."""
    pred = normalize_answer(prediction)
    return any(normalize_answer(gold) in pred for gold in _targets(golden_answers))


def extract_solution(solution_str: str) -> str | None:
    """The stripped content of the last ``<answer>`` span, or None.

    Example:
        >>> extract_solution("<search>q</search><answer> Paris </answer>")
        'Paris'
    """
    spans = _ANSWER_SPAN.findall(solution_str)
    return spans[-1].strip() if spans else None


def _score(check, solution_str: str, ground_truth: Any, format_score: float, score: float) -> float:
    answer = extract_solution(solution_str)
    if answer is None:
        return 0.0
    return float(score) if check(answer, ground_truth) else float(format_score)


def compute_score(
    solution_str: str, ground_truth: Any, method: str = "strict", format_score: float = 0.0, score: float = 1.0
) -> float:
    """Exact match: 0 without an answer span, ``score`` on a match, else ``format_score``.

    Example:
        >>> compute_score("<answer>the Paris</answer>", {"target": ["Paris", "paris, france"]})
        1.0
        >>> compute_score("Paris", {"target": ["Paris"]})
        0.0
    """
    del method
    return _score(em_check, solution_str, ground_truth, format_score, score)


def compute_score_subem(
    solution_str: str, ground_truth: Any, method: str = "strict", format_score: float = 0.0, score: float = 1.0
) -> float:
    """Substring match variant of :func:`compute_score`."""
    del method
    return _score(subem_check, solution_str, ground_truth, format_score, score)
