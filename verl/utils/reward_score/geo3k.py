r"""Geometry3K reward: a format bonus for ``<think>...</think>`` followed by a ``\boxed{}`` answer, plus accuracy.

``score = (1 - format_score) * accuracy + format_score * format_ok``; accuracy uses this project's MATH
equivalence (:func:`verl.utils.reward_score.math_reward.is_equiv`).
"""

from __future__ import annotations

import re

from verl.utils.reward_score.math_reward import extract_boxed_answer, is_equiv

__all__ = ["acc_reward", "compute_score", "format_reward"]

_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def format_reward(predict_str: str) -> float:
    r"""1.0 when the completion reasons inside ``<think>`` tags and then gives a ``\boxed{}`` answer."""
    return 1.0 if _FORMAT.fullmatch(predict_str.strip()) else 0.0


def acc_reward(predict_str: str, ground_truth: str, use_boxed: bool = True) -> float:
    r"""1.0 when the boxed answer (or the whole string when ``use_boxed`` is False) matches ``ground_truth``."""
    answer = extract_boxed_answer(predict_str) if use_boxed else predict_str.strip()
    return 1.0 if answer is not None and is_equiv(answer, str(ground_truth)) else 0.0


def compute_score(predict_str: str, ground_truth: str, use_boxed: bool = True, format_score: float = 0.1) -> float:
    r"""Blend accuracy and format.

    Example:
        >>> compute_score("<think>angles sum</think> so $\\boxed{30}$", "30")
        1.0
        >>> round(compute_score("<think>hm</think> \\boxed{31}", "30"), 3)
        0.1
        >>> round(compute_score("\\boxed{30}", "30"), 3)
        0.9
    """
    accuracy = acc_reward(predict_str, ground_truth, use_boxed=use_boxed)
    return (1.0 - format_score) * accuracy + format_score * format_reward(predict_str)
