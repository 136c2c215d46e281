"""Reward of the multi-turn dialogue example: the interaction's mean per-turn score.

The interaction (``MultiTurnDialogInteraction``) already scored every assistant turn with exact match blended with
the policy's probability of the correct label; the rollout hands those scores to the reward manager as
``extra_info["rollout_reward_scores"] = {"dialog": [turn scores]}``.

    >>> compute_score("multiturn_nd", "yes", "yes,no", {"rollout_reward_scores": {"dialog": [1.0, 0.25]}})
    0.625
"""

from __future__ import annotations


def compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float:
    scores = ((extra_info or {}).get("rollout_reward_scores") or {}).get("dialog") or []
    return float(sum(scores) / len(scores)) if scores else 0.0
