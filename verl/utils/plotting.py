"""Plot metrics from the ``file`` tracking backend's JSONL into a PNG.

Usage::

    python -m verl.utils.plotting outputs/my_project/my_run.jsonl reward.png --keys critic/score/mean
    python -m verl.utils.plotting metrics.jsonl curves.png --keys critic/score/mean response_length/mean

Each key gets its own panel: the raw values as a thin line and an exponentially smoothed line on top. A
resumed run appends to the same file and logs some steps again; the last value logged for a step wins. A
truncated last line (a run killed mid-write) is skipped.

Rendering uses matplotlib's Agg canvas directly, so importing or calling this never changes the global
matplotlib backend (safe inside notebooks and on machines without a display).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence

__all__ = ["load_metric_series", "plot_metrics", "smooth"]


def load_metric_series(jsonl_path: str | os.PathLike, keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Read ``{"step": s, "data": {...}}`` lines and return ``{key: (steps, values)}`` sorted by step.

    Non-numeric and non-finite values are skipped; a step logged twice keeps its last value.
    """
    per_key: dict[str, dict[int, float]] = {key: {} for key in keys}
    with open(jsonl_path, encoding="utf-8") as fp:
        for line in fp:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # partial line from a killed run
            data, step = record.get("data", {}), record.get("step")
            if step is None:
                continue
            for key in keys:
                value = data.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    per_key[key][int(step)] = float(value)
    return {key: (sorted(points), [points[s] for s in sorted(points)]) for key, points in per_key.items()}


def smooth(values: Sequence[float], weight: float = 0.6) -> list[float]:
    """Debiased exponential moving average (TensorBoard-style); ``weight=0`` returns the values unchanged.

    Example:
        >>> smooth([1.0, 3.0], weight=0.5)  # second point: (0.5*0.5 + 0.5*3) / (1 - 0.5**2) = 2.333...
        [1.0, 2.3333333333333335]
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, running = [], 0.0
    for i, value in enumerate(values, start=1):
        running = weight * running + (1.0 - weight) * value
        out.append(running / (1.0 - weight**i))  # divide out the bias towards the zero start
    return out


def plot_metrics(
    jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    keys: Sequence[str] = ("critic/score/mean",),
    title: str | None = None,
    smoothing: float = 0.6,
) -> str:
    """Write one panel per metric key to ``out_png``.

    Args:
        jsonl_path: metrics file written by ``Tracking(..., default_backend="file")``.
        out_png: image to write (parent folders are created).
        keys: metric names to plot, e.g. ``("critic/score/mean", "response_length/mean")``.
        title: figure title; defaults to the JSONL file name.
        smoothing: EMA weight of the smoothed line, in [0, 1).

    Returns:
        ``out_png`` as a string.

    Raises:
        ValueError: none of ``keys`` has a numeric value in the file (the message lists the keys it has).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [keys] if isinstance(keys, str) else list(keys)
    series = load_metric_series(jsonl_path, keys)
    present = [key for key in keys if series[key][0]]
    if not present:
        raise ValueError(f"none of {keys} found in {jsonl_path}; it has: {sorted(_available_keys(jsonl_path))}")

    fig = Figure(figsize=(7.0, 2.6 * len(present) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only; pyplot's global backend is untouched
    axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, present):
        steps, values = series[key]
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1.0, label="raw")
        ax.plot(steps, smooth(values, smoothing), color="tab:blue", linewidth=2.0, label=f"EMA {smoothing:g}")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("step")
    fig.suptitle(title or os.path.basename(os.fspath(jsonl_path)))
    out_png = os.fspath(out_png)
    if os.path.dirname(out_png):
        os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def _available_keys(jsonl_path: str | os.PathLike) -> set[str]:
    keys: set[str] = set()
    with open(jsonl_path, encoding="utf-8") as fp:
        for line in fp:
            try:
                keys.update(json.loads(line).get("data", {}))
            except (json.JSONDecodeError, AttributeError):
                continue
    return keys


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot metrics from a verl file-logger JSONL into a PNG.")
    parser.add_argument("jsonl", help="metrics file ({root}/{project}/{experiment}.jsonl)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--keys", nargs="+", default=["critic/score/mean"], help="metric names to plot")
    parser.add_argument("--title", default=None, help="figure title (default: the JSONL file name)")
    parser.add_argument("--smoothing", type=float, default=0.6, help="EMA weight in [0, 1) (default 0.6)")
    args = parser.parse_args(argv)
    try:
        out = plot_metrics(args.jsonl, args.out, keys=args.keys, title=args.title, smoothing=args.smoothing)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
