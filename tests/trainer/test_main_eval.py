"""verl.trainer.main_eval and verl.trainer.ppo.eval_metrics: statuses, metrics, outputs, and bad input.

The end-to-end fixture has 5 prompts (the first 5 shipped problems) with 2 responses each whose verdicts are known:

    row  problem          response 0                      response 1
    0    sum_of_two       correct       success 1.0       |a+b|, fails 1 of 4   wrong_answer 0.75
    1    maximum          first number, fails case 0      correct               success 1.0
                          wrong_answer 0.75
    2    reverse_words    raises        runtime_error 0   correct               success 1.0
    3    count_vowels     sleeps 60 s   timeout 0         unclosed paren        syntax_error 0
    4    fizzbuzz         missing colon syntax_error 0    no code block         syntax_error 0

    accepted_at_1   = first responses passing / prompts = 1/5                                  = 0.2
    pass_ratio_mean = (1 + .75 + .75 + 1 + 0 + 1 + 0 + 0 + 0 + 0) / 10                         = 0.45
    status          = success 3/10, wrong_answer 2/10, runtime_error 1/10, timeout 1/10, syntax_error 3/10
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from verl.trainer.ppo.eval_metrics import (
    STATUSES,
    compute_eval_metrics,
    format_metrics_table,
    pass_ratio,
    plot_status_distribution,
    response_status,
)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
SHIPPED = os.path.join(REPO, "examples/phase0/data/code_contests.parquet")

# --------------------------------------------------------------------------------------------------------------
# Pure maths


@pytest.mark.parametrize(
    "results, stderr, status",
    [
        ([True, True], None, "success"),
        ([True, False, -2], None, "wrong_answer"),  # the first failing case decides
        ([-2, False], None, "runtime_error"),
        ([-2], "Traceback...\n  File x\nSyntaxError: invalid syntax\n", "syntax_error"),
        ([-2], "  File x\nIndentationError: expected an indented block\n", "syntax_error"),
        ([-2], "Traceback...\nValueError: SyntaxError: in a message\n", "runtime_error"),
        ([True, -3], None, "timeout"),
        ([-4, -4], None, "syntax_error"),  # compile error
        ([False, -1], None, "api_error"),  # any unknown verdict makes the whole response unknown
        ([], None, "syntax_error"),  # no code block
    ],
)
def test_response_status(results, stderr, status):
    metadata = [{"stderr": stderr} for _ in results]
    assert response_status(results, metadata) == status


def test_pass_ratio_counts_only_true():
    assert pass_ratio([True, False, -2, True]) == 0.5
    assert pass_ratio([1, True]) == 0.5  # 1 is not True
    assert pass_ratio([]) == 0.0


def _record(source, prompt, response, status, score, **extra):
    return {"data_source": source, "prompt_index": prompt, "response_index": response, "status": status, "score": score}


def test_compute_eval_metrics_by_hand():
    records = [
        # dataset a: prompt 0 first response wrong, prompt 1 first response right
        _record("a", 0, 1, "success", 1.0) | {"tokens": 10, "latency_s": 1.0},
        _record("a", 0, 0, "wrong_answer", 0.5) | {"tokens": 30, "latency_s": 3.0},
        _record("a", 1, 0, "success", 1.0) | {"tokens": 20, "latency_s": 2.0},
        _record("a", 1, 1, "timeout", 0.0) | {"tokens": None, "latency_s": 4.0},
        _record("b", 0, 0, "api_error", 0.0),
    ]
    m = compute_eval_metrics(records)
    assert m["eval/a/accepted_at_1"] == 0.5  # prompt 0: wrong_answer, prompt 1: success
    assert m["eval/a/pass_ratio_mean"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)  # 0.625
    assert m["test_score/a"] == pytest.approx(((1 + 0.5) / 2 + (1 + 0) / 2) / 2)  # 0.625
    assert [m[f"eval/a/status/{s}"] for s in STATUSES] == [0.5, 0.25, 0.0, 0.0, 0.25, 0.0]
    assert (m["eval/a/num_prompts"], m["eval/a/num_responses"]) == (2.0, 4.0)
    assert (m["eval/a/tokens/mean"], m["eval/a/tokens/min"], m["eval/a/tokens/max"]) == (20.0, 10.0, 30.0)
    # latency 1,2,3,4: p50 at position 1.5 -> 2.5; p90 at position 2.7 -> 3 + 0.7 * (4 - 3) = 3.7
    assert m["eval/a/latency_s/mean"] == 2.5 and m["eval/a/latency_s/p50"] == 2.5
    assert m["eval/a/latency_s/p90"] == pytest.approx(3.7) and m["eval/a/latency_s/max"] == 4.0
    assert m["eval/b/status/api_error"] == 1.0 and m["eval/b/accepted_at_1"] == 0.0
    assert "eval/b/tokens/mean" not in m and "eval/b/latency_s/mean" not in m
    with pytest.raises(ValueError, match="unknown status 'ok'"):
        compute_eval_metrics([_record("a", 0, 0, "ok", 1.0)])


def test_table_and_chart(tmp_path):
    m = compute_eval_metrics([_record("a", 0, 0, "success", 1.0), _record("b", 0, 0, "timeout", 0.0)])
    table = format_metrics_table(m).splitlines()
    assert table[0].split(" | ")[:5] == ["dataset", "prompts", "responses", "accepted@1", "pass_ratio"]
    assert table[2].startswith("a ") and "1.0000" in table[2] and table[3].startswith("b ")
    png = plot_status_distribution(m, tmp_path / "chart" / "status.png")
    with open(png, "rb") as fp:
        assert fp.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def sandbox_url():
    from verl.utils.sandbox import EmbeddedSandbox

    with EmbeddedSandbox() as sandbox:
        yield sandbox.url


def _fenced(code: str) -> str:
    return f"Sure.\n```python\n{code}```\n"


@pytest.fixture(scope="module")
def fixture_parquet(tmp_path_factory):
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(SHIPPED).head(5).copy()
    ref = [info["reference_solution"] for info in frame["extra_info"]]
    frame["responses"] = [
        [_fenced(ref[0]), _fenced("a, b = map(int, input().split())\nprint(abs(a + b))\n")],
        [_fenced("input()\nprint(input().split()[0])\n"), _fenced(ref[1])],
        [_fenced("raise RuntimeError('boom')\n"), _fenced(ref[2])],
        [_fenced("import time\ntime.sleep(60)\n"), _fenced("print(sum(ch in 'aeiou' for ch in input()\n")],
        [_fenced("for i in range(3)\n    print(i)\n"), "I would loop over the numbers and print them."],
    ]
    frame["response_tokens"] = [[10 * (i + 1), 10 * (i + 1) + 5] for i in range(5)]  # 10, 15, ..., 55
    frame["response_latency_s"] = [float(i + 1) for i in range(5)]  # one number per row: both responses
    path = tmp_path_factory.mktemp("eval") / "responses.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


EXPECTED = {
    "eval/phase0_code/accepted_at_1": 0.2,
    "eval/phase0_code/pass_ratio_mean": 0.45,
    "eval/phase0_code/status/success": 0.3,
    "eval/phase0_code/status/wrong_answer": 0.2,
    "eval/phase0_code/status/api_error": 0.0,
    "eval/phase0_code/status/runtime_error": 0.1,
    "eval/phase0_code/status/timeout": 0.1,
    "eval/phase0_code/status/syntax_error": 0.3,
    "eval/phase0_code/num_prompts": 5.0,
    "eval/phase0_code/num_responses": 10.0,
    "test_score/phase0_code": 0.45,
    "eval/phase0_code/tokens/mean": 32.5,
    "eval/phase0_code/tokens/min": 10.0,
    "eval/phase0_code/tokens/max": 55.0,
    "eval/phase0_code/latency_s/mean": 3.0,  # 1,1,2,2,3,3,4,4,5,5
    "eval/phase0_code/latency_s/p50": 3.0,
    "eval/phase0_code/latency_s/p90": 5.0,
    "eval/phase0_code/latency_s/max": 5.0,
}


def test_cli_end_to_end_writes_table_jsonl_and_png(fixture_parquet, sandbox_url, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "verl.trainer.main_eval",
        f"data.path={fixture_parquet}",
        f"sandbox_fusion.url={sandbox_url}",
        "sandbox_fusion.timeout=2",
        f"output.dir={out}",
        "trainer.logger=[file]",
    ]
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(tmp_path / "tracking.jsonl")}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "accepted@1" in proc.stdout and "phase0_code" in proc.stdout

    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["data"]
    assert metrics == pytest.approx(EXPECTED)
    tracked = json.loads((tmp_path / "tracking.jsonl").read_text().splitlines()[-1])
    assert tracked["step"] == 0 and tracked["data"] == pytest.approx(EXPECTED)

    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["response_index"], r["status"]) for r in results] == [
        (0, 0, "success"),
        (0, 1, "wrong_answer"),
        (1, 0, "wrong_answer"),
        (1, 1, "success"),
        (2, 0, "runtime_error"),
        (2, 1, "success"),
        (3, 0, "timeout"),
        (3, 1, "syntax_error"),
        (4, 0, "syntax_error"),
        (4, 1, "syntax_error"),
    ]
    assert results[1]["case_results"] == [True, True, True, False]
    assert results[4]["first_failure"]["status"] == "runtime_error" and "boom" in results[4]["first_failure"]["stderr"]
    assert results[9]["first_failure"]["error"] == "Invalid completion (missing code block)"
    with open(out / "status.png", "rb") as fp:
        assert fp.read(8) == b"\x89PNG\r\n\x1a\n"


def _config(*overrides):
    from verl.utils.config import compose_config

    return compose_config("evaluation", list(overrides))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_sandbox_gives_api_error_not_a_crash(fixture_parquet, tmp_path, capsys):
    from verl.trainer.main_eval import run_eval

    url = f"http://127.0.0.1:{_closed_port()}"
    config = _config(f"data.path={fixture_parquet}", f"sandbox_fusion.url={url}", f"output.dir={tmp_path}")
    metrics = run_eval(config)
    assert f"sandbox_fusion.url='{url}/run_code' is unreachable" in capsys.readouterr().out
    # every response with a program is api_error; the one without a code block never reached the sandbox
    assert metrics["eval/phase0_code/status/api_error"] == 0.9
    assert metrics["eval/phase0_code/status/syntax_error"] == 0.1
    assert metrics["eval/phase0_code/accepted_at_1"] == 0.0


def test_bad_input_names_the_key(fixture_parquet, tmp_path):
    from verl.trainer.main_eval import run_eval

    with pytest.raises(ValueError, match=r"data.response_key='outputs': no such column .*Set data.response_key"):
        run_eval(_config(f"data.path={fixture_parquet}", "data.response_key=outputs", f"output.dir={tmp_path}"))
    with pytest.raises(FileNotFoundError, match=r"data.path=.*missing.parquet"):
        run_eval(_config(f"data.path={tmp_path}/missing.parquet"))


def test_custom_reward_function_replaces_the_sandbox(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    from verl.trainer.main_eval import run_eval

    scorer = tmp_path / "scorer.py"
    scorer.write_text(
        "def score(data_source, solution_str, ground_truth, extra_info=None):\n    return solution_str == ground_truth\n"
    )
    path = tmp_path / "qa.parquet"
    rows = {
        "data_source": ["qa", "qa", "qa"],
        "responses": [["4", "5"], ["no"], []],  # the last row's generation failed: left out, with a warning
        "reward_model": [{"ground_truth": "4"}, {"ground_truth": "yes"}, {"ground_truth": "?"}],
    }
    pd.DataFrame(rows).to_parquet(path)
    metrics = run_eval(
        _config(
            f"data.path={path}",
            f"custom_reward_function.path={scorer}",
            "custom_reward_function.name=score",
            f"output.dir={tmp_path}/o",
            "output.plot=false",
        )
    )
    assert "1 row(s) have no responses" in capsys.readouterr().out
    assert metrics["eval/qa/accepted_at_1"] == 0.5  # prompt 0 first response right, prompt 1 wrong
    assert metrics["eval/qa/pass_ratio_mean"] == pytest.approx(1 / 3)
    assert metrics["eval/qa/status/success"] == pytest.approx(1 / 3)
    assert metrics["eval/qa/status/wrong_answer"] == pytest.approx(2 / 3)


def test_code_source_with_bad_test_cases_names_the_row(tmp_path):
    pd = pytest.importorskip("pandas")
    from verl.trainer.main_eval import run_eval

    path = tmp_path / "bad.parquet"
    rows = {"data_source": ["codecontests"], "responses": [["x"]], "reward_model": [{"ground_truth": "{}"}]}
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(ValueError, match=r"row 0 \(codecontests\): bad test cases"):
        run_eval(_config(f"data.path={path}", f"output.dir={tmp_path}"))
