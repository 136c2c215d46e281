r"""DAPO-style math reward: the answer follows ``Answer:`` on its own line; correct = +1, wrong = -1.

DAPO prompts ask for ``Answer: $Answer`` as the last line. The last ``Answer:`` line within the final 300
characters is taken, trailing unit words are dropped, and equivalence is decided by
:func:`verl.utils.reward_score.math_reward.is_equiv`. With ``strict_box_verify=True`` the last ``\boxed{}``
is used instead. The result is a dict, so reward managers log ``acc`` and ``pred`` next to ``score``.
"""

from __future__ import annotations

import re
from typing import Any

from verl.utils.reward_score.math_reward import extract_boxed_answer, is_equiv

__all__ = ["compute_score", "extract_answer", "normalize_final_answer"]

_CLIP_CHARS = 300
_ANSWER_LINE = re.compile(r"(?i)answer\s*:\s*([^\n]+)")
# Words that trail a number in free-text answers ("12 dollars", "5 ways") and carry no value.
_UNIT_WORDS = (
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "pounds",
    "meters",
    "students",
)
_UNIT_PATTERN = re.compile(r"\s*\b(?:" + "|".join(_UNIT_WORDS) + r")\b\.?\s*$", re.IGNORECASE)


def normalize_final_answer(answer: str) -> str:
    r"""Strip trailing unit words, surrounding ``$`` and a final full stop from a free-text answer.

    Example:
        >>> normalize_final_answer("$12$ dollars.")
        '12'
    """
    text = answer.strip()
    boxed = extract_boxed_answer(text)
    if boxed is not None:
        text = boxed
    for _ in range(2):  # "12 square units" needs two passes
        text = _UNIT_PATTERN.sub("", text).strip()
    text = text.rstrip(".").strip()
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text.strip("$").strip()
    return text


def extract_answer(solution_str: str, strict_box_verify: bool = False) -> str | None:
    r"""The predicted answer: the last ``Answer:`` line (or the last ``\boxed{}`` when strict), or None.

    Example:
        >>> extract_answer("work...\nAnswer: 17")
        '17'
    """
    tail = solution_str[-_CLIP_CHARS:]
    if strict_box_verify:
        return extract_boxed_answer(tail)
    lines = _ANSWER_LINE.findall(tail)
    return normalize_final_answer(lines[-1]) if lines else None


def compute_score(
    solution_str: str,
    ground_truth: str,
    strict_box_verify: bool = False,
    pause_tokens_index: list[int] | None = None,
) -> dict[str, Any]:
    r"""Score a DAPO completion.

    Args:
        solution_str: model completion.
        ground_truth: reference answer.
        strict_box_verify: read the answer from the last ``\boxed{}`` instead of the ``Answer:`` line.
        pause_tokens_index: accepted for signature compatibility; unused.

    Returns:
        ``{"score": 1.0 | -1.0, "acc": bool, "pred": str}``; ``pred`` is ``"[INVALID]"`` when no answer was found.

    Example:
        >>> compute_score("so x = 4.\nAnswer: 4", "4")
        {'score': 1.0, 'acc': True, 'pred': '4'}
        >>> compute_score("no idea", "4")["score"]
        -1.0
    """
    del pause_tokens_index
    pred = extract_answer(solution_str, strict_box_verify=strict_box_verify)
    correct = pred is not None and is_equiv(pred, normalize_final_answer(str(ground_truth)))
    return {"score": 1.0 if correct else -1.0, "acc": bool(correct), "pred": pred if pred is not None else "[INVALID]"}
