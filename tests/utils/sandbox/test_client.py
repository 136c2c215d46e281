"""The real ``sandbox_fusion`` client (PyPI 0.3.7) works against the embedded sandbox unchanged."""

from __future__ import annotations

import asyncio
import shutil

import pytest

sf = pytest.importorskip("sandbox_fusion")


def test_run_code(sandbox):
    resp = sf.run_code(sf.RunCodeRequest(code="print(input())", language="python", stdin="hi"), endpoint=sandbox.url)
    assert resp.status == sf.RunStatus.Success and resp.run_result.stdout == "hi\n"
    assert resp.run_result.status == sf.CommandRunStatus.Finished and resp.run_result.return_code == 0


def test_run_code_timeout_summary(sandbox):
    req = sf.RunCodeRequest(code="import time\ntime.sleep(5)", language="python", run_timeout=0.5)
    resp = sf.run_code(req, endpoint=sandbox.url)
    assert resp.run_result.status == sf.CommandRunStatus.TimeLimitExceeded
    assert sf.summary_run_code_result(resp, sf.SummaryMapping(RunTimeout="TLE")) == "TLE"


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cpp_compile_error_summary(sandbox):
    resp = sf.run_code(sf.RunCodeRequest(code="int main() { nope; }", language="cpp"), endpoint=sandbox.url)
    assert sf.summary_run_code_result(resp, sf.SummaryMapping(CompileFailed="CE")) == "CE"


def test_run_code_async(sandbox):
    async def main():
        reqs = [sf.RunCodeRequest(code=f"print({i} * 2)", language="python") for i in range(4)]
        return await asyncio.gather(*(sf.run_code_async(r, endpoint=sandbox.url) for r in reqs))

    assert [r.run_result.stdout for r in asyncio.run(main())] == ["0\n", "2\n", "4\n", "6\n"]


def test_unknown_language_raises(sandbox):
    with pytest.raises(Exception, match="422"):
        sf.run_code(sf.RunCodeRequest(code="x", language="python2"), endpoint=sandbox.url, max_attempts=1)


def test_prompts(sandbox):
    cfg = sf.TestConfig(language="python")
    prompts = sf.get_prompts(
        sf.GetPromptsRequest(dataset="code_contests_mini", config=cfg, limit=3), endpoint=sandbox.url
    )
    assert [p.id for p in prompts] == [0, 1, 2]
    one = sf.get_prompt_by_id(
        sf.GetPromptByIdRequest(dataset="code_contests_mini", config=cfg, id=1), endpoint=sandbox.url
    )
    assert one.id == 1


def test_submit_sync_and_async(sandbox):
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    cfg = sf.TestConfig(language="python")
    req = sf.SubmitRequest(dataset="code_contests_mini", id=0, completion=good, config=cfg)
    result = sf.submit(req, endpoint=sandbox.url)
    assert result.accepted is True and all(t.passed for t in result.tests)
    bad = sf.SubmitRequest(dataset="code_contests_mini", id=0, completion="```python\nprint(0)\n```", config=cfg)
    assert asyncio.run(sf.submit_async(bad, endpoint=sandbox.url)).accepted is False


def test_submit_safe_on_server_error(sandbox):
    req = sf.SubmitRequest(dataset="nope", id=0, completion="x", config=sf.TestConfig(language="python"))
    assert sf.submit_safe(req, endpoint=sandbox.url, max_attempts=1).accepted is False


def test_set_endpoint(sandbox):
    old = sf.config.SANDBOX_ENDPOINT, sf.config.DATASET_ENDPOINT
    try:
        sf.set_endpoint(sandbox.url + "/")
        assert sf.run_code(sf.RunCodeRequest(code="print(5)", language="python")).run_result.stdout == "5\n"
    finally:
        sf.set_sandbox_endpoint(old[0])
        sf.set_dataset_endpoint(old[1])
