"""Engine-agnostic helpers of the weight sync: packing ``(name, tensor)`` pairs into fixed-size buckets.

verl keeps ``get_named_tensor_buckets`` here; the vLLM adapter uses it too, so every engine loads weights in the same
bucket sizes (one bucket is one engine call, and the peak extra memory of a sync is about one bucket).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["get_named_tensor_buckets"]


def get_named_tensor_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs, in order, into lists of at most ``bucket_bytes`` bytes each.

    A tensor is added to the current bucket while the bucket stays within ``bucket_bytes``; otherwise the bucket is
    yielded and a new one starts. A tensor larger than ``bucket_bytes`` travels alone in its own bucket. Lazy: the
    input is consumed one tensor at a time, so a generator of gathered shards never holds more than one bucket.

    Args:
        named_tensors: ``(name, tensor)`` pairs; sizes are ``numel * element_size``.
        bucket_bytes: the bucket capacity in bytes (> 0).

    Yields:
        Non-empty lists of ``(name, tensor)`` pairs, in input order.

    Example:
        >>> ts = [("a", torch.zeros(2)), ("b", torch.zeros(2)), ("c", torch.zeros(5))]  # 8, 8, 20 bytes
        >>> [[n for n, _ in b] for b in get_named_tensor_buckets(ts, bucket_bytes=16)]
        [['a', 'b'], ['c']]
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[tuple[str, torch.Tensor]] = []
    used = 0
    for name, tensor in named_tensors:
        size = tensor.numel() * tensor.element_size()
        if bucket and used + size > bucket_bytes:
            yield bucket
            bucket, used = [], 0
        bucket.append((name, tensor))
        used += size
    if bucket:
        yield bucket
