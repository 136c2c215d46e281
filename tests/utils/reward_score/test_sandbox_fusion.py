"""verl.utils.reward_score.sandbox_fusion: code extraction, per-case codes, scoring, and the HTTP client's edges.

Programs run in the embedded sandbox (verl.utils.sandbox) on a loopback port; nothing touches the network. The
verdict table and the client's retry/payload behaviour are checked against canned responses shaped like the ones
captured from a real SandboxFusion server (docs: sandbox_fusion_api.md sections 1 and 3).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from verl.utils.reward_score import default_compute_score
from verl.utils.reward_score.sandbox_fusion import compute_score, parse_test_cases
from verl.utils.reward_score.sandbox_fusion import utils as sf_utils
from verl.utils.reward_score.sandbox_fusion.utils import _verdict, check_correctness, extract_code, run_code_url
from verl.utils.sandbox import EmbeddedSandbox


@pytest.fixture(scope="module")
def url():
    with EmbeddedSandbox() as sandbox:
        yield sandbox.url  # the base URL; the scorer appends /run_code (a full .../run_code URL works too)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/run_code"  # nothing listens there once the socket is closed


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}```\nDone."


DOUBLE = "print(int(input()) * 2)\n"
TWO_CASES = {"inputs": ["2\n", "5\n"], "outputs": ["4\n", "10\n"]}

# --------------------------------------------------------------------------------------------------------------
# Code extraction and test-case parsing (pure)


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```python\nprint(1)\n```\nbetter:\n```python\nprint(2)\n```", "print(2)\n"),  # last python block
        ("```cpp\nint main(){}\n```\n```\nx\n```", "int main(){}\n"),  # first generic block, tag dropped
        ("```\nprint(3)\n```", "print(3)\n"),
        ("```c++\nint x;\n```", "c++\nint x;\n"),  # "c++" is not purely alphabetic, so it stays
        ("```sh\necho hi\n```\n```python\nprint(4)\n```", "print(4)\n"),  # a python block wins over a generic one
        ("print(5)", None),
        ("```python\nprint(6)\n", None),  # unclosed fence
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


def test_parse_test_cases_forms():
    assert parse_test_cases(json.dumps(TWO_CASES)) == TWO_CASES
    assert parse_test_cases({**TWO_CASES, "fn_name": "f"})["fn_name"] == "f"
    assert parse_test_cases({"assert_case": ["assert 1", "assert 2"]}) == {
        "inputs": ["", ""],
        "outputs": [None, None],
        "assert_case": ["assert 1", "assert 2"],
    }
    for bad in ("not json", "[1, 2]", {"inputs": []}):
        with pytest.raises(ValueError):
            parse_test_cases(bad)


def test_run_code_url_accepts_base_or_full_url():
    assert run_code_url("http://h:8080") == "http://h:8080/run_code"
    assert run_code_url("http://h:8080/") == "http://h:8080/run_code"
    assert run_code_url("http://h:8080/run_code") == "http://h:8080/run_code"


# Responses shaped like the ones captured from a real SandboxFusion server (reference section 1).
def _resp(status, run=None, compile_=None):
    return {"status": status, "message": "", "compile_result": compile_, "run_result": run, "files": {}}


def _run(status="Finished", rc=0, stdout=""):
    return {"status": status, "return_code": rc, "stdout": stdout, "stderr": "", "execution_time": 0.01}


@pytest.mark.parametrize(
    "response, expected, verdict",
    [
        (_resp("Success", _run(stdout="4\n")), "4", (True, "success")),
        (_resp("Success", _run(stdout="4\n\n")), "4\n", (True, "success")),  # trailing newlines ignored
        (_resp("Success", _run(stdout="4 \n")), "4", (False, "wrong_answer")),  # spaces are not
        (_resp("Success", _run(stdout="anything")), None, (True, "success")),  # nothing expected
        (_resp("Success", _run(stdout="true\n")), True, (True, "success")),  # non-str expected: JSON text
        (_resp("Failed", _run(rc=1)), "4", (-2, "runtime_error")),
        (_resp("Failed", _run(rc=-11)), "4", (-2, "runtime_error")),  # signal
        (_resp("Failed", _run("TimeLimitExceeded", rc=None)), "4", (-3, "timeout")),
        (_resp("SandboxError"), "4", (-1, "sandbox_error")),
        (_resp("Failed", None, _run(rc=1)), "4", (-4, "compile_error")),
        (_resp("Failed", None, _run("TimeLimitExceeded", rc=None)), "4", (-4, "compile_timeout")),
        (_resp("Success", _run(stdout="4"), _run(rc=0)), "4", (True, "success")),  # compiled fine
        (_resp("Weird", _run("Unknown")), "4", (-1, "unknown_Weird_Unknown")),
    ],
)
def test_verdict_table(response, expected, verdict):
    assert _verdict(response, expected) == verdict


# --------------------------------------------------------------------------------------------------------------
# Against a local sandbox


def test_correct_and_wrong_stdio(url):
    score, meta = compute_score(url, None, 1024, fenced(DOUBLE), TWO_CASES)
    assert score == 1.0 and [m["status"] for m in meta] == ["success", "success"]
    score, meta = compute_score(url, None, 1024, fenced(DOUBLE), {"inputs": ["2\n", "5\n"], "outputs": ["4", "11"]})
    assert score == 0.5
    assert [m["status"] for m in meta] == ["success", "wrong_answer"]
    assert meta[1]["stdout"] == "10\n" and meta[1]["case_index"] == 1 and meta[1]["api_status"] == "Success"


def test_per_case_codes_for_crash_syntax_error_and_timeout(url):
    results, meta = check_correctness(url, TWO_CASES, "raise SystemExit(3)\n")
    assert results == [-2, -2] and meta[0]["exit_code"] == 3
    # Python has no compile step: a syntax error is a runtime error (-2), as with SandboxFusion.
    results, meta = check_correctness(url, TWO_CASES, "def f(:\n")
    assert results == [-2, -2] and "SyntaxError" in meta[0]["stderr"]
    start = time.time()
    results, meta = check_correctness(url, TWO_CASES, "import time\ntime.sleep(30)\n", timeout=1)
    assert results == [-3, -3] and [m["status"] for m in meta] == ["timeout", "timeout"]
    assert time.time() - start < 15  # the two cases ran side by side and were cut at the limit


def test_assert_case_and_fn_name(url):
    program = "def add(a, b):\n    return a + b\n"
    score, meta = compute_score(
        url, None, 1024, fenced(program), {"assert_case": ["assert add(1, 2) == 3", "assert add(1, 1) == 3"]}
    )
    assert score == 0.5 and [m["status"] for m in meta] == ["success", "runtime_error"]

    cases = {"fn_name": "add", "inputs": [[1, 2], [[1], [2]]], "outputs": [3, [1, 2]]}
    assert compute_score(url, None, 1024, fenced(program), cases)[0] == 1.0
    method = "class Solution:\n    def add(self, a, b):\n        return a - b\n"
    score, meta = compute_score(
        url, None, 1024, fenced(method), {"fn_name": "add", "inputs": [[2, 2], [5, 1]], "outputs": [0, 6]}
    )
    assert score == 0.5 and meta[1]["stdout"].strip() == "4"


def test_continuous_counts_only_the_first_ten_cases(url):
    # 12 cases, the last two wrong: 10/10 with continuous=True, 10/12 without (verl's behaviour).
    inputs = [f"{i}\n" for i in range(12)]
    outputs = [f"{2 * i}\n" for i in range(10)] + ["-1\n", "-1\n"]
    cases = {"inputs": inputs, "outputs": outputs}
    score, meta = compute_score(url, None, 1024, fenced(DOUBLE), cases, continuous=True)
    assert score == 1.0 and len(meta) == 10
    score, meta = compute_score(url, None, 1024, fenced(DOUBLE), json.dumps(cases), continuous=False)
    assert score == pytest.approx(10 / 12) and len(meta) == 12


def test_unreachable_url_is_api_error():
    results, meta = check_correctness(_closed_port_url(), TWO_CASES, DOUBLE)
    assert results == [-1, -1]
    assert meta[0]["status"] == "api_error" and "failed" in meta[0]["api_request_error"]


def test_missing_code_block_and_bad_cases_score_zero(url):
    assert compute_score(url, None, 1024, "print(1)", TWO_CASES) == (
        0.0,
        [{"error": "Invalid completion (missing code block)"}],
    )
    score, meta = compute_score(url, None, 1024, fenced(DOUBLE), {"nothing": 1})
    assert score == 0.0 and meta[0]["error"].startswith("Invalid test_cases")
    results, meta = check_correctness(url, {"inputs": ["1", "2"], "outputs": ["2"]}, DOUBLE)
    assert results == [-1, -1] and "2 inputs but 1 outputs" in meta[0]["error"]


def test_semaphore_caps_requests_in_flight(url):
    class CountingSemaphore:
        def __init__(self, limit):
            self._sem, self.active, self.peak, self.entries = threading.Semaphore(limit), 0, 0, 0
            self._lock = threading.Lock()

        def __enter__(self):
            self._sem.acquire()
            with self._lock:
                self.active += 1
                self.entries += 1
                self.peak = max(self.peak, self.active)

        def __exit__(self, *exc):
            with self._lock:
                self.active -= 1
            self._sem.release()

    semaphore = CountingSemaphore(2)
    cases = {"inputs": [f"{i}\n" for i in range(6)], "outputs": [f"{2 * i}\n" for i in range(6)]}
    assert compute_score(url, semaphore, 1024, fenced(DOUBLE), cases)[0] == 1.0
    assert semaphore.entries == 6 and semaphore.peak <= 2


def test_default_compute_score_routes_code_sources(url):
    import multiprocessing

    # As verl's reward loading does: a Manager semaphore shared by the reward workers, the full /run_code URL.
    with multiprocessing.Manager() as manager:
        score = default_compute_score(
            "codecontests",
            fenced(DOUBLE),
            json.dumps(TWO_CASES),
            sandbox_fusion_url=url + "/run_code",
            concurrent_semaphore=manager.Semaphore(4),
            memory_limit_mb=1024,
        )
    assert score == 1.0


def test_shipped_reference_solutions_pass(url):
    pd = pytest.importorskip("pandas")
    path = os.path.join(os.path.dirname(__file__), "../../../examples/phase0/data/code_contests.parquet")
    frame = pd.read_parquet(path)
    assert len(frame) >= 10 and set(frame["data_source"]) == {"phase0_code"}
    for _, row in frame.iterrows():
        completion = fenced(row["extra_info"]["reference_solution"])
        score, meta = compute_score(url, None, 1024, completion, row["reward_model"]["ground_truth"])
        assert score == 1.0, (row["extra_info"]["name"], [m.get("status") for m in meta])


# --------------------------------------------------------------------------------------------------------------
# The HTTP client without a server: payload, retries, compile-error propagation


class _FakeHTTPResponse:
    def __init__(self, status_code, body):
        self.status_code, self._body, self.text = status_code, body, json.dumps(body)

    def json(self):
        return self._body


def test_call_sandbox_api_payload_and_504_retry(monkeypatch):
    requests = pytest.importorskip("requests")
    calls, sleeps = [], []
    answers = [_FakeHTTPResponse(504, {}), _FakeHTTPResponse(504, {}), _FakeHTTPResponse(200, {"status": "Success"})]

    def fake_post(url, json=None, timeout=None):
        calls.append((url, json, timeout))
        return answers[len(calls) - 1]

    monkeypatch.setattr(requests, "post", fake_post)
    monkeypatch.setattr(sf_utils.time, "sleep", sleeps.append)
    response, error = sf_utils.call_sandbox_api("http://sb:8080", "print(1)", "x", 3, 4, 256, "python")
    assert (response, error) == ({"status": "Success"}, None)
    assert sleeps == [1, 2] and len(calls) == 3
    url, payload, timeout = calls[0]
    assert url == "http://sb:8080/run_code" and timeout == 3 + 4 + 10
    assert payload == {
        "code": "print(1)",
        "stdin": "x",
        "language": "python",
        "compile_timeout": 3,
        "run_timeout": 4,
        "memory_limit_MB": 256,
        "files": {},
        "fetch_files": [],
    }
    # any other HTTP error is final at once
    calls.clear()
    answers[:] = [_FakeHTTPResponse(500, {"detail": "boom"})]
    response, error = sf_utils.call_sandbox_api("http://sb:8080/run_code", "x", None, 1, 1, -1)
    assert response is None and "HTTP 500" in error and len(calls) == 1


def test_compile_error_is_forced_on_later_cases(monkeypatch):
    # Only case 1 reports the compile failure; case 2 (which "passed") is forced to -4 after it, case 0 is kept.
    def fake_call(url, code, stdin, *args):
        return (_resp("Failed", None, _run(rc=1)) if stdin == "b" else _resp("Success", _run(stdout="ok"))), None

    monkeypatch.setattr(sf_utils, "call_sandbox_api", fake_call)
    results, meta = check_correctness("http://sb", {"inputs": ["a", "b", "c"], "outputs": ["ok"] * 3}, "x")
    assert results == [True, -4, -4]
    assert [m["status"] for m in meta] == ["success", "compile_error", "compile_error_skipped"]


def test_memory_limit_none_means_default(monkeypatch):
    seen = []
    monkeypatch.setattr(
        sf_utils, "call_sandbox_api", lambda *a: (seen.append(a[5]) or _resp("Success", _run(stdout="4")), None)
    )
    compute_score("http://sb", None, None, fenced(DOUBLE), {"inputs": ["2"], "outputs": ["4"]})
    compute_score("http://sb", None, -1, fenced(DOUBLE), {"inputs": ["2"], "outputs": ["4"]})
    assert seen == [1024, -1]


def test_no_url_uses_the_embedded_sandbox():
    score, _ = compute_score(None, None, 1024, fenced(DOUBLE), TWO_CASES)
    assert score == 1.0


def test_memory_limit_reaches_the_sandbox(url):
    hog = fenced("x = bytearray(200 * 1024 * 1024)\nprint(len(x) > 0)\n")
    cases = {"inputs": [""], "outputs": ["True"]}
    assert compute_score(url, None, 1024, hog, cases)[0] == 1.0
    score, meta = compute_score(url, None, 64, hog, cases)
    assert score == 0.0 and meta[0]["status"] == "runtime_error"  # MemoryError (or killed) under 64 MB


def test_ping_sandbox(url):
    assert sf_utils.ping_sandbox(url) is None
    assert sf_utils.ping_sandbox(url + "/run_code") is None
    assert "Connection refused" in sf_utils.ping_sandbox(_closed_port_url())
