"""Phase 0 evaluation maths: a status per judged response, then per-dataset metrics, a table and a status chart.

Status of one response, from its per-case codes (see :mod:`verl.utils.reward_score.sandbox_fusion.utils`):

* ``success``: every case passed (``True``);
* ``api_error``: some case got -1 (the sandbox could not judge it, so the verdict is unknown);
* otherwise the first case that did not pass decides, as an online judge reports "wrong answer on test 3":
  ``False`` -> ``wrong_answer``, -2 -> ``runtime_error``, -3 -> ``timeout``, -4 -> ``syntax_error``;
  a -2 whose stderr ends in ``SyntaxError``/``IndentationError``/``TabError`` is a ``syntax_error`` too
  (Python has no compile step, so the sandbox reports its syntax errors as runtime errors);
* no cases run because the response has no code block: ``syntax_error`` (there is no program to run).

Metrics per dataset ``d`` (the row's data source), over ``P`` prompts with ``n`` responses each:

==================================  ===================================================================
``eval/d/accepted_at_1``            mean over prompts of [first response is ``success``]
``eval/d/pass_ratio_mean``          mean over all responses of (cases passed / cases run)
``eval/d/status/<status>``          fraction of all responses with that status (all six, zeros included)
``eval/d/num_prompts``, ``num_responses``
``eval/d/tokens/{mean,min,max}``    response tokens, when the rows carry them
``eval/d/latency_s/{mean,p50,p90,max}``  generation latency in seconds, when the rows carry them
``test_score/d``                    verl's ``main_eval`` number: mean over prompts of the mean response score
==================================  ===================================================================
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "STATUSES",
    "compute_eval_metrics",
    "format_metrics_table",
    "pass_ratio",
    "plot_status_distribution",
    "response_status",
]

STATUSES = ("success", "wrong_answer", "api_error", "runtime_error", "timeout", "syntax_error")
_STATUS_BY_CODE = {-2: "runtime_error", -3: "timeout", -4: "syntax_error"}
_PY_SYNTAX_ERRORS = ("SyntaxError", "IndentationError", "TabError")


def _is_python_syntax_error(stderr: str | None) -> bool:
    lines = [line for line in (stderr or "").splitlines() if line.strip()]
    return bool(lines) and lines[-1].lstrip().startswith(_PY_SYNTAX_ERRORS)


def response_status(results: Sequence[bool | int], metadata: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The status of one response from its per-case codes (rules in the module docstring).

    Args:
        results: per-case codes ``True``/``False``/-1/-2/-3/-4 (empty: no program was found).
        metadata: per-case metadata from ``check_correctness`` (only ``stderr`` is read), aligned with ``results``.

    Example:
        >>> response_status([True, True]), response_status([True, False, -3]), response_status([-3, -1])
        ('success', 'wrong_answer', 'api_error')
    """
    if not results:
        return "syntax_error"
    if all(r is True for r in results):
        return "success"
    if any(r is not True and r is not False and r == -1 for r in results):
        return "api_error"
    index, code = next((i, r) for i, r in enumerate(results) if r is not True)
    if code is False:
        return "wrong_answer"
    if code == -2 and metadata is not None and index < len(metadata):
        if _is_python_syntax_error(metadata[index].get("stderr")):
            return "syntax_error"
    if code not in _STATUS_BY_CODE:
        raise ValueError(f"unknown per-case result {code!r}; expected True, False, -1, -2, -3 or -4")
    return _STATUS_BY_CODE[code]


def pass_ratio(results: Sequence[bool | int]) -> float:
    """Cases passed / cases run (0.0 when none ran). Example: ``pass_ratio([True, False, -2, True]) == 0.5``."""
    return sum(r is True for r in results) / len(results) if results else 0.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of already sorted values."""
    position = (len(sorted_values) - 1) * q
    lo, hi = math.floor(position), math.ceil(position)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def compute_eval_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-dataset metrics (table in the module docstring) from one record per judged response.

    Args:
        records: dicts with ``data_source``, ``prompt_index``, ``response_index`` (0 = first response),
            ``status`` (one of ``STATUSES``), ``score`` (``pass_ratio`` for code), and optionally ``tokens``
            and ``latency_s`` (numbers or None).

    Returns:
        ``{metric_name: value}``, sorted by name.
    """
    by_source: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        if record["status"] not in STATUSES:
            raise ValueError(f"unknown status {record['status']!r}; expected one of {STATUSES}")
        by_source[str(record["data_source"])].append(record)
    metrics: dict[str, float] = {}
    for source, rows in by_source.items():
        prefix = f"eval/{source}"
        by_prompt: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            by_prompt[row["prompt_index"]].append(row)
        firsts = [min(group, key=lambda r: r["response_index"]) for group in by_prompt.values()]
        metrics[f"{prefix}/accepted_at_1"] = sum(r["status"] == "success" for r in firsts) / len(firsts)
        metrics[f"{prefix}/pass_ratio_mean"] = sum(float(r["score"]) for r in rows) / len(rows)
        for status in STATUSES:
            metrics[f"{prefix}/status/{status}"] = sum(r["status"] == status for r in rows) / len(rows)
        metrics[f"{prefix}/num_prompts"] = float(len(by_prompt))
        metrics[f"{prefix}/num_responses"] = float(len(rows))
        prompt_means = [sum(float(r["score"]) for r in group) / len(group) for group in by_prompt.values()]
        metrics[f"test_score/{source}"] = sum(prompt_means) / len(prompt_means)
        tokens = sorted(float(r["tokens"]) for r in rows if r.get("tokens") is not None)
        if tokens:
            metrics[f"{prefix}/tokens/mean"] = sum(tokens) / len(tokens)
            metrics[f"{prefix}/tokens/min"] = tokens[0]
            metrics[f"{prefix}/tokens/max"] = tokens[-1]
        latency = sorted(float(r["latency_s"]) for r in rows if r.get("latency_s") is not None)
        if latency:
            metrics[f"{prefix}/latency_s/mean"] = sum(latency) / len(latency)
            metrics[f"{prefix}/latency_s/p50"] = _percentile(latency, 0.5)
            metrics[f"{prefix}/latency_s/p90"] = _percentile(latency, 0.9)
            metrics[f"{prefix}/latency_s/max"] = latency[-1]
    return dict(sorted(metrics.items()))


def _datasets(metrics: Mapping[str, float]) -> list[str]:
    return sorted({key[len("eval/") : -len("/accepted_at_1")] for key in metrics if key.endswith("/accepted_at_1")})


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A plain-text table: one row per dataset, columns accepted@1, pass ratio, then each status fraction."""
    columns = ["dataset", "prompts", "responses", "accepted@1", "pass_ratio", *STATUSES]
    rows = []
    for source in _datasets(metrics):
        p = f"eval/{source}"
        rows.append(
            [
                source,
                f"{metrics[f'{p}/num_prompts']:.0f}",
                f"{metrics[f'{p}/num_responses']:.0f}",
                f"{metrics[f'{p}/accepted_at_1']:.4f}",
                f"{metrics[f'{p}/pass_ratio_mean']:.4f}",
                *(f"{metrics[f'{p}/status/{s}']:.4f}" for s in STATUSES),
            ]
        )
    widths = [max(len(col), *(len(row[i]) for row in rows)) if rows else len(col) for i, col in enumerate(columns)]
    lines = [" | ".join(col.ljust(w) for col, w in zip(columns, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plot_status_distribution(metrics: Mapping[str, float], out_png: str | os.PathLike, title: str | None = None) -> str:
    """Write a grouped bar chart of the status fractions (one group per status, one bar per dataset) to a PNG.

    Uses matplotlib's Agg canvas on a private figure, so the global pyplot backend is never touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sources = _datasets(metrics)
    if not sources:
        raise ValueError("no eval/<dataset>/accepted_at_1 metric found; nothing to plot")
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(sources)
    for j, source in enumerate(sources):
        values = [metrics[f"eval/{source}/status/{s}"] for s in STATUSES]
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(STATUSES))]
        bars = ax.bar(xs, values, width=width, label=source)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize="x-small")
    ax.set_xticks(range(len(STATUSES)), STATUSES)
    ax.set_ylim(0.0, 1.1)
    ax.set_ylabel("fraction of responses")
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(title or "status distribution")
    out_png = os.fspath(out_png)
    if os.path.dirname(out_png):
        os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
