"""The decision rules of ``benchmarks/spd_quality.py``: how a policy's decisions become tokens kept and accuracy,
the thresholds swept from the training split, and the Pareto front the report compares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "spd_quality", Path(__file__).resolve().parents[1] / "benchmarks" / "spd_quality.py"
)
spd_quality = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(spd_quality)


@pytest.fixture
def frame():
    import pandas as pd

    # row 0: mismatches at 1 and 3 of K=5; row 1: one at 0; row 2: none
    rows = [
        ([5, 6, 7, 8, 9], [5, 0, 7, 0, 9]),
        ([5, 6, 7], [0, 6, 7]),
        ([1, 2], [1, 2]),
    ]
    infos = [{"spd_draft_ids": d, "spd_target_ids": t} for d, t in rows]
    return pd.DataFrame(
        {"extra_info": infos, "spd_draft_ids": [r[0] for r in rows], "spd_target_ids": [r[1] for r in rows]}
    )


def test_a_policy_is_scored_by_its_first_rejected_mismatch(frame):
    # the oracle: per row, j (first rejection, or K) -> answer correct
    table = [{1: True, 3: True, 5: False}, {0: True, 3: False}, {2: True}]
    k_of = lambda row: len(frame["spd_draft_ids"][row])  # noqa: E731
    assert spd_quality.mismatches(frame) == [[1, 3], [0], []]
    # accept none: j = the first mismatch (K when there is none)
    assert spd_quality.outcome(lambda r, i: False, frame, table, k_of) == pytest.approx(((1 + 0 + 2) / 3, 1.0))
    # accept all: j = K everywhere
    assert spd_quality.outcome(lambda r, i: True, frame, table, k_of) == pytest.approx(((5 + 3 + 2) / 3, 1 / 3))
    # accept position 1 only: row 0 stops at 3
    assert spd_quality.outcome(lambda r, i: i == 1, frame, table, k_of) == pytest.approx(((3 + 0 + 2) / 3, 1.0))


def test_autojudge_labels_come_from_the_next_rejection(frame):
    table = [{1: True, 3: False, 5: True}, {0: True, 3: False}, {2: True}]
    # accepting position 1 of row 0 leads to the target rejecting at 3 (wrong); accepting 3 leads to K (right)
    assert spd_quality.autojudge_labels(frame, table) == [[(1, 0), (3, 1)], [(0, 0)], []]


def test_thresholds_cover_the_fixed_grid_and_the_training_quantiles():
    grid = spd_quality.sweep([0.1 * i for i in range(11)], (0.05, 0.5))
    assert 0.05 in grid and 0.5 in grid and min(grid) == 0.0 and max(grid) == pytest.approx(1.0)
    assert grid == sorted(set(grid))
    assert spd_quality.sweep([], (0.3,)) == [0.3]


def test_pareto_front_keeps_only_undominated_points():
    rows = [
        {"policy": "a", "tokens_kept": 8.0, "accuracy": 1.0},
        {"policy": "a2", "tokens_kept": 8.0, "accuracy": 1.0},  # the same point: listed once
        {"policy": "b", "tokens_kept": 9.0, "accuracy": 0.9},
        {"policy": "c", "tokens_kept": 7.0, "accuracy": 0.95},  # beaten by a on both axes
        {"policy": "d", "tokens_kept": 10.0, "accuracy": 0.7},
    ]
    assert [r["policy"] for r in spd_quality.pareto_front(rows)] == ["d", "b", "a"]
    fixed = [{"family": "target p", **r} for r in rows] + [{"family": "SPD scorer", "tokens_kept": 20, "accuracy": 1}]
    assert spd_quality.best_fixed_at(fixed, 0.95) == 8.0 and spd_quality.best_fixed_at(fixed, 1.01) == 0.0
