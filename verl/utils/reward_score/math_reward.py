r"""MATH-style reward: take the last ``\boxed{...}`` of a completion and compare it with the reference answer.

Equivalence is decided in two steps. Both answers are first normalised as strings (LaTeX spacing and sizing
commands, ``\text{}`` wrappers, units after ``\text{ ``, degree and percent signs, dollar signs, ``x =``
prefixes, ``\frac12`` / ``\sqrt3`` shorthand, ``a/b`` fractions and ``dfrac``/``tfrac`` are all unified);
equal strings are equivalent. Otherwise, when both sides read as plain numbers (integers, decimals,
thousands separators, simple ``\frac{a}{b}``), their values are compared. Symbolic equivalence
(``2\sqrt{2}`` vs ``\sqrt{8}``) is deliberately out of scope: it needs a CAS.

This module also backs ``math_dapo``, ``prime_math`` and ``geo3k``, so there is one notion of "same answer".
"""

from __future__ import annotations

import math
import re

__all__ = ["compute_score", "extract_boxed_answer", "is_equiv", "last_boxed_only_string", "normalize_answer"]

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed_only_string(text: str) -> str | None:
    r"""Return the last ``\boxed{...}`` (or ``\fbox{...}``, or ``\boxed x``) including the command, or None.

    Braces are matched, so nested groups such as ``\boxed{\frac{1}{2}}`` come back whole.
    """
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(cmd for cmd in _BOX_COMMANDS if text.startswith(cmd, start))
    after = start + len(command)
    if text.startswith(" ", after):
        # "\boxed 5$" form: the argument runs to the next dollar sign.
        return command + " " + text[after + 1 :].split("$")[0].strip()
    depth = 0
    for pos in range(after, len(text)):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : pos + 1]
        elif depth == 0 and not char.isspace():
            return None  # "\boxed" not followed by a group
    return None


def _remove_box_command(boxed: str) -> str | None:
    for cmd in _BOX_COMMANDS:
        if boxed.startswith(cmd + " "):
            return boxed[len(cmd) + 1 :]
        if boxed.startswith(cmd + "{") and boxed.endswith("}"):
            return boxed[len(cmd) + 1 : -1]
    return None


def extract_boxed_answer(text: str) -> str | None:
    r"""Return the content of the last boxed expression in ``text``, or None.

    Example:
        >>> extract_boxed_answer("so the area is $\\boxed{\\frac{1}{2}}$.")
        '\\frac{1}{2}'
    """
    boxed = last_boxed_only_string(text)
    return None if boxed is None else _remove_box_command(boxed)


def _strip_units(text: str) -> str:
    # "5 \text{ cm}" - a \text group that starts with a space is a unit by MATH convention.
    if "\\text{ " in text:
        head = text.split("\\text{ ")[0]
        if head.strip():
            return head
    return text


def _fix_fracs(text: str) -> str:
    text = re.sub(r"\\frac([0-9a-zA-Z])([0-9a-zA-Z])", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac([0-9a-zA-Z])\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac(\{[^{}]*\})([0-9a-zA-Z])", r"\\frac\1{\2}", text)


def normalize_answer(answer: str) -> str:
    r"""Normalise a MATH answer string so that notational variants compare equal.

    Example:
        >>> normalize_answer("\\dfrac12")
        '\\frac{1}{2}'
        >>> normalize_answer("x = 10^{\\circ}")
        '10'
        >>> normalize_answer("\\$5.50")
        '5.50'
    """
    text = str(answer).strip().replace("\n", "")
    for old, new in (("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"), ("\\left", "")):
        text = text.replace(old, new)
    for token in ("\\right", "^{\\circ}", "^\\circ", "°", "\\$", "$", "\\,", "\\;", "\\:", "\\ "):
        text = text.replace(token, "")
    text = _strip_units(text)
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    if text.count("=") == 1:
        lhs, rhs = text.split("=")
        if len(lhs.strip()) <= 2:  # "x = 3", "k=3": drop a short variable name
            text = rhs
    text = re.sub(r"\\sqrt([0-9a-zA-Z])", r"\\sqrt{\1}", text)
    text = text.replace(" ", "")
    text = _fix_fracs(text)
    slash = re.fullmatch(r"(-?\d+)/(\d+)", text)
    if slash:
        text = f"\\frac{{{slash.group(1)}}}{{{slash.group(2)}}}"
    if text.endswith(".") and text[:-1].replace(".", "").isdigit():
        text = text[:-1]  # a sentence-final full stop, "5." -> "5"
    return text


_PLAIN_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)(e-?\d+)?")
_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_SIMPLE_FRAC = re.compile(r"(-?)\\frac\{(-?\d+\.?\d*)\}\{(-?\d+\.?\d*)\}")


def _as_number(text: str) -> float | None:
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)
    frac = _SIMPLE_FRAC.fullmatch(text)
    if frac and float(frac.group(3)) != 0:
        value = float(frac.group(2)) / float(frac.group(3))
        return -value if frac.group(1) else value
    return None


def is_equiv(answer: str | None, reference: str | None) -> bool:
    r"""True when ``answer`` and ``reference`` are the same MATH answer (see the module docstring).

    Example:
        >>> is_equiv("0.5", "\\frac{1}{2}"), is_equiv("1,000", "1000"), is_equiv("3", "4")
        (True, True, False)
    """
    if answer is None or reference is None:
        return answer is None and reference is None
    left, right = normalize_answer(answer), normalize_answer(reference)
    if left == right:
        return True
    left_value, right_value = _as_number(left), _as_number(right)
    if left_value is None or right_value is None:
        return False
    return math.isclose(left_value, right_value, rel_tol=1e-9, abs_tol=1e-9)


def compute_score(solution_str: str, ground_truth: str) -> float:
    r"""1.0 when the last boxed answer of ``solution_str`` is equivalent to ``ground_truth``, else 0.0.

    A ground truth that is itself boxed is unboxed first.

    Example:
        >>> compute_score("The answer is $\\boxed{\\dfrac{3}{4}}$", "\\frac34")
        1.0
        >>> compute_score("The answer is 3/4", "\\frac34")
        0.0
    """
    answer = extract_boxed_answer(solution_str)
    if answer is None:
        return 0.0
    reference = str(ground_truth)
    if last_boxed_only_string(reference) is not None:
        reference = extract_boxed_answer(reference) or reference
    return 1.0 if is_equiv(answer, reference) else 0.0
