"""Reducing per-micro-batch metric lists to one number per key.

Workers return ``{name: [v0, v1, ...]}`` (one value per micro-batch, or per DP rank after gathering). The
trainer turns that into ``{name: float}`` with :func:`reduce_metrics`. A plain list is reduced by a rule on
its name (``max`` in the name -> max, ``min`` -> min, otherwise mean); a :class:`Metric` carries its own
aggregation, which is how a worker asks for a sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

import numpy as np
import torch

__all__ = ["AggregationType", "Metric", "reduce_metrics"]


class AggregationType(Enum):
    """How a list of values collapses to one."""

    MEAN = "mean"
    SUM = "sum"
    MIN = "min"
    MAX = "max"


_REDUCERS = {
    AggregationType.MEAN: np.mean,
    AggregationType.SUM: np.sum,
    AggregationType.MIN: np.min,
    AggregationType.MAX: np.max,
}


def _to_scalar(value: Any) -> float | int:
    """Return a Python number for ``value``; tensors and arrays must hold exactly one element."""
    if isinstance(value, torch.Tensor | np.ndarray):
        numel = value.size if isinstance(value, np.ndarray) else value.numel()
        if numel != 1:
            raise ValueError(f"a metric value must be a scalar, got an array of shape {tuple(value.shape)}")
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float):
        return value
    raise ValueError(f"a metric value must be a number or a one-element tensor, got {type(value).__name__}")


class Metric:
    """A list of values that knows how it should be aggregated.

    Args:
        aggregation: ``"mean" | "sum" | "min" | "max"`` or an :class:`AggregationType`.
        value: optional first value (a number, a scalar tensor, a list of them, or another ``Metric``).

    Example:
        >>> m = Metric("sum", 1.0)
        >>> m.extend([2.0, 3.0])
        >>> m.aggregate()
        6.0
    """

    def __init__(self, aggregation: str | AggregationType, value: Any = None):
        if isinstance(aggregation, AggregationType):
            self.aggregation = aggregation
        else:
            try:
                self.aggregation = AggregationType(str(aggregation).lower())
            except ValueError:
                valid = [a.value for a in AggregationType]
                raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {valid}") from None
        self.values: list[float | int] = []
        if value is not None:
            if isinstance(value, list | tuple | Metric):
                self.extend(value)
            else:
                self.append(value)

    def __repr__(self) -> str:
        return f"Metric({self.aggregation.value!r}, values={self.values!r})"

    def append(self, value: Any) -> None:
        """Add one value; appending a ``Metric`` adds all of its values."""
        if isinstance(value, Metric):
            self.extend(value)
            return
        self.values.append(_to_scalar(value))

    def extend(self, values: Iterable[Any] | Metric) -> None:
        """Add many values; a ``Metric`` argument must have the same aggregation."""
        if isinstance(values, Metric):
            if values.aggregation != self.aggregation:
                raise ValueError(
                    f"cannot merge a {values.aggregation.value!r} metric into a {self.aggregation.value!r} metric"
                )
            self.values.extend(values.values)
            return
        for value in values:
            self.append(value)

    def init_list(self) -> Metric:
        """A new empty ``Metric`` with the same aggregation."""
        return Metric(self.aggregation)

    def aggregate(self) -> float:
        """The aggregated value; NaN when no value was recorded."""
        if not self.values:
            return float("nan")
        return float(_REDUCERS[self.aggregation](np.asarray(self.values, dtype=np.float64)))

    @staticmethod
    def aggregate_dp(metrics: list[Metric]) -> float:
        """Aggregate the same metric reported by several data-parallel ranks.

        ``MEAN``/``SUM`` first average position-wise across ranks (each rank saw a slice of the same
        micro-batches), then aggregate; so every rank must report the same number of values. ``MIN``/``MAX``
        take the extreme over all values of all ranks.

        Raises:
            ValueError: aggregations differ, or MEAN/SUM value lists have different lengths.
        """
        if not metrics:
            return float("nan")
        kind = metrics[0].aggregation
        if any(m.aggregation != kind for m in metrics):
            raise ValueError("aggregate_dp needs metrics with one aggregation type")
        if kind in (AggregationType.MIN, AggregationType.MAX):
            flat = [v for m in metrics for v in m.values]
            return float(_REDUCERS[kind](np.asarray(flat, dtype=np.float64))) if flat else float("nan")
        lengths = {len(m.values) for m in metrics}
        if len(lengths) != 1:
            raise ValueError(
                f"aggregate_dp needs the same number of values on every rank, got lengths {sorted(lengths)}"
            )
        per_position = np.asarray([m.values for m in metrics], dtype=np.float64).mean(axis=0)
        return float(_REDUCERS[kind](per_position)) if per_position.size else float("nan")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], aggregation: str | AggregationType) -> dict[str, Metric]:
        """Wrap every value of ``data`` in a ``Metric`` with the given aggregation."""
        return {key: cls(aggregation, value) for key, value in data.items()}


def _as_float_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy().reshape(-1)
    if isinstance(values, int | float | np.generic):
        return np.asarray([values], dtype=np.float64)
    flat = []
    for value in values:
        if isinstance(value, torch.Tensor):
            flat.extend(value.detach().float().cpu().reshape(-1).tolist())
        else:
            flat.extend(np.asarray(value, dtype=np.float64).reshape(-1).tolist())
    return np.asarray(flat, dtype=np.float64)


def reduce_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Collapse each metric's list of values to one float.

    Args:
        metrics: ``{name: list of numbers | tensor | Metric}``.

    Returns:
        ``{name: value}``: a ``Metric`` uses its own aggregation; otherwise max if ``"max"`` is in the name,
        min if ``"min"`` is, else the mean. An empty list gives NaN.

    Example:
        >>> reduce_metrics({"loss": [1.0, 3.0], "grad/max": [1.0, 5.0]})
        {'loss': 2.0, 'grad/max': 5.0}
    """
    reduced: dict[str, float] = {}
    for key, values in metrics.items():
        if isinstance(values, Metric):
            reduced[key] = values.aggregate()
            continue
        arr = _as_float_array(values)
        if arr.size == 0:
            reduced[key] = float("nan")
        elif "max" in key:
            reduced[key] = float(np.max(arr))
        elif "min" in key:
            reduced[key] = float(np.min(arr))
        else:
            reduced[key] = float(np.mean(arr))
    return reduced
