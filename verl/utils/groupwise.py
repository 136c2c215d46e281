"""Vectorised per-group statistics for group-relative advantage estimators (GRPO, RLOO).

A "group" is the set of responses sampled for the same prompt; rows carry a group id (the ``uid`` string array
of a ``DataProto``). These helpers replace a Python loop over groups with ``scatter_add`` reductions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_torch_index(index: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Map arbitrary group ids to dense integer ids ``0..G-1``.

    Args:
        index: ``(bs,)`` group ids as a numpy array (strings, ints, objects), a list, or a tensor.
        device: device of the result (CPU when ``None``).

    Returns:
        ``(bs,)`` int64 tensor; equal ids map to the same dense id (ids are ordered as ``np.unique`` sorts them).
    """
    if isinstance(index, torch.Tensor):
        _, dense = torch.unique(index.reshape(-1), return_inverse=True)
        return dense.to(device=device or index.device, dtype=torch.long)
    arr = np.asarray(index).reshape(-1)
    try:
        _, dense = np.unique(arr, return_inverse=True)
    except TypeError:
        # Mixed object arrays (e.g. ints and strings) cannot be sorted; compare their string forms instead.
        _, dense = np.unique(np.array([str(x) for x in arr]), return_inverse=True)
    return torch.as_tensor(dense.reshape(-1), dtype=torch.long, device=device)


@torch.no_grad()
def group_mean_std(
    scores: torch.Tensor, gidx: torch.Tensor, eps: float = 0.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group mean, unbiased standard deviation and size.

    The variance is computed in two passes (deviations from the group mean) in float64, so it agrees with
    ``torch.std`` on each group to float32 precision. Singleton groups get mean 0 and std 1, the convention
    GRPO uses so that a lone response keeps its raw score.

    Args:
        scores: ``(bs,)`` one score per response.
        gidx: ``(bs,)`` dense group ids in ``0..G-1`` (see :func:`as_torch_index`).
        eps: floor applied to the variance before the square root (0 keeps exact agreement with ``torch.std``).
        device: device of the results (that of ``scores`` when ``None``).

    Returns:
        ``mean_g``, ``std_g``, ``count_g``: each ``(G,)`` float32.
    """
    device = device or scores.device
    values = scores.reshape(-1).to(device=device, dtype=torch.float64)
    gidx = gidx.reshape(-1).to(device=device, dtype=torch.long)
    num_groups = int(gidx.max().item()) + 1 if gidx.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64, device=device).scatter_add_(0, gidx, torch.ones_like(values))
    total = torch.zeros_like(count).scatter_add_(0, gidx, values)
    mean = total / count.clamp(min=1.0)
    sq_dev = torch.zeros_like(count).scatter_add_(0, gidx, (values - mean[gidx]) ** 2)
    var = (sq_dev / (count - 1.0).clamp(min=1.0)).clamp(min=eps)
    std = var.sqrt()
    singleton = count <= 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)
    std = torch.where(singleton, torch.ones_like(std), std)
    return mean.float(), std.float(), count.float()
