"""Balance sequences by token count: dynamic micro-batches and equal-work partitions.

Two users:

* the actor/critic with ``use_dynamic_bsz``: a mini-batch is cut into micro-batches whose total (unpadded) token count
  stays under ``max_token_len``, instead of a fixed number of rows (``prepare_dynamic_batch`` /
  ``restore_dynamic_batch``);
* the trainer's ``balance_batch``: rows are dealt to data-parallel ranks so every rank gets about the same number
  of tokens (``get_seqlen_balanced_partitions`` with ``equal_size=True``).

Partitioning uses the largest-differencing method (Karmarkar-Karp) generalised to k sets: every state is a k-way
partial partition; the two states with the largest spread are merged by pairing the heaviest set of one with the
lightest set of the other, which cancels their imbalance.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tensordict import TensorDict

    from verl.protocol import DataProto

__all__ = [
    "ceildiv",
    "roundup_divisible",
    "karmarkar_karp",
    "get_seqlen_balanced_partitions",
    "log_seqlen_unbalance",
    "rearrange_micro_batches",
    "get_reverse_idx",
    "prepare_dynamic_batch",
    "restore_dynamic_batch",
]


def ceildiv(a: int, b: int) -> int:
    """Integer ceil(a / b) for positive b."""
    return -(a // -b)


def roundup_divisible(a: int, b: int) -> int:
    """Smallest multiple of ``b`` that is >= ``a``."""
    return ceildiv(a, b) * b


class _State:
    """A k-way partial partition: ``sets[i]`` holds item indices, ``sums[i]`` their total size."""

    __slots__ = ("sets", "sums")

    def __init__(self, sets: list[list[int]], sums: list[int]):
        self.sets = sets
        self.sums = sums

    @property
    def spread(self) -> int:
        return max(self.sums) - min(self.sums)

    def merge(self, other: _State) -> _State:
        # Heaviest of self with lightest of other (and so on) so their imbalances cancel.
        mine = sorted(range(len(self.sums)), key=lambda i: self.sums[i], reverse=True)
        theirs = sorted(range(len(other.sums)), key=lambda i: other.sums[i])
        sets = [self.sets[i] + other.sets[j] for i, j in zip(mine, theirs)]
        sums = [self.sums[i] + other.sums[j] for i, j in zip(mine, theirs)]
        return _State(sets, sums)


def karmarkar_karp(seqlen_list: Sequence[int], k_partitions: int, equal_size: bool) -> list[list[int]]:
    """Split item indices into ``k_partitions`` sets with near-equal total length.

    Args:
        seqlen_list: size of each item (e.g. tokens per sequence).
        k_partitions: number of sets.
        equal_size: when True every set gets exactly ``len(seqlen_list) / k_partitions`` items.

    Returns:
        ``k_partitions`` lists of item indices (unsorted).
    """
    n = len(seqlen_list)
    order = sorted(range(n), key=lambda i: (seqlen_list[i], i))
    states: list[_State] = []
    if equal_size:
        # Seed each state with k items, one per set; merging pairs sets, so set sizes stay equal.
        for start in range(0, n, k_partitions):
            group = order[start : start + k_partitions]
            states.append(_State([[i] for i in group], [seqlen_list[i] for i in group]))
    else:
        for i in order:
            states.append(
                _State([[i]] + [[] for _ in range(k_partitions - 1)], [seqlen_list[i]] + [0] * (k_partitions - 1))
            )
    # Max-heap on spread; the counter breaks ties deterministically.
    heap = [(-s.spread, c, s) for c, s in enumerate(states)]
    heapq.heapify(heap)
    counter = len(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = a.merge(b)
        heapq.heappush(heap, (-merged.spread, counter, merged))
        counter += 1
    return heap[0][2].sets


def get_seqlen_balanced_partitions(seqlen_list: Sequence[int], k_partitions: int, equal_size: bool) -> list[list[int]]:
    """Partition item indices into ``k_partitions`` non-empty groups of near-equal total length.

    Example: lengths ``[1, 2, 3, 4]`` into 2 equal-size groups -> ``[[0, 3], [1, 2]]`` (sums 5 and 5).

    Args:
        seqlen_list: tokens per sequence.
        k_partitions: number of groups (micro-batches or ranks).
        equal_size: every group gets the same number of items (requires divisibility).

    Returns:
        ``k_partitions`` lists of indices, each sorted ascending; groups ordered by their first index.
    """
    n = len(seqlen_list)
    if k_partitions < 1 or n < k_partitions:
        raise ValueError(f"cannot split {n} sequences into {k_partitions} non-empty partitions")
    if equal_size and n % k_partitions != 0:
        raise ValueError(f"equal_size partitions need len(seqlen_list)={n} divisible by k_partitions={k_partitions}")
    partitions = [sorted(p) for p in karmarkar_karp(seqlen_list, k_partitions, equal_size)]
    assert all(partitions) and sorted(i for p in partitions for i in p) == list(range(n))
    return sorted(partitions, key=lambda p: p[0])


def log_seqlen_unbalance(seqlen_list: Sequence[int], partitions: list[list[int]], prefix: str) -> dict[str, float]:
    """Token-count spread of a naive contiguous split vs the given balanced partitions.

    Returns:
        ``{prefix}/min``, ``/max``, ``/minmax_diff`` (contiguous chunks), ``/balanced_min``, ``/balanced_max``,
        ``/mean`` (tokens per partition).
    """
    k = len(partitions)
    chunk = ceildiv(len(seqlen_list), k)
    naive = [sum(seqlen_list[i : i + chunk]) for i in range(0, len(seqlen_list), chunk)]
    balanced = [sum(seqlen_list[i] for i in p) for p in partitions]
    return {
        f"{prefix}/min": float(min(naive)),
        f"{prefix}/max": float(max(naive)),
        f"{prefix}/minmax_diff": float(max(naive) - min(naive)),
        f"{prefix}/balanced_min": float(min(balanced)),
        f"{prefix}/balanced_max": float(max(balanced)),
        f"{prefix}/mean": float(sum(balanced) / k),
    }


def _fits(seqlens: list[int], partitions: list[list[int]], max_token_len: int) -> bool:
    return all(sum(seqlens[i] for i in p) <= max_token_len for p in partitions)


def _all_reduce_max(value: int, dp_group) -> int:
    # Every FSDP rank must run the same number of forwards, or the collectives inside them deadlock.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    from verl.utils.device import get_device_name

    backend = torch.distributed.get_backend(dp_group)
    device = get_device_name() if "nccl" in str(backend) else "cpu"
    t = torch.tensor([value], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=dp_group)
    return int(t.item())


def rearrange_micro_batches(
    batch: TensorDict,
    max_token_len: int,
    dp_group=None,
    num_batches_divided_by: int | None = None,
    same_micro_num_in_dp: bool = True,
    min_num_micro_batch: int | None = None,
    use_dynamic_bsz_balance: bool = True,
) -> tuple[list[TensorDict], list[list[int]]]:
    """Cut a batch into micro-batches of at most ``max_token_len`` real tokens each.

    Token counts come from ``attention_mask`` (padding is free in the count). The number of micro-batches starts at
    ``ceil(total / max_token_len)`` and grows until the balanced partition fits; across data-parallel ranks the
    maximum is taken so every rank runs the same number of forwards.

    Args:
        batch: TensorDict with ``attention_mask`` ``(bs, seq_len)``.
        max_token_len: token budget per micro-batch; must be >= the longest sequence.
        dp_group: process group to agree on the micro-batch count (default world when initialised).
        num_batches_divided_by: round the count up to a multiple of this (pipeline schedules need it).
        same_micro_num_in_dp: agree on the count across ranks.
        min_num_micro_batch: lower bound on the count.
        use_dynamic_bsz_balance: order micro-batches heaviest first (attention cost ~ sum of squared lengths),
            so the slowest one starts earliest; otherwise by first row index.

    Returns:
        ``(micro_batches, indices)``: micro-batch TensorDicts and, for each, the row indices it holds.
    """
    seqlens = batch["attention_mask"].reshape(batch.batch_size[0], -1).sum(dim=-1).tolist()
    seqlens = [int(s) for s in seqlens]
    n = len(seqlens)
    if max(seqlens) > max_token_len:
        raise ValueError(
            f"max_token_len={max_token_len} is smaller than the longest sequence ({max(seqlens)} tokens); raise "
            "ppo_max_token_len_per_gpu / log_prob_max_token_len_per_gpu to at least prompt + response length"
        )
    k = max(ceildiv(sum(seqlens), max_token_len), min_num_micro_batch or 1)
    k = min(k, n)
    partitions = get_seqlen_balanced_partitions(seqlens, k, equal_size=False)
    while not _fits(seqlens, partitions, max_token_len) and k < n:
        k += 1
        partitions = get_seqlen_balanced_partitions(seqlens, k, equal_size=False)
    target = _all_reduce_max(k, dp_group) if same_micro_num_in_dp else k
    if num_batches_divided_by:
        target = roundup_divisible(target, num_batches_divided_by)
    if target > n:
        raise ValueError(f"need {target} micro-batches but the batch has only {n} rows")
    if target != k:
        partitions = get_seqlen_balanced_partitions(seqlens, target, equal_size=False)
    if use_dynamic_bsz_balance:
        partitions.sort(key=lambda p: sum(seqlens[i] ** 2 for i in p), reverse=True)
    micro_batches = [batch[torch.tensor(p, dtype=torch.long)] for p in partitions]
    return micro_batches, partitions


def get_reverse_idx(idx_map: Sequence[int]) -> list[int]:
    """Inverse permutation: ``out[idx_map[i]] = i``."""
    reverse = [0] * len(idx_map)
    for pos, idx in enumerate(idx_map):
        reverse[idx] = pos
    return reverse


def prepare_dynamic_batch(
    data: DataProto, max_token_len: int, dp_group=None, **kwargs
) -> tuple[list[DataProto], list[list[int]]]:
    """``rearrange_micro_batches`` on a DataProto: non-tensor columns follow their rows, meta_info is shared.

    Args:
        data: batch with ``attention_mask``.
        max_token_len: token budget per micro-batch.
        dp_group: see ``rearrange_micro_batches``; further keyword arguments are passed on to it.

    Returns:
        ``(micro_batches, indices)``; feed per-row outputs, concatenated in micro-batch order, to
        ``restore_dynamic_batch(outputs, indices)`` to get the original row order back.
    """
    from verl.protocol import DataProto

    micro_tds, partitions = rearrange_micro_batches(data.batch, max_token_len, dp_group=dp_group, **kwargs)
    micro_batches = []
    for td, idx in zip(micro_tds, partitions):
        non_tensor = {key: val[idx] for key, val in (data.non_tensor_batch or {}).items()}
        micro_batches.append(DataProto(batch=td, non_tensor_batch=non_tensor, meta_info=data.meta_info))
    return micro_batches, partitions


def restore_dynamic_batch(data: torch.Tensor, batch_idx_list: list[list[int]]) -> torch.Tensor:
    """Undo the row shuffle of ``prepare_dynamic_batch``.

    Args:
        data: ``(bs, ...)`` outputs concatenated in micro-batch order.
        batch_idx_list: the ``indices`` returned by ``prepare_dynamic_batch``.

    Returns:
        ``(bs, ...)`` outputs in the original row order.
    """
    flat = [i for idx in batch_idx_list for i in idx]
    if len(flat) != data.shape[0]:
        raise ValueError(f"{data.shape[0]} output rows but the indices cover {len(flat)}")
    reverse = torch.tensor(get_reverse_idx(flat), dtype=torch.long, device=data.device)
    return data[reverse]
