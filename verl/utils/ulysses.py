"""Ulysses sequence parallelism (``ulysses_sequence_parallel_size > 1``) for the padding-free forward.

The ranks of one sequence-parallel (SP) group hold the same rows. :func:`verl.workers.actor.dp_actor.forward_packed`
packs a micro-batch's real tokens into one row, pads it to a multiple of the SP size and gives each rank one
contiguous slice of it. Everything outside attention is per-token, so each rank runs the model on its slice alone;
attention needs every token, and there two all-to-alls swap what is split (DeepSpeed-Ulysses, Jacobs et al. 2023):

* before: each rank holds all heads for its slice ``(b, H, L/s, d)`` and receives, for ``H/s`` heads, every slice:
  ``(b, H/s, L, d)``;
* attention over the whole packed row with the block-diagonal causal mask of its sequences (built once per forward
  from the full row's position ids);
* after: the inverse all-to-all gives back ``(b, H, L/s, d)``.

The model's outputs at the positions the loss reads are then gathered from the slices (:func:`gather_rows`), so
every rank of the group computes the same loss. The ranks of a group each back-propagate that loss through their
own slice only; the gather's backward multiplies by the SP size so that FSDP's gradient average over all ranks
(data-parallel x sequence-parallel) is the data-parallel mean of the full gradient.

Attention runs through a transformers attention function registered as ``"verl_ulysses_<kernel>"``
(:func:`enable_ulysses`): outside a :func:`sequence_parallel` block (the rollout's ``generate``) it is exactly the
model's own kernel (``sdpa``, ``eager``, ``flash_attention_2``) with that kernel's masks; inside, flash-attn models
run flash-attn's varlen kernel over the packed row's sequences and the others sdpa with the row's dense mask.

Key-value heads: with grouped-query attention each rank needs the key-value heads of its query heads; when the
key-value head count is not divisible by the SP size they are repeated to one per query head first.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "ATTN_IMPLEMENTATION",
    "MODEL_KWARG",
    "SequenceParallelContext",
    "check_heads",
    "enable_ulysses",
    "gather_rows",
    "head_to_seq",
    "seq_to_head",
    "sequence_parallel",
    "ulysses_groups",
]

ATTN_IMPLEMENTATION = "verl_ulysses"


# ------------------------------------------------------------------------------------------------ process groups

_GROUPS: dict[int, tuple[Any, Any]] = {}


def ulysses_groups(sp_size: int) -> tuple[Any, Any]:
    """``(sp_group, dp_group)`` of this rank for SP size ``sp_size``: consecutive ranks form an SP group (they hold
    the same rows); ranks with the same position in their SP group form a data-parallel group (distinct rows).

    Every rank must call this (``new_group`` is collective); the groups are made once per size per process.
    """
    if sp_size in _GROUPS:
        return _GROUPS[sp_size]
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise ValueError(f"ulysses_sequence_parallel_size={sp_size} must divide the number of ranks ({world})")
    sp_group = dp_group = None
    for start in range(0, world, sp_size):
        ranks = list(range(start, start + sp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            sp_group = group
    for offset in range(sp_size):
        ranks = list(range(offset, world, sp_size))
        group = dist.new_group(ranks)
        if rank in ranks:
            dp_group = group
    _GROUPS[sp_size] = (sp_group, dp_group)
    return sp_group, dp_group


def check_heads(hf_config: Any, sp_size: int, where: str) -> None:
    """Attention heads must split evenly over the SP group."""
    heads = int(hf_config.num_attention_heads)
    if heads % sp_size:
        raise ValueError(
            f"{where}={sp_size}: the model has {heads} attention heads, which do not split evenly over {sp_size} "
            "sequence-parallel ranks; choose a size that divides the head count"
        )


# ------------------------------------------------------------------------------------------------ all-to-alls


def _all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``x (s, ...)``: piece ``j`` goes to rank ``j`` of ``group``; returns the pieces received, in rank order."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous (empty_like would copy x's strides)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_head(x: torch.Tensor, group: Any) -> torch.Tensor:
    s = dist.get_world_size(group)
    b, h, c, d = x.shape
    pieces = x.reshape(b, s, h // s, c, d).transpose(0, 1)  # (s, b, h/s, c, d): head group j goes to rank j
    received = _all_to_all(pieces, group)  # (s, b, h/s, c, d): slice j of my head group, from rank j
    return received.permute(1, 2, 0, 3, 4).reshape(b, h // s, s * c, d)


def _head_to_seq(x: torch.Tensor, group: Any) -> torch.Tensor:
    s = dist.get_world_size(group)
    b, hs, length, d = x.shape
    c = length // s
    pieces = x.reshape(b, hs, s, c, d).permute(2, 0, 1, 3, 4)  # (s, b, h/s, c, d): slice j goes to rank j
    received = _all_to_all(pieces, group)  # (s, b, h/s, c, d): head group j of my slice, from rank j
    return received.transpose(0, 1).reshape(b, s * hs, c, d)


class _Swap(torch.autograd.Function):
    """One of the two all-to-alls; its backward is the other one."""

    @staticmethod
    def forward(ctx, x, group, to_heads: bool):
        ctx.group, ctx.to_heads = group, to_heads
        return (_seq_to_head if to_heads else _head_to_seq)(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (_head_to_seq if ctx.to_heads else _seq_to_head)(grad, ctx.group), None, None


def seq_to_head(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``(b, H, L/s, d)`` (all heads, this rank's slice) -> ``(b, H/s, L, d)`` (this rank's heads, every slice)."""
    return _Swap.apply(x, group, True)


def head_to_seq(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The inverse of :func:`seq_to_head`."""
    return _Swap.apply(x, group, False)


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, counts, group):
        s = dist.get_world_size(group)
        ctx.group, ctx.counts, ctx.rank = group, counts, dist.get_rank(group)
        width = max(max(counts), 1)
        padded = rows.new_zeros((width, *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        pieces = [torch.empty_like(padded) for _ in range(s)]
        dist.all_gather(pieces, padded.contiguous(), group=group)
        return torch.cat([piece[:count] for piece, count in zip(pieces, counts)], dim=0)

    @staticmethod
    def backward(ctx, grad):
        start = sum(ctx.counts[: ctx.rank])
        own = grad[start : start + ctx.counts[ctx.rank]]
        # every rank of the group back-propagates the same loss through its own slice; FSDP then averages over all
        # ranks, so the slice's share is scaled by the group size
        return own * dist.get_world_size(ctx.group), None, None


def gather_rows(rows: torch.Tensor, counts: list[int], group: Any) -> torch.Tensor:
    """Concatenate, in rank order, ``rows (counts[r], ...)`` held by each rank ``r`` of ``group`` (differentiable:
    see the module docstring for the gradient's scale)."""
    return _GatherRows.apply(rows, list(counts), group)


# ------------------------------------------------------------------------------------------------ attention


@dataclass
class SequenceParallelContext:
    """The active SP forward: its group and where the whole packed row's sequences start (``cu_seqlens``, as
    flash-attn's varlen kernels take them); the dense mask for sdpa is built on first use, once per forward."""

    group: Any
    position_ids: torch.Tensor
    _mask: torch.Tensor | None = None
    _cu_seqlens: tuple[torch.Tensor, int] | None = None

    @property
    def mask(self) -> torch.Tensor:
        """``(1, 1, L, L)`` bool mask of the packed row (sdpa and eager models)."""
        if self._mask is None:
            self._mask = packed_causal_mask(self.position_ids)
        return self._mask

    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """``(cu_seqlens int32 (n+1,), longest sequence)`` of the packed row (computed once per forward, not per
        layer)."""
        if self._cu_seqlens is None:
            positions = self.position_ids.reshape(-1)
            starts = torch.nonzero(positions == 0).flatten()
            bounds = torch.cat([starts, starts.new_tensor([positions.numel()])]).to(torch.int32)
            self._cu_seqlens = (bounds, int((bounds[1:] - bounds[:-1]).max()))
        return self._cu_seqlens


_ACTIVE = threading.local()


def packed_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """``(1, 1, L, L)`` bool: token ``i`` attends to ``j <= i`` of its own sequence (a sequence starts where the
    position id is 0)."""
    positions = position_ids.reshape(-1)
    sequence = (positions == 0).long().cumsum(0)
    idx = torch.arange(positions.numel(), device=positions.device)
    mask = (sequence[:, None] == sequence[None, :]) & (idx[None, :] <= idx[:, None])
    return mask[None, None]


MODEL_KWARG = "verl_sequence_parallel"


@contextlib.contextmanager
def sequence_parallel(group: Any, full_position_ids: torch.Tensor):
    """Attention of the ``"verl_ulysses"`` models runs Ulysses over ``group`` for the block; ``full_position_ids``
    are the whole packed row's (each rank runs the model on its slice of it). Yields the context, which the caller
    also passes to the model as the keyword :data:`MODEL_KWARG`: transformers hands extra keywords down to the
    attention function, and activation checkpointing keeps them for the recomputation in backward, after this
    block has ended."""
    previous = getattr(_ACTIVE, "ctx", None)
    ctx = SequenceParallelContext(group, full_position_ids)
    _ACTIVE.ctx = ctx
    try:
        yield ctx
    finally:
        _ACTIVE.ctx = previous


def _ulysses_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float | None = None,
    scaling: float | None = None,
    *,
    original: str = "sdpa",
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    ctx = kwargs.pop(MODEL_KWARG, None) or getattr(_ACTIVE, "ctx", None)
    if ctx is None:  # not inside forward_packed's SP block (generation, a padded forward): the model's own kernel
        fn = _original_attention(module, original)
        return fn(module, query, key, value, attention_mask, dropout=dropout or 0.0, scaling=scaling, **kwargs)
    s = dist.get_world_size(ctx.group)
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads % s:  # each rank needs whole key-value heads for its query heads
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    q, k, v = (seq_to_head(t, ctx.group) for t in (query, key, value))  # (b, H/s, L, d)
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if original.startswith("flash_attention"):
        out = flash_varlen_attention(q, k, v, ctx, dropout or 0.0, scaling)
    else:  # sdpa, eager: the same maths with the packed row's dense mask
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=ctx.mask, dropout_p=dropout or 0.0, scale=scaling
        )
    out = head_to_seq(out, ctx.group)  # (b, H, L/s, d)
    return out.transpose(1, 2).contiguous(), None


def _original_attention(module: torch.nn.Module, original: str):
    """The attention function the model would call: transformers' registered kernels, or the model file's own
    ``eager_attention_forward`` (eager is not in the registry)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if original in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[original]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise ValueError(f"Ulysses: no attention function {original!r} for {type(module).__name__}")
    return eager


def flash_varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: SequenceParallelContext, dropout: float, scaling: Any
) -> torch.Tensor:
    """Causal attention of the packed row's sequences with flash-attn's varlen kernel (CUDA; no ``L x L`` mask):
    ``(1, h, L, d)`` in and out, the sequences bounded by ``ctx.cu_seqlens()``."""
    from flash_attn import flash_attn_varlen_func

    cu, longest = ctx.cu_seqlens()
    cu = cu.to(q.device)
    rows = [t[0].transpose(0, 1) for t in (q, k, v)]  # (L, h, d)
    out = flash_attn_varlen_func(
        *rows, cu, cu, longest, longest, dropout_p=dropout, softmax_scale=scaling, causal=True
    )  # (L, h, d)
    return out.transpose(0, 1).unsqueeze(0)


def enable_ulysses(model: torch.nn.Module) -> str:
    """Route ``model``'s attention through the Ulysses function; returns the registered name.

    The model keeps its own kernel: outside :func:`sequence_parallel` (generation, padded forwards) the function is
    the model's attention implementation with that implementation's masks (``sdpa``, ``eager``,
    ``flash_attention_2``); inside, after the all-to-all, flash-attn models run the varlen kernel over the packed
    row's sequences and the others sdpa with its dense mask.
    """
    import functools

    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    original = model.config._attn_implementation or "sdpa"
    if original.startswith(ATTN_IMPLEMENTATION):
        return original  # already routed
    name = f"{ATTN_IMPLEMENTATION}_{original}"
    AttentionInterface.register(name, functools.partial(_ulysses_attention, original=original))
    if original in ALL_MASK_ATTENTION_FUNCTIONS:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name
    return name
