"""Code rewards judged by SandboxFusion (or our embedded sandbox): the fraction of test cases a completion passes.

``compute_score`` is what :func:`verl.utils.reward_score.default_compute_score` calls for the code data sources.
The program is the last ```` ```python ```` block of the completion (else its first fenced block); each test case
is one ``/run_code`` request, judged as described in :mod:`.utils`.

``test_cases`` (the sample's ``reward_model.ground_truth``), a dict or its JSON string, is one of:

* ``{"inputs": [stdin, ...], "outputs": [stdout, ...]}``: stdin/stdout cases;
* the same plus ``"fn_name": "f"``: each input is the argument list of ``f`` (or ``Solution().f``);
* ``{"assert_case": [code, ...]}``: each piece of code is appended to the program, which must exit 0.

With ``sandbox_fusion_url=None`` one embedded sandbox is started for the process on first use and stopped at exit
(:func:`.utils.resolve_sandbox_url`).

Example (needs a running sandbox)::

    >>> score, meta = compute_score(None, None, 1024, "```python\\nprint(int(input()) * 2)\\n```",
    ...                             {"inputs": ["2\\n", "5\\n"], "outputs": ["4\\n", "11\\n"]})
    >>> score, [m["status"] for m in meta]
    (0.5, ['success', 'wrong_answer'])
"""

from __future__ import annotations

import json
from typing import Any

from verl.utils.reward_score.sandbox_fusion.utils import DEFAULT_TIMEOUT, check_correctness, extract_code

__all__ = ["CONTINUOUS_MAX_CASES", "compute_score", "parse_test_cases", "run_test_cases"]

CONTINUOUS_MAX_CASES = 10  # with continuous=True only the first 10 cases are run and counted (as verl)
MISSING_CODE_ERROR = "Invalid completion (missing code block)"


def parse_test_cases(test_cases: dict | str) -> dict[str, Any]:
    """Normalise ``test_cases`` to ``{"inputs", "outputs", ...}``; raises ``ValueError`` describing the problem."""
    if isinstance(test_cases, str):
        try:
            test_cases = json.loads(test_cases)
        except json.JSONDecodeError as exc:
            raise ValueError(f"test_cases is not valid JSON: {exc}") from exc
    if not isinstance(test_cases, dict):
        raise ValueError(f"test_cases must be a dict or a JSON object, got {type(test_cases).__name__}")
    if "assert_case" in test_cases:
        asserts = list(test_cases["assert_case"])
        return {
            "inputs": list(test_cases.get("inputs") or [""] * len(asserts)),
            "outputs": list(test_cases.get("outputs") or [None] * len(asserts)),
            "assert_case": asserts,
        }
    if "inputs" in test_cases and "outputs" in test_cases:
        parsed = {"inputs": list(test_cases["inputs"]), "outputs": list(test_cases["outputs"])}
        if test_cases.get("fn_name"):
            parsed["fn_name"] = test_cases["fn_name"]
        return parsed
    raise ValueError(f"test_cases needs 'inputs' and 'outputs', or 'assert_case'; got keys {sorted(test_cases)}")


def run_test_cases(
    sandbox_fusion_url: str | None,
    concurrent_semaphore: Any,
    memory_limit_mb: int | None,
    completion: str,
    test_cases: dict | str,
    continuous: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    language: str = "python",
) -> tuple[list[bool | int], list[dict[str, Any]]]:
    """Extract the program and run it on every case.

    Returns:
        ``(results, metadata)`` from :func:`check_correctness`; ``([], [{"error": ...}])`` when the completion
        has no code block or the test cases are malformed.
    """
    code = extract_code(completion)
    if code is None:
        return [], [{"error": MISSING_CODE_ERROR}]
    try:
        in_outs = parse_test_cases(test_cases)
    except ValueError as exc:
        return [], [{"error": f"Invalid test_cases: {exc}"}]
    if continuous:
        in_outs = {k: v[:CONTINUOUS_MAX_CASES] if isinstance(v, list) else v for k, v in in_outs.items()}
    memory = 1024 if memory_limit_mb is None else memory_limit_mb
    return check_correctness(
        sandbox_fusion_url,
        in_outs,
        code,
        timeout=timeout,
        memory_limit_mb=memory,
        language=language,
        concurrent_semaphore=concurrent_semaphore,
    )


def compute_score(
    sandbox_fusion_url: str | None,
    concurrent_semaphore: Any,
    memory_limit_mb: int | None,
    completion: str,
    test_cases: dict | str,
    continuous: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[float, list[dict[str, Any]]]:
    """Score a completion by the fraction of test cases its program passes.

    Args:
        sandbox_fusion_url: ``/run_code`` URL or base URL of a SandboxFusion server; None = embedded sandbox.
        concurrent_semaphore: semaphore held around each sandbox request, or None.
        memory_limit_mb: sandbox memory limit per run in MB (None = 1024, -1 = none).
        completion: the model's response text.
        test_cases: the test cases (module docstring), a dict or a JSON string.
        continuous: only run and count the first ``CONTINUOUS_MAX_CASES`` cases (partial credit on big suites).
        timeout: seconds for the compile and for the run step of each case.

    Returns:
        ``(score, metadata)``: ``score`` = cases whose result is exactly ``True`` / cases run, in [0, 1];
        ``metadata`` has one dict per case, or a single ``{"error": ...}`` when nothing could be run (score 0.0).
    """
    results, metadata = run_test_cases(
        sandbox_fusion_url, concurrent_semaphore, memory_limit_mb, completion, test_cases, continuous, timeout
    )
    if not results:
        return 0.0, metadata
    return sum(r is True for r in results) / len(results), metadata
