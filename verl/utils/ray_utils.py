"""Small Ray helpers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray


def parallel_put(data_list: list[Any], max_workers: int | None = None) -> list[ray.ObjectRef]:
    """``ray.put`` every item, several at once (serialising large chunks dominates), keeping the order.

    Args:
        data_list: objects to store; must not be empty.
        max_workers: threads to use; default ``min(len(data_list), 16)``.

    Returns:
        One ObjectRef per item, in order.
    """
    assert len(data_list) > 0, "parallel_put needs at least one object"
    workers = max(1, min(len(data_list), max_workers or 16))
    if workers == 1:
        return [ray.put(item) for item in data_list]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(ray.put, data_list))
