"""The embedded sandbox speaks SandboxFusion's HTTP API: shapes, statuses, datasets, bad input, the CLI."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest
import requests

from verl.utils.sandbox.datasets import extract_code, outputs_match, registered

RUN_KEYS = {"status", "message", "compile_result", "run_result", "executor_pod_name", "files"}
STEP_KEYS = {"status", "execution_time", "return_code", "stdout", "stderr"}  # + our stdout/stderr_truncated
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


def _assert_shape(resp: dict) -> None:
    assert set(resp) == RUN_KEYS
    assert resp["status"] in ("Success", "Failed", "SandboxError") and isinstance(resp["message"], str)
    for step in ("compile_result", "run_result"):
        if resp[step] is not None:
            assert STEP_KEYS <= set(resp[step])
            assert resp[step]["status"] in ("Finished", "TimeLimitExceeded", "Error")


def test_success_shape_and_stdin(sandbox):
    resp = sandbox.run("import sys\nprint(sys.stdin.read().upper(), end='')", stdin="abc\n")
    _assert_shape(resp)
    assert resp["status"] == "Success" and resp["message"] == "" and resp["compile_result"] is None
    rr = resp["run_result"]
    assert (rr["status"], rr["return_code"], rr["stdout"], rr["stderr"]) == ("Finished", 0, "ABC\n", "")
    assert isinstance(rr["execution_time"], float) and rr["execution_time"] > 0
    assert resp["executor_pod_name"] is None and resp["files"] == {}


def test_stdin_none_is_eof(sandbox):
    assert sandbox.run("import sys\nprint(repr(sys.stdin.read()))")["run_result"]["stdout"] == "''\n"


@pytest.mark.parametrize(
    "code, return_code",
    [
        ("raise SystemExit(3)", 3),
        ("1/0", 1),
        ("def f(:\n", 1),
        ("import os\nos.abort()", -6),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", -11),
    ],
)
def test_failures_report_the_return_code(sandbox, code, return_code):
    resp = sandbox.run(code)
    _assert_shape(resp)
    assert resp["status"] == "Failed" and resp["run_result"]["status"] == "Finished"
    assert resp["run_result"]["return_code"] == return_code


def test_files_are_written_and_fetched(sandbox):
    resp = sandbox.run(
        "print(open('data/in.txt').read())\nopen('out.bin', 'wb').write(b'\\x00\\x01')",
        files={"data/in.txt": "aGVsbG8=", "skip.txt": None},
        fetch_files=["out.bin", "nope.txt"],
    )
    assert resp["run_result"]["stdout"] == "hello\n" and resp["files"] == {"out.bin": "AAE="}


@needs_gxx
def test_cpp_compiles_and_runs(sandbox):
    code = "#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}"
    resp = sandbox.run(code, language="cpp", stdin="2 3")
    _assert_shape(resp)
    assert resp["status"] == "Success" and resp["compile_result"]["return_code"] == 0
    assert resp["run_result"]["stdout"] == "5\n"


@needs_gxx
def test_cpp_compile_error(sandbox):
    resp = sandbox.run("int main() { return undefined_name; }", language="cpp")
    _assert_shape(resp)
    assert resp["status"] == "Failed" and resp["run_result"] is None
    cr = resp["compile_result"]
    assert cr["status"] == "Finished" and cr["return_code"] != 0 and "undefined_name" in cr["stderr"]


def test_language_without_runner_is_a_sandbox_error(sandbox):
    resp = sandbox.run("console.log(1)", language="nodejs")
    _assert_shape(resp)
    assert resp["status"] == "SandboxError" and "not supported" in resp["message"] and "nodejs" in resp["message"]
    assert resp["run_result"] is None


def test_unknown_language_is_422(sandbox):
    detail = sandbox.post("/run_code", {"code": "print(1)", "language": "python9"}, status=422)["detail"]
    assert detail[0]["type"] == "literal_error" and detail[0]["loc"] == ["body", "language"]


def test_malformed_bodies_are_422(sandbox):
    resp = requests.post(sandbox.url + "/run_code", data="{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["detail"][0]["type"] == "json_invalid"
    detail = sandbox.post("/run_code", {"language": "python"}, status=422)["detail"]
    assert detail[0]["type"] == "missing" and detail[0]["loc"] == ["body", "code"]
    detail = sandbox.post("/submit", {"dataset": "x"}, status=422)["detail"]
    assert {tuple(d["loc"]) for d in detail} == {("body", "id"), ("body", "completion")}


def test_ping_and_list_datasets(sandbox):
    assert requests.get(sandbox.url + "/v1/ping").json() == "pong"
    assert requests.get(sandbox.url + "/list_datasets").json() == ["code_contests_mini"]


def test_prompts(sandbox):
    cfg = {"language": "python"}
    prompts = sandbox.post("/get_prompts", {"dataset": "code_contests_mini", "config": cfg, "offset": 1, "limit": 2})
    assert [p["id"] for p in prompts] == [1, 2] and set(prompts[0]) == {"id", "prompt", "labels"}
    one = sandbox.post("/get_prompt_by_id", {"dataset": "code_contests_mini", "config": cfg, "id": 0})
    assert one["id"] == 0 and "A + B" in one["prompt"]
    ids = sandbox.post("/list_ids", {"dataset": "code_contests_mini", "config": cfg})
    assert ids == list(range(len(registered()["code_contests_mini"])))


def test_shipped_reference_solutions_are_accepted(sandbox):
    rows = registered()["code_contests_mini"]
    assert 10 <= len(rows) <= 20
    for row in rows:
        completion = f"Here you go:\n```python\n{row['canonical_solution']}```\n"
        result = sandbox.post(
            "/submit",
            {
                "dataset": "code_contests_mini",
                "id": row["id"],
                "completion": completion,
                "config": {"language": "python"},
            },
        )
        assert result["accepted"] is True, (row["id"], result)
        assert len(result["tests"]) == len(row["test"]) and result["extracted_type"] == "fenced"


def test_submit_stops_at_the_first_failing_case(sandbox):
    body = {
        "dataset": "code_contests_mini",
        "id": 0,
        "completion": "```python\nprint(3)\n```",
        "config": {"language": "python"},
    }
    result = sandbox.post("/submit", body)
    assert result["accepted"] is False
    assert [t["passed"] for t in result["tests"]] == [True, False]  # case 1 is "1 2" -> 3, case 2 fails
    body["config"]["extra"] = {"run_all_cases": True, "return_full_case": True}
    result = sandbox.post("/submit", body)
    assert [t["passed"] for t in result["tests"]] == [True, False, False, False]
    assert result["tests"][0]["test_info"]["input"]["stdin"] == "1 2\n"
    assert set(result) == {
        "id",
        "accepted",
        "extracted_code",
        "full_code",
        "test_code",
        "tests",
        "extracted_type",
        "extra",
    }
    assert set(result["tests"][0]) == {"passed", "exec_info", "test_info"}


def test_submit_without_language_is_400(sandbox):
    body = {"dataset": "code_contests_mini", "id": 0, "completion": "print(3)", "config": {}}
    assert sandbox.post("/submit", body, status=400) == {
        "detail": "config.language field must exist for CommonOJDataset, got None"
    }
    body = {"dataset": "no_such", "id": 0, "completion": "print(3)", "config": {"language": "python"}}
    assert "not registered" in sandbox.post("/submit", body, status=400)["detail"]


PROVIDED = {
    "id": "sq",
    "content": "Print the square of n.",
    "test": [
        {"input": {"stdin": "3\n"}, "output": {"stdout": "9\n"}},
        {"input": {"stdin": "-4\n"}, "output": {"stdout": "16"}},
    ],
    "labels": {},
}


@pytest.mark.parametrize(
    "language, completion",
    [
        ("python", "```python\nn = int(input())\nprint(n * n)\n```"),
        pytest.param(
            "cpp",
            '```cpp\n#include <cstdio>\nint main(){long n;scanf("%ld",&n);printf("%ld\\n",n*n);}\n```',
            marks=needs_gxx,
        ),
    ],
)
def test_submit_provided_data(sandbox, language, completion):
    config = {"language": language, "dataset_type": "CommonOJDataset", "provided_data": PROVIDED}
    result = sandbox.post("/submit", {"dataset": "my_oj", "id": "sq", "completion": completion, "config": config})
    assert result["accepted"] is True and result["id"] == "sq"


@pytest.mark.parametrize(
    "actual, expected, same",
    [
        ("3\n", "3", True),  # trailing newline
        ("  Yes \n\n", "YES", True),  # strip + case-insensitive
        ("0.3333333\n", "0.33333333", True),  # rel 1e-5
        ("0.34\n", "0.33", False),
        ("1 2\n", "1 2 3\n", False),
        ("a\nb\n", "a\n", False),
    ],
)
def test_outputs_match(actual, expected, same):
    assert outputs_match(actual, expected) is same


@pytest.mark.parametrize(
    "completion, code, kind",
    [
        ("x\n```python\nprint(1)\n```\n```cpp\nint main(){}\n```", "print(1)\n", "fenced"),
        ("```\nprint(2)\n```", "print(2)\n", "fenced"),
        ("```python\nprint(3)\n", "print(3)\n", "incomplete_fenced"),
        ("print(4)", "print(4)", "heuristic"),
        ("  ", "", "empty"),
    ],
)
def test_extract_code(completion, code, kind):
    assert extract_code(completion, "python") == (code, kind)


def test_cli_help_and_serve():
    out = subprocess.run([sys.executable, "-m", "verl.utils.sandbox", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--max-concurrency" in out.stdout and "--port" in out.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "verl.utils.sandbox",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-concurrency",
        "2",
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if requests.get(url + "/v1/ping", timeout=1).json() == "pong":
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        info = requests.get(url + "/v1/sandbox_info").json()
        assert info["max_concurrency"] == 2 and "python" in info["languages"]
        resp = requests.post(url + "/run_code", json={"code": "print(1)", "language": "python"}).json()
        assert resp["status"] == "Success"
    finally:
        server.terminate()
        server.wait(timeout=30)
