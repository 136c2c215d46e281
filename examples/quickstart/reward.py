"""Reward of the quick start task, loaded with ``custom_reward_function.path=examples/quickstart/reward.py``.

>>> compute_score("quickstart/repeat_digit", "7 7 7 cat", "7")
0.75
>>> compute_score("quickstart/repeat_digit", "", "7")
0.0
"""

from __future__ import annotations


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None) -> float:
    """Fraction of whitespace-separated words in the response that equal the target digit."""
    words = solution_str.split()
    if not words:
        return 0.0
    return sum(word == ground_truth for word in words) / len(words)
