r"""Reward for the NuminaMath sources (``numina_*`` data sources, as in PRIME's Eurus-2 RL data).

Upstream verl scores these with PRIME's own grader (sympy-based, with a process pool and timeouts). This
package maps them onto this project's MATH equivalence instead
(:func:`verl.utils.reward_score.math_reward.is_equiv`): string normalisation plus numeric comparison, no CAS.
Answers that are only symbolically equal (``2\sqrt{2}`` vs ``\sqrt{8}``) therefore score as wrong here.
"""

from __future__ import annotations

import re

from verl.utils.reward_score.math_reward import extract_boxed_answer, is_equiv

__all__ = ["compute_score", "match_answer"]

_ANSWER_IS = re.compile(r"(?i)(?:final answer|the answer) is[:\s]*\$?([^\n$]+)\$?")


def match_answer(model_output: str) -> tuple[bool, str | None]:
    r"""Find the answer in ``model_output``: the last ``\boxed{}``, else the last "the answer is ..." phrase.

    Returns:
        ``(found, answer)``; ``answer`` is None when nothing was found.

    Example:
        >>> match_answer("so $\\boxed{12}$")
        (True, '12')
        >>> match_answer("The answer is 7.")
        (True, '7')
    """
    boxed = extract_boxed_answer(model_output)
    if boxed is not None:
        return True, boxed
    phrases = _ANSWER_IS.findall(model_output)
    if phrases:
        return True, phrases[-1].strip().rstrip(".").strip()
    return False, None


def compute_score(model_output: str, ground_truth: str, timeout_score: float = 0) -> tuple[bool, bool, str | None]:
    r"""Grade one NuminaMath completion.

    Args:
        model_output: model completion.
        ground_truth: reference answer (a boxed reference is unboxed first).
        timeout_score: accepted for signature compatibility (nothing here can time out).

    Returns:
        ``(is_correct, format_correct, extracted_answer)``; ``default_compute_score`` turns it into
        ``float(is_correct)``.

    Example:
        >>> compute_score("hence $\\boxed{\\frac{1}{2}}$", "0.5")
        (True, True, '\\frac{1}{2}')
    """
    del timeout_score
    found, answer = match_answer(model_output)
    if not found:
        return False, False, None
    reference = str(ground_truth)
    reference = extract_boxed_answer(reference) or reference
    return bool(is_equiv(answer, reference)), True, answer
