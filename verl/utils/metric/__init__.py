"""Metric reduction helpers (see :mod:`verl.utils.metric.utils`)."""

from __future__ import annotations

from verl.utils.metric.utils import AggregationType, Metric, reduce_metrics

__all__ = ["AggregationType", "Metric", "reduce_metrics"]
