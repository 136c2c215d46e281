"""reduce_metrics name rules and the Metric aggregation object."""

from __future__ import annotations

import math

import pytest
import torch

from verl.utils.metric import AggregationType, Metric, reduce_metrics


def test_reduce_metrics_uses_max_min_or_mean_by_name():
    out = reduce_metrics(
        {
            "actor/pg_loss": [1.0, 2.0, 6.0],  # mean: 9/3 = 3
            "perf/max_memory_allocated_gb": [1.0, 5.0, 2.0],  # "max" in name -> 5
            "global_seqlen/min": [4, 2, 9],  # "min" in name -> 2
        }
    )
    assert out == {"actor/pg_loss": 3.0, "perf/max_memory_allocated_gb": 5.0, "global_seqlen/min": 2.0}


def test_reduce_metrics_name_rule_checks_max_before_min_and_is_substring_based():
    out = reduce_metrics(
        {
            "rollout_corr/log_ppl_diff_max": [-1.0, 0.5, 0.25],  # max -> 0.5
            "rollout_corr/log_ppl_diff_min": [-1.0, 0.5, 0.25],  # min -> -1
            "x/min_to_max_gap": [3.0, 7.0],  # both substrings: "max" wins -> 7
            "x/maximum": [3.0, 7.0],  # substring, not a suffix -> 7
            "actor/clipfrac": [0.0, 0.5, 0.25, 0.25],  # mean: 1 / 4
        }
    )
    assert out == {
        "rollout_corr/log_ppl_diff_max": 0.5,
        "rollout_corr/log_ppl_diff_min": -1.0,
        "x/min_to_max_gap": 7.0,
        "x/maximum": 7.0,
        "actor/clipfrac": 0.25,
    }


def test_reduce_metrics_empty_list_is_nan_and_tensors_are_accepted():
    out = reduce_metrics({"empty": [], "t": [torch.tensor(1.0), torch.tensor(2.0)], "whole": torch.tensor([1.0, 4.0])})
    assert math.isnan(out["empty"])
    assert out["t"] == 1.5  # (1 + 2) / 2
    assert out["whole"] == 2.5  # (1 + 4) / 2


def test_reduce_metrics_honours_metric_aggregation_over_name():
    total = Metric("sum", [1.0, 2.0, 3.0])
    assert reduce_metrics({"tokens/min_whatever": total}) == {"tokens/min_whatever": 6.0}  # 1+2+3


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("mean", 2.5), ("sum", 10.0), ("min", 1.0), ("max", 4.0)],  # values 3,1,4,2: mean 10/4
)
def test_metric_aggregate(aggregation, expected):
    metric = Metric(aggregation)
    metric.extend([3.0, 1.0, 4.0, 2.0])
    assert metric.aggregate() == expected


def test_metric_construction_and_appends():
    assert Metric(AggregationType.SUM).aggregation is AggregationType.SUM
    assert Metric("MEAN", 5.0).values == [5.0]
    with pytest.raises(ValueError, match="unknown aggregation"):
        Metric("median")
    metric = Metric("mean")
    metric.append(torch.tensor(3.0))
    metric.append(1)
    metric.append(Metric("mean", [7.0, 8.0]))
    assert metric.values == [3.0, 1, 7.0, 8.0]
    with pytest.raises(ValueError):
        metric.append(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        metric.extend(Metric("sum"))
    assert metric.init_list().values == [] and metric.init_list().aggregation is AggregationType.MEAN
    assert math.isnan(Metric("max").aggregate())


def test_metric_aggregate_dp():
    # SUM/MEAN average position-wise across ranks first: [[1,2],[3,4]] -> [2,3]
    assert Metric.aggregate_dp([Metric("sum", [1.0, 2.0]), Metric("sum", [3.0, 4.0])]) == 5.0  # 2+3
    assert Metric.aggregate_dp([Metric("mean", [1.0, 2.0]), Metric("mean", [3.0, 4.0])]) == 2.5  # (2+3)/2
    # MIN/MAX take the extreme over everything
    assert Metric.aggregate_dp([Metric("max", [1.0, 2.0]), Metric("max", [3.0])]) == 3.0
    with pytest.raises(ValueError):
        Metric.aggregate_dp([Metric("sum", [1.0]), Metric("sum", [1.0, 2.0])])


def test_metric_from_dict():
    metrics = Metric.from_dict({"loss": 1.0, "acc": 0.5}, aggregation="max")
    assert metrics["loss"].values == [1.0] and metrics["acc"].aggregation is AggregationType.MAX
