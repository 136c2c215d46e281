"""Entry point: ``python -m verl.trainer.main_eval data.path=responses.parquet [sandbox_fusion.url=...]``.

Judges the responses that ``main_generation_server`` wrote (column ``data.response_key``, a list of n strings per
row) and reports per-dataset metrics (:mod:`verl.trainer.ppo.eval_metrics`): ``eval/<dataset>/accepted_at_1``,
``pass_ratio_mean``, the status distribution, tokens and latency, and verl's ``test_score/<dataset>``.

A row is judged in the sandbox when its ``ground_truth`` holds test cases (``inputs``/``outputs`` or
``assert_case``; under verl's code sources ``codecontests``, ``apps``, ``codeforces``, ``taco`` anything else is an
error naming the row); other rows go to ``default_compute_score`` (status ``success`` when the score is >= 1, else
``wrong_answer``).
``custom_reward_function.path`` replaces both, as in verl. Without ``sandbox_fusion.url`` the embedded sandbox runs
the code. An unreachable sandbox is reported up front and its responses are counted as ``api_error``.

Outputs (``output.dir``): ``metrics.jsonl`` (one ``{"step": 0, "data": {...}}`` line appended per run, readable by
``python -m verl.utils.plotting``), ``results.jsonl`` (one line per response), ``status.png``; a table on the
console; ``trainer.logger`` backends (tensorboard, wandb, ...) through :class:`verl.utils.tracking.Tracking`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hydra
from omegaconf import OmegaConf

from verl.trainer.ppo import eval_metrics

COMMAND = "python -m verl.trainer.main_eval"


@hydra.main(config_path="config", config_name="evaluation", version_base=None)
def main(config) -> None:
    from verl.utils.cli_errors import exit_on_user_error, preflight

    with exit_on_user_error(COMMAND):
        with preflight():  # the data file and its columns are read first; a problem there is the user's to fix
            frame = load_responses(config.data)
        run_eval(config, frame=frame)


def load_responses(data_config) -> Any:
    """Read ``data.path`` and check the columns the evaluation needs; errors name the key and the fix."""
    import pandas as pd

    path = os.path.expanduser(str(data_config.path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.path={path!r} does not exist; pass the parquet written by the generation step.")
    frame = pd.read_parquet(path)
    for key in ("response_key", "data_source_key", "reward_model_key"):
        column = data_config[key]
        if column not in frame.columns:
            raise ValueError(
                f"data.{key}={column!r}: no such column in {path}; columns are {list(frame.columns)}. "
                f"Set data.{key}=<column>."
            )
    return frame


def _per_response(value: Any, n: int) -> list[Any]:
    """A row's token/latency value spread over its n responses (a list is aligned, a scalar repeated)."""
    if value is None or (isinstance(value, float) and value != value):
        return [None] * n
    if hasattr(value, "__len__") and not isinstance(value, str):
        values = [v.item() if hasattr(v, "item") else v for v in value]  # numpy scalars -> JSON-friendly numbers
        return values + [None] * (n - len(values))
    return [value.item() if hasattr(value, "item") else value] * n


def _is_code_row(row_index: int, data_source: str, ground_truth: Any, strict: bool = True) -> bool:
    """Whether the sandbox judges this row; a code data source with malformed test cases is an error naming it."""
    from verl.utils.reward_score import CODE_DATA_SOURCES
    from verl.utils.reward_score.sandbox_fusion import parse_test_cases

    try:
        parse_test_cases(ground_truth)
        return True
    except ValueError as exc:
        if strict and data_source in CODE_DATA_SOURCES:
            raise ValueError(f"row {row_index} ({data_source}): bad test cases in ground_truth: {exc}") from exc
        return False


def _make_judge(config, needs_sandbox: bool) -> Any:
    """``judge(data_source, response, ground_truth, extra_info) -> (status, score, detail)``.

    The sandbox (the embedded one when ``sandbox_fusion.url`` is null) is only resolved when a row needs it.
    """
    from verl.trainer.ppo.reward import get_custom_reward_fn
    from verl.utils.reward_score import default_compute_score
    from verl.utils.reward_score.sandbox_fusion import run_test_cases
    from verl.utils.reward_score.sandbox_fusion.utils import ping_sandbox, resolve_sandbox_url

    custom_fn = get_custom_reward_fn(config)
    sf = config.sandbox_fusion
    url = None
    if needs_sandbox and custom_fn is None:
        url = resolve_sandbox_url(sf.url)
        problem = ping_sandbox(url)
        if problem:
            print(f"WARNING: sandbox_fusion.url={url!r} is unreachable ({problem}); code responses will be api_error.")
    semaphore = threading.BoundedSemaphore(int(sf.max_concurrent))

    def judge(is_code: bool, data_source: str, response: str, ground_truth: Any, extra_info: Any):
        if custom_fn is None and is_code:
            results, meta = run_test_cases(
                url, semaphore, int(sf.memory_limit_mb), response, ground_truth, bool(sf.continuous), float(sf.timeout)
            )
            # The case that decided the status: the first one not passed (or the extraction error).
            failed = next((m for m, r in zip(meta, results) if r is not True), None if results else meta[0])
            detail = {"case_results": [r if isinstance(r, bool) else int(r) for r in results], "first_failure": None}
            if failed is not None:
                keys = ("case_index", "status", "error", "api_request_error", "stderr")
                detail["first_failure"] = {k: failed.get(k) for k in keys}
                detail["first_failure"]["stderr"] = (failed.get("stderr") or "")[-500:]
            return eval_metrics.response_status(results, meta), eval_metrics.pass_ratio(results), detail
        fn = custom_fn or default_compute_score
        score = fn(data_source, response, ground_truth, extra_info)
        score = float(score["score"] if isinstance(score, dict) else score)
        return ("success" if score >= 1.0 else "wrong_answer"), score, {}

    return judge


def judge_responses(frame, config) -> list[dict[str, Any]]:
    """One record per (row, response), in row order; the sandbox work runs ``max_concurrent`` at a time."""
    from tqdm import tqdm

    data = config.data
    jobs, skipped = [], []
    for row_index, row in enumerate(frame.to_dict("records")):
        responses = row[data.response_key]
        responses = [responses] if isinstance(responses, str) else list(responses if responses is not None else [])
        if not responses:  # a generation row that failed (main_generation_server records it with its error)
            skipped.append(row_index)
            continue
        reward_model = row[data.reward_model_key]
        if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
            raise ValueError(f"row {row_index}: column {data.reward_model_key!r} has no 'ground_truth' entry.")
        tokens = _per_response(row.get(data.tokens_key), len(responses))
        latency = _per_response(row.get(data.latency_key), len(responses))
        data_source, ground_truth = str(row[data.data_source_key]), reward_model["ground_truth"]
        is_code = _is_code_row(row_index, data_source, ground_truth, strict=not config.custom_reward_function.path)
        for j, response in enumerate(responses):
            base = {"prompt_index": row_index, "response_index": j, "data_source": data_source}
            base.update(tokens=tokens[j], latency_s=latency[j])
            jobs.append((base, is_code, str(response), ground_truth, row.get("extra_info")))

    if skipped:
        print(f"WARNING: {len(skipped)} row(s) have no responses and are left out of the metrics: rows {skipped[:20]}")
    judge = _make_judge(config, needs_sandbox=any(job[1] for job in jobs))

    def run(job):
        base, is_code, response, ground_truth, extra_info = job
        status, score, detail = judge(is_code, base["data_source"], response, ground_truth, extra_info)
        return {**base, "status": status, "score": score, **detail}

    with ThreadPoolExecutor(max_workers=max(1, int(config.sandbox_fusion.max_concurrent))) as pool:
        return list(tqdm(pool.map(run, jobs), total=len(jobs), desc="judging", mininterval=2.0))


def report(metrics: dict[str, float], records: list[dict[str, Any]], config) -> None:
    """Console table, ``metrics.jsonl`` / ``results.jsonl`` / ``status.png`` in ``output.dir``, tracking backends."""
    print(eval_metrics.format_metrics_table(metrics))
    for key, value in metrics.items():
        if "/tokens/" in key or "/latency_s/" in key or key.startswith("test_score/"):
            print(f"{key}: {value:.4f}")
    out_dir = os.path.expanduser(str(config.output.dir))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as fp:
        meta = {"data_path": str(config.data.path), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        fp.write(json.dumps({"step": 0, "data": metrics, **meta}) + "\n")
    if config.output.save_results:
        with open(os.path.join(out_dir, "results.jsonl"), "w", encoding="utf-8") as fp:
            for record in records:
                fp.write(json.dumps(record, default=str) + "\n")
    if config.output.plot:
        eval_metrics.plot_status_distribution(metrics, os.path.join(out_dir, "status.png"), title=str(config.data.path))
    print(f"evaluation outputs in {out_dir}")
    backends = list(config.trainer.logger or [])
    if backends:
        from verl.utils.tracking import Tracking

        tracker = Tracking(
            config.trainer.project_name,
            config.trainer.experiment_name,
            default_backend=backends,
            config=OmegaConf.to_container(config, resolve=True),
        )
        tracker.log(metrics, step=0)
        tracker.finish()


def run_eval(config, frame: Any = None) -> dict[str, float]:
    """Judge every response of ``data.path`` (or of ``frame``, already loaded from it), report, return the metrics."""
    if frame is None:
        frame = load_responses(config.data)
    records = judge_responses(frame, config)
    if not records:
        raise ValueError(f"data.path={config.data.path!r} has no responses to judge.")
    metrics = eval_metrics.compute_eval_metrics(records)
    report(metrics, records, config)
    return metrics


if __name__ == "__main__":
    from verl.utils.cli_errors import run_hydra_cli

    config_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
    run_hydra_cli(main, config_dir=config_dir, config_name="evaluation", command=COMMAND)
