"""Run a program against test cases through a SandboxFusion ``/run_code`` endpoint, one request per case.

The client speaks plain HTTP (``requests``), so a real SandboxFusion server and our embedded one
(:mod:`verl.utils.sandbox`) are used the same way. ``sandbox_fusion_url`` may be the full ``.../run_code`` URL (as
verl's config has it) or the server's base URL; ``None`` starts one embedded sandbox for this process (see
:func:`resolve_sandbox_url`).

Per-case result codes (verl's):

======  ==============================================================================  =====================
code    when                                                                            metadata ``status``
======  ==============================================================================  =====================
True    ran to completion, exit 0, stdout equals the expected output (or none expected)  ``success``
False   ran to completion, exit 0, different stdout                                      ``wrong_answer``
-1      request failed, non-2xx answer, ``SandboxError``, an unrecognised answer,       ``api_error``,
        or malformed test cases                                                          ``sandbox_error``, ...
-2      the program failed: non-zero exit or a run step in ``Error``                     ``runtime_error``
-3      the run step hit the time limit                                                  ``timeout``
-4      the compile step failed or timed out; every later case is forced to -4           ``compile_error``, ...
======  ==============================================================================  =====================

A Python ``SyntaxError`` is -2, not -4: Python has no compile step in the sandbox (as with SandboxFusion).
Output comparison is exact apart from trailing newlines: no whitespace stripping, no case folding, no float
tolerance.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT",
    "call_sandbox_api",
    "check_correctness",
    "extract_code",
    "ping_sandbox",
    "resolve_sandbox_url",
    "run_code_url",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10  # seconds, used for both the compile and the run step
_API_RETRIES = 3  # attempts on HTTP 504 (gateway timeout) only; every other failure is final
_FENCED_PYTHON = re.compile(r"```(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL)
_FENCED_ANY = re.compile(r"```(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The program in a model completion: the last ```` ```python ```` block, else the first fenced block.

    In a generic block a first line made only of letters (a language tag such as ``cpp``) is dropped.

    Returns:
        The code, or None when the completion has no closed fenced block.

    Example:
        >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nand better:\\n```python\\nprint(2)\\n```")
        'print(2)\\n'
        >>> extract_code("```cpp\\nint main() {}\\n```")
        'int main() {}\\n'
        >>> extract_code("print(1)") is None
        True
    """
    blocks = _FENCED_PYTHON.findall(completion)
    if blocks:
        return blocks[-1]
    match = _FENCED_ANY.search(completion)
    if match is None:
        return None
    body = match.group(1)
    first, sep, rest = body.partition("\n")
    if sep and (first.strip().isalpha() or not first.strip()):
        return rest
    return body


def run_code_url(sandbox_fusion_url: str) -> str:
    """``.../run_code`` for a base URL; a URL already ending in ``/run_code`` is returned unchanged."""
    url = sandbox_fusion_url.rstrip("/")
    return url if url.endswith("/run_code") else url + "/run_code"


_embedded_lock = threading.Lock()
_embedded: Any = None


def resolve_sandbox_url(sandbox_fusion_url: str | None) -> str:
    """The ``/run_code`` URL to call; ``None`` means this process's embedded sandbox.

    The embedded sandbox (:class:`verl.utils.sandbox.EmbeddedSandbox`) is started on a free loopback port the
    first time it is needed, shared by every later call in the process, and stopped when the interpreter exits.
    """
    if sandbox_fusion_url:
        return run_code_url(sandbox_fusion_url)
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            try:
                from verl.utils.sandbox import EmbeddedSandbox
            except ImportError as exc:
                raise ImportError(
                    "no sandbox_fusion_url was given and the embedded sandbox (verl.utils.sandbox) cannot be "
                    f"imported ({exc}); pass the URL of a SandboxFusion server."
                ) from exc
            sandbox = EmbeddedSandbox()
            sandbox.__enter__()
            atexit.register(sandbox.__exit__, None, None, None)
            _embedded = sandbox
            logger.info("no sandbox_fusion_url given: started the embedded sandbox at %s", sandbox.url)
        return run_code_url(_embedded.url)


def ping_sandbox(sandbox_fusion_url: str, timeout: float = 5.0) -> str | None:
    """GET ``/v1/ping`` (SandboxFusion's health check) on the server behind a base or ``/run_code`` URL.

    Returns:
        None when it answers, else what went wrong (for a message that names the URL).
    """
    import requests

    base = sandbox_fusion_url.rstrip("/").removesuffix("/run_code")
    try:
        requests.get(base + "/v1/ping", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        return str(exc)
    return None


def call_sandbox_api(
    sandbox_fusion_url: str,
    code: str,
    stdin: str | None,
    compile_timeout: float,
    run_timeout: float,
    memory_limit_mb: int,
    language: str = "python",
) -> tuple[dict | None, str | None]:
    """POST one program to ``/run_code``.

    The request times out after ``compile_timeout + run_timeout + 10`` s. HTTP 504 is retried (3 attempts,
    sleeping 1 s then 2 s); any other failure returns at once.

    Returns:
        ``(response_json, None)`` on a 2xx answer, else ``(None, error_message)``.
    """
    import requests

    url = run_code_url(sandbox_fusion_url)
    payload = {
        "code": code,
        "stdin": stdin,
        "language": language,
        "compile_timeout": compile_timeout,
        "run_timeout": run_timeout,
        "memory_limit_MB": memory_limit_mb,
        "files": {},
        "fetch_files": [],
    }
    request_timeout = compile_timeout + run_timeout + 10
    for attempt in range(_API_RETRIES):
        try:
            response = requests.post(url, json=payload, timeout=request_timeout)
        except requests.RequestException as exc:
            return None, f"request to {url} failed: {exc}"
        if response.status_code == 504 and attempt + 1 < _API_RETRIES:
            time.sleep(2**attempt)
            continue
        if not 200 <= response.status_code < 300:
            return None, f"{url} answered HTTP {response.status_code}: {response.text[:500]}"
        try:
            return response.json(), None
        except ValueError:
            return None, f"{url} answered with invalid JSON: {response.text[:200]!r}"
    return None, f"{url} answered HTTP 504 {_API_RETRIES} times"


# Wraps a function-style solution (``fn_name``) into a stdin/stdout program: one JSON value per stdin line is
# one positional argument; containers, None and bools are printed as JSON, anything else with str().
_FN_HARNESS = """\
import sys, os, re, math, json, heapq, bisect, string, random, itertools, functools, collections
from collections import *
from itertools import *
from functools import *
from heapq import *
from bisect import *
from math import *
from typing import *

{generation}

if __name__ == "__main__":
    _args = [json.loads(_line) for _line in sys.stdin.read().splitlines() if _line.strip()]
    _fn = globals().get({fn_name!r})
    if _fn is None:
        _fn = getattr(Solution(), {fn_name!r})
    _result = _fn(*_args)
    if _result is None or isinstance(_result, (dict, list, tuple, bool)):
        print(json.dumps(_result))
    else:
        print(_result)
"""


def _as_json_text(value: Any) -> str:
    """How the harness prints ``value`` (strings are taken as already formatted)."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (dict, list, tuple, bool)):
        return json.dumps(value)
    return str(value)


def _stdin_text(value: Any, fn_name: str | None) -> str | None:
    if value is None:
        return None
    if fn_name and isinstance(value, (list, tuple)):
        return "\n".join(json.dumps(arg) for arg in value)  # one argument per line, as the harness reads them
    return str(value)


def _verdict(response: dict, expected: Any) -> tuple[bool | int, str]:
    """Map one ``/run_code`` answer to ``(code, status)`` (table in the module docstring)."""
    api_status = response.get("status")
    compile_result = response.get("compile_result") or {}
    run_result = response.get("run_result") or {}
    compile_status = compile_result.get("status")
    if compile_status == "TimeLimitExceeded":
        return -4, "compile_timeout"
    if compile_status == "Error" or (
        compile_status == "Finished" and compile_result.get("return_code") not in (0, None)
    ):
        return -4, "compile_error"
    if api_status == "SandboxError":
        return -1, "sandbox_error"
    run_status = run_result.get("status")
    if run_status == "TimeLimitExceeded":
        return -3, "timeout"
    if run_status == "Error":
        return -2, "runtime_error"
    if run_status == "Finished":
        if run_result.get("return_code") != 0:
            return -2, "runtime_error"
        if api_status != "Success":
            return -1, f"unknown_{api_status}"
        if expected is None:
            return True, "success"
        stdout = run_result.get("stdout") or ""
        if stdout.rstrip("\n") == _as_json_text(expected).rstrip("\n"):
            return True, "success"
        return False, "wrong_answer"
    return -1, f"unknown_{api_status}_{run_status}"


def _run_case(
    case_index: int,
    code: str,
    stdin: str | None,
    expected: Any,
    sandbox_fusion_url: str,
    timeout: float,
    memory_limit_mb: int,
    language: str,
    concurrent_semaphore: Any,
) -> tuple[bool | int, dict[str, Any]]:
    metadata: dict[str, Any] = {
        "case_index": case_index,
        "input": stdin,
        "expected_output": expected,
        "api_request_error": None,
        "api_response": None,
        "status": "unknown",
        "stdout": None,
        "stderr": None,
        "exit_code": None,
        "duration": None,
        "compile_duration": None,
        "compile_stderr": None,
        "api_status": None,
        "compile_status": None,
        "run_status": None,
    }
    args = (sandbox_fusion_url, code, stdin, timeout, timeout, memory_limit_mb, language)
    if concurrent_semaphore is not None:
        with concurrent_semaphore:  # global cap across reward workers (reward_model.sandbox_fusion.max_concurrent)
            response, error = call_sandbox_api(*args)
    else:
        response, error = call_sandbox_api(*args)
    if response is None:
        metadata.update(api_request_error=error, status="api_error")
        return -1, metadata
    compile_result = response.get("compile_result") or {}
    run_result = response.get("run_result") or {}
    metadata.update(
        api_response=response,
        api_status=response.get("status"),
        compile_status=compile_result.get("status"),
        compile_duration=compile_result.get("execution_time"),
        compile_stderr=compile_result.get("stderr"),
        run_status=run_result.get("status"),
        stdout=run_result.get("stdout"),
        stderr=run_result.get("stderr"),
        exit_code=run_result.get("return_code"),
        duration=run_result.get("execution_time"),
    )
    code_, status = _verdict(response, expected)
    metadata["status"] = status
    return code_, metadata


def _invalid(n: int, message: str) -> tuple[list[bool | int], list[dict[str, Any]]]:
    count = max(n, 1)
    return [-1] * count, [{"case_index": i, "status": "api_error", "error": message} for i in range(count)]


def check_correctness(
    sandbox_fusion_url: str | None,
    in_outs: dict,
    generation: str,
    timeout: float = DEFAULT_TIMEOUT,
    memory_limit_mb: int = 1024,
    language: str = "python",
    concurrent_semaphore: Any = None,
) -> tuple[list[bool | int], list[dict[str, Any]]]:
    """Run ``generation`` once per test case and judge each run.

    Args:
        sandbox_fusion_url: ``/run_code`` URL or base URL of a SandboxFusion server; None = embedded sandbox.
        in_outs: ``{"inputs": [...], "outputs": [...]}``, optionally with ``"fn_name"`` (function-style cases,
            Python only) or ``"assert_case": [...]`` (code appended after the program for each case).
        generation: the program (already extracted from the completion).
        timeout: seconds for the compile step and, separately, for the run step of each case.
        memory_limit_mb: sandbox memory limit per run (``memory_limit_MB``; -1 = none).
        language: sandbox language (``python``, ``cpp``, ...).
        concurrent_semaphore: a context-manager semaphore held around each request (threading or
            ``multiprocessing.Manager().Semaphore``), capping in-flight requests across callers.

    Returns:
        ``(results, metadata)``, one entry per case in input order; codes as in the module docstring.
    """
    inputs = list(in_outs.get("inputs") or [])
    outputs = list(in_outs.get("outputs") or [])
    assert_cases = in_outs.get("assert_case")
    fn_name = in_outs.get("fn_name") if language == "python" else None
    if len(inputs) != len(outputs):
        return _invalid(len(inputs), f"{len(inputs)} inputs but {len(outputs)} outputs")
    if assert_cases is not None and len(assert_cases) != len(inputs):
        return _invalid(len(inputs), f"{len(assert_cases)} assert cases but {len(inputs)} inputs")
    if not inputs:
        return _invalid(0, "no test cases")
    url = resolve_sandbox_url(sandbox_fusion_url)
    program = _FN_HARNESS.format(generation=generation, fn_name=fn_name) if fn_name else generation
    jobs = []
    for i, (stdin, expected) in enumerate(zip(inputs, outputs)):
        code = program + "\n\n" + assert_cases[i] if assert_cases is not None else program
        jobs.append((i, code, _stdin_text(stdin, fn_name), expected))
    workers = min(len(jobs), max(32, 5 * (os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(_run_case, *job, url, timeout, memory_limit_mb, language, concurrent_semaphore) for job in jobs
        ]
        judged = [future.result() for future in futures]
    results = [code for code, _ in judged]
    metadata = [meta for _, meta in judged]
    # A program that does not compile fails every case the same way: later cases report it as skipped.
    first_compile_error = next((i for i, r in enumerate(results) if r is not True and r == -4), None)
    if first_compile_error is not None:
        for i in range(first_compile_error + 1, len(results)):
            results[i] = -4
            metadata[i]["status"] = "compile_error_skipped"
    return results, metadata
