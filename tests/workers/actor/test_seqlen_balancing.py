"""Tests for verl/utils/seqlen_balancing.py: balanced partitions and dynamic micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.utils.seqlen_balancing import (
    get_reverse_idx,
    get_seqlen_balanced_partitions,
    log_seqlen_unbalance,
    prepare_dynamic_batch,
    rearrange_micro_batches,
    restore_dynamic_batch,
)


def _batch_with_lengths(lengths: list[int], width: int = 16) -> DataProto:
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1  # left padding, like prompts
    rows = torch.arange(len(lengths)).unsqueeze(-1).expand(-1, width).clone()
    return DataProto.from_dict(
        tensors={"attention_mask": mask, "row": rows},
        non_tensors={"uid": np.array([f"r{i}" for i in range(len(lengths))], dtype=object)},
        meta_info={"temperature": 1.0},
    )


def test_equal_size_partitions_balance_a_worked_example():
    # 1+4 = 2+3 = 5: the only perfect 2-way split with two items each.
    parts = get_seqlen_balanced_partitions([1, 2, 3, 4], k_partitions=2, equal_size=True)
    assert sorted(parts) == [[0, 3], [1, 2]]


def test_equal_size_partitions_cover_every_index_once_with_equal_counts():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=24).tolist()
    parts = get_seqlen_balanced_partitions(lengths, k_partitions=4, equal_size=True)
    assert sorted(i for p in parts for i in p) == list(range(24))
    assert [len(p) for p in parts] == [6, 6, 6, 6]
    sums = [sum(lengths[i] for i in p) for p in parts]
    naive = [sum(lengths[i : i + 6]) for i in range(0, 24, 6)]
    assert max(sums) - min(sums) <= max(naive) - min(naive)


def test_partitions_reject_impossible_requests():
    with pytest.raises(ValueError, match="divisible"):
        get_seqlen_balanced_partitions([1, 2, 3], k_partitions=2, equal_size=True)
    with pytest.raises(ValueError, match="non-empty"):
        get_seqlen_balanced_partitions([1, 2], k_partitions=3, equal_size=False)


def test_log_seqlen_unbalance_reports_naive_and_balanced_spread():
    lengths = [1, 1, 9, 9]
    parts = get_seqlen_balanced_partitions(lengths, 2, equal_size=True)
    metrics = log_seqlen_unbalance(lengths, parts, prefix="seqlen")
    # naive contiguous halves: 2 and 18; balanced: 10 and 10.
    assert metrics["seqlen/minmax_diff"] == 16.0
    assert metrics["seqlen/balanced_min"] == metrics["seqlen/balanced_max"] == 10.0
    assert metrics["seqlen/mean"] == 10.0


def test_rearrange_micro_batches_respects_the_token_budget():
    lengths = [3, 8, 5, 2, 7, 1, 6, 4]
    data = _batch_with_lengths(lengths)
    micro, parts = rearrange_micro_batches(data.batch, max_token_len=10)
    assert len(micro) >= 4  # 36 tokens need at least ceil(36 / 10) micro-batches
    for td, idx in zip(micro, parts):
        assert int(td["attention_mask"].sum()) <= 10
        assert td["row"][:, 0].tolist() == idx


def test_rearrange_micro_batches_rejects_a_budget_below_the_longest_sequence():
    with pytest.raises(ValueError, match="longest sequence"):
        rearrange_micro_batches(_batch_with_lengths([3, 12]).batch, max_token_len=10)


def test_prepare_and_restore_dynamic_batch_round_trip_rows_and_non_tensors():
    lengths = [3, 8, 5, 2, 7, 1, 6, 4]
    data = _batch_with_lengths(lengths)
    micro, indices = prepare_dynamic_batch(data, max_token_len=12)
    for m, idx in zip(micro, indices):
        assert m.non_tensor_batch["uid"].tolist() == [f"r{i}" for i in idx]
        assert m.meta_info["temperature"] == 1.0
    outputs = torch.cat([m.batch["row"][:, 0] * 10 for m in micro])  # per-row "result" in shuffled order
    restored = restore_dynamic_batch(outputs, indices)
    assert restored.tolist() == [10 * i for i in range(len(lengths))]


def test_get_reverse_idx_inverts_a_permutation():
    perm = [2, 0, 3, 1]
    rev = get_reverse_idx(perm)
    assert [perm[r] for r in rev] == [0, 1, 2, 3]
