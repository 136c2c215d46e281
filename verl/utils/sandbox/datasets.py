"""stdin/stdout ("CommonOJ") datasets behind ``/submit``, ``/get_prompts`` and ``/get_prompt_by_id``.

Registered ids are the ``*.jsonl`` files in ``verl/utils/sandbox/data/`` (the shipped ``code_contests_mini``:
small code-contest-style problems written for this project, each with tests and a Python reference solution).
Any other id works with ``config.provided_data`` rows and ``config.dataset_type="CommonOJDataset"``.

A row: ``{"id", "content", "test": [{"input": {"stdin": str}, "output": {"stdout": str}}], "labels": {...},
"canonical_solution"?}``.

Judging follows SandboxFusion's CommonOJ: ``config.language`` is required (else HTTP 400); per case ``run_timeout``
is ``config.run_timeout or 20`` s (C++: ``compile_timeout or 10`` and ``run_timeout or 10``); it stops at the first
failing case unless ``extra.run_all_cases``; outputs are compared line by line after stripping, case-insensitively,
numbers with a relative tolerance of 1e-5.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"
COMMON_OJ = "CommonOJDataset"
MAX_CONCURRENT_CASES = 3  # SandboxFusion's dataset.max_runner_concurrency in local.yaml
_LANG_TAGS = {"python": ("python", "python3", "py"), "cpp": ("cpp", "c++", "cc", "cxx")}
_FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.DOTALL)


class DatasetError(ValueError):
    """A bad dataset request; the server answers HTTP 400 ``{"detail": str(exc)}``."""


@cache
def registered() -> dict[str, list[dict]]:
    """Dataset id -> rows, from the shipped JSONL files."""
    return {
        path.stem: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(DATA_DIR.glob("*.jsonl"))
    }


def rows_for(dataset: str, config: Any) -> list[dict]:
    """The rows a request addresses: ``config.provided_data`` if given, else the registered dataset."""
    if config.custom_extract_logic:
        raise DatasetError("config.custom_extract_logic is not supported by the embedded sandbox")
    if config.provided_data is not None:
        if dataset not in registered() and config.dataset_type not in (None, COMMON_OJ):
            raise DatasetError(f"dataset_type {config.dataset_type!r} is not supported; only {COMMON_OJ}")
        data = config.provided_data
        return data if isinstance(data, list) else [data]
    if dataset not in registered():
        known = sorted(registered())
        raise DatasetError(f"dataset {dataset!r} is not registered (known: {known}); pass rows in config.provided_data")
    return registered()[dataset]


def find_row(dataset: str, config: Any, row_id: int | str) -> dict:
    for row in rows_for(dataset, config):
        if str(row["id"]) == str(row_id):
            return row
    raise DatasetError(f"id {row_id!r} not found in dataset {dataset!r}")


def prompt_of(row: dict, config: Any) -> dict:
    """SandboxFusion's ``Prompt``: ``{id, prompt, labels}``."""
    language = config.language or "python"
    text = (
        f"{row['content'].rstrip()}\n\nWrite a complete {language} program that reads the input from standard "
        f"input and writes the answer to standard output. Put the program in a ```{language} code block."
    )
    return {"id": row["id"], "prompt": text, "labels": row.get("labels", {})}


def extract_code(completion: str, language: str) -> tuple[str, str]:
    """The program in a completion and how it was found: ``fenced``, ``incomplete_fenced``, ``heuristic``, ``empty``.

    The last fenced block tagged with the language wins, else the last fenced block; an opening fence without a
    closing one gives the rest of the text; otherwise the whole completion is taken as code.
    """
    blocks = _FENCE.findall(completion)
    if blocks:
        tagged = [code for tag, code in blocks if tag.strip().lower() in _LANG_TAGS.get(language, (language,))]
        return (tagged or [code for _, code in blocks])[-1], "fenced"
    if "```" in completion:
        rest = completion.split("```", 1)[1]
        return (rest.split("\n", 1)[1] if "\n" in rest else ""), "incomplete_fenced"
    if completion.strip():
        return completion, "heuristic"
    return "", "empty"


def outputs_match(actual: str, expected: str) -> bool:
    """Line by line after stripping (trailing blank lines ignored), case-insensitive, numbers within rel 1e-5."""
    got, want = _lines(actual), _lines(expected)
    return len(got) == len(want) and all(_line_match(g, w) for g, w in zip(got, want))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines()]


def _line_match(got: str, want: str) -> bool:
    if got.lower() == want.lower():
        return True
    got_tokens, want_tokens = got.split(), want.split()
    if len(got_tokens) != len(want_tokens):
        return False
    for g, w in zip(got_tokens, want_tokens):
        if g.lower() == w.lower():
            continue
        try:
            if not math.isclose(float(g), float(w), rel_tol=1e-5):
                return False
        except ValueError:
            return False
    return True


def case_requests(row: dict, code: str, config: Any) -> list[dict]:
    """One ``/run_code`` request per test case of ``row``."""
    language = config.language
    compiled = language in ("cpp", "go", "java")
    run_timeout = config.run_timeout or (10 if compiled else 20)
    compile_timeout = config.compile_timeout or 10
    return [
        {
            "code": code,
            "language": language,
            "stdin": case["input"].get("stdin", ""),
            "run_timeout": run_timeout,
            "compile_timeout": compile_timeout,
            "memory_limit_MB": -1,
            "files": {},
            "fetch_files": [],
        }
        for case in row["test"]
    ]


def judge_cases(row: dict, responses: list[dict], return_full_case: bool) -> list[dict]:
    """``EvalTestCase`` dicts for the cases that ran."""
    tests = []
    for case, resp in zip(row["test"], responses):
        run = resp.get("run_result") or {}
        passed = resp["status"] == "Success" and outputs_match(run.get("stdout") or "", case["output"]["stdout"])
        tests.append({"passed": passed, "exec_info": resp, "test_info": case if return_full_case else None})
    return tests


def eval_result(row_id: int | str, code: str, extracted_type: str, tests: list[dict]) -> dict:
    """SandboxFusion's ``EvalResult``."""
    return {
        "id": row_id,
        "accepted": bool(tests) and all(t["passed"] for t in tests),
        "extracted_code": code,
        "full_code": code,
        "test_code": None,
        "tests": tests,
        "extracted_type": extracted_type,
        "extra": None,
    }
