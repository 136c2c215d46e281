"""Tests for verl/workers/rollout/sglang_rollout/utils.py: fixed-size weight-sync buckets, splits worked by hand."""

from __future__ import annotations

import pytest
import torch

from verl.workers.rollout.sglang_rollout.utils import get_named_tensor_buckets


def _names(buckets):
    return [[name for name, _ in bucket] for bucket in buckets]


def _f32(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32)  # 4 bytes per element


def test_buckets_fill_up_to_the_limit_in_order():
    # Sizes 16, 16, 32, 8, 24 bytes with a 40-byte bucket:
    #   a(16) + b(16) = 32; + c(32) = 64 > 40 -> [a, b]
    #   c(32) + d(8) = 40 <= 40;  + e(24) = 64 > 40 -> [c, d]
    #   e(24) -> [e]
    tensors = [("a", _f32(4)), ("b", _f32(4)), ("c", _f32(8)), ("d", _f32(2)), ("e", _f32(6))]
    assert _names(get_named_tensor_buckets(tensors, bucket_bytes=40)) == [["a", "b"], ["c", "d"], ["e"]]


def test_tensor_larger_than_the_bucket_travels_alone():
    # Bucket 16 bytes: a(8) | big(400) alone | b(8) + c(8) = 16.
    tensors = [("a", _f32(2)), ("big", _f32(100)), ("b", _f32(2)), ("c", _f32(2))]
    assert _names(get_named_tensor_buckets(tensors, bucket_bytes=16)) == [["a"], ["big"], ["b", "c"]]


def test_sizes_use_the_element_size_of_each_dtype():
    # bf16 (2 bytes) x 8 = 16 bytes, int64 (8 bytes) x 2 = 16 bytes, float32 x 4 = 16 bytes; bucket of 32 bytes.
    tensors = [
        ("h", torch.zeros(8, dtype=torch.bfloat16)),
        ("i", torch.zeros(2, dtype=torch.int64)),
        ("f", torch.zeros(2, 2, dtype=torch.float32)),
    ]
    assert _names(get_named_tensor_buckets(tensors, bucket_bytes=32)) == [["h", "i"], ["f"]]


def test_every_tensor_is_kept_once_and_unchanged():
    tensors = [(f"w{i}", torch.full((i + 1,), float(i))) for i in range(10)]
    buckets = list(get_named_tensor_buckets(iter(tensors), bucket_bytes=24))
    flat = [pair for bucket in buckets for pair in bucket]
    assert [n for n, _ in flat] == [n for n, _ in tensors]
    assert all(a is b for (_, a), (_, b) in zip(flat, tensors))
    assert all(sum(t.numel() * 4 for _, t in b) <= 24 or len(b) == 1 for b in buckets)


def test_empty_input_and_bad_size():
    assert list(get_named_tensor_buckets([], bucket_bytes=8)) == []
    with pytest.raises(ValueError, match="bucket_bytes"):
        list(get_named_tensor_buckets([("a", _f32(1))], bucket_bytes=0))


def test_is_lazy():
    seen = []

    def gen():
        for i in range(4):
            seen.append(i)
            yield f"w{i}", _f32(4)  # 16 bytes each

    it = get_named_tensor_buckets(gen(), bucket_bytes=32)
    assert _names([next(it)]) == [["w0", "w1"]]  # yielded as soon as w2 does not fit
    assert seen == [0, 1, 2]
