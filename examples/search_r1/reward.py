"""Reward of the Search-R1 example: exact match of the last ``<answer>...</answer>`` (verl's ``qa_em``)."""

from __future__ import annotations

from verl.utils.reward_score import search_r1_like_qa_em


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: dict | None = None) -> float:
    return search_r1_like_qa_em.compute_score(solution_str, ground_truth)
