"""GSM8K reward: the final answer follows ``####`` (the format the GSM8K reference solutions use).

Only the last 300 characters of a completion are searched, which keeps the regex cheap on long, rambling
completions and ignores numbers quoted early in the reasoning.
"""

from __future__ import annotations

import re

__all__ = ["compute_score", "extract_solution"]

_CLIP_CHARS = 300
_STRICT = re.compile(r"#### (-?[0-9.,]+)")
_NUMBER = re.compile(r"-?[0-9.,]+")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """Extract the final numeric answer.

    Args:
        solution_str: model completion.
        method: ``"strict"`` takes the last ``#### <number>`` and removes ``,`` and ``$``; ``"flexible"`` takes the
            last number-like token anywhere (kept verbatim, so ``"42."`` stays ``"42."``).

    Returns:
        The answer string, or ``None`` when nothing matches.

    Example:
        >>> extract_solution("so 3 + 4 = 7\\n#### 1,007")
        '1007'
        >>> extract_solution("the answer is 7", method="flexible")
        '7'
    """
    if method not in ("strict", "flexible"):
        raise ValueError(f"method={method!r} is not supported; use 'strict' or 'flexible'.")
    tail = solution_str[-_CLIP_CHARS:]
    if method == "strict":
        found = _STRICT.findall(tail)
        if not found:
            return None
        return found[-1].replace(",", "").replace("$", "")
    for candidate in reversed(_NUMBER.findall(tail)):
        if candidate not in ("", "."):
            return candidate
    return None


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """Score a GSM8K completion: 0 without an answer, ``score`` when it equals the truth, else ``format_score``.

    The comparison is an exact string match against ``ground_truth`` (GSM8K truths are plain integers).

    Example:
        >>> compute_score("... #### 72", "72")
        1.0
        >>> compute_score("... #### 71", "72", format_score=0.1)
        0.1
        >>> compute_score("I think 72", "72")
        0.0
    """
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    return float(score) if answer == str(ground_truth) else float(format_score)
