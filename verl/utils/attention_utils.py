"""Padding-free batches: pack the real tokens of a padded batch into one row, and scatter per-token results back.

The names and shapes are flash-attn's (``bert_padding``), so code written against ``flash_attn.bert_padding`` reads
the same; this implementation is plain torch and runs on CPU and CUDA alike:

* :func:`unpad_input` ``(b, s, ...) + mask (b, s)`` -> ``(nnz, ...)`` real tokens in row-major order, their flat
  ``indices`` into ``b * s``, the cumulative sequence lengths ``cu_seqlens`` ``(b + 1,)`` int32 and the longest
  sequence;
* :func:`pad_input` is the inverse (zeros where the mask was 0);
* :func:`index_first_axis` gathers rows of a flattened tensor.

A packed row runs through a Hugging Face model as ``input_ids (1, nnz)`` with per-sequence ``position_ids (1, nnz)``
(restarting at 0 for every sequence) and no attention mask: transformers then keeps the sequences apart itself,
with flash-attn's varlen kernels when the model uses ``flash_attention_2`` (CUDA) and with a block-diagonal causal
mask for ``sdpa`` / ``eager`` (CPU and CUDA). See ``verl.workers.actor.dp_actor.forward_packed``.
"""

from __future__ import annotations

import torch

__all__ = ["index_first_axis", "pad_input", "unpad_input"]


def index_first_axis(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``values[indices]`` along the first axis (``values`` ``(n, ...)``, ``indices`` ``(k,)`` long)."""
    return values.index_select(0, indices)


def unpad_input(
    hidden: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Keep the tokens where ``attention_mask`` is 1.

    Args:
        hidden: ``(b, s, ...)``.
        attention_mask: ``(b, s)``, 1 on real tokens (any padding layout: left, right or both).

    Returns:
        ``(packed (nnz, ...), indices (nnz,) long into b * s, cu_seqlens (b + 1,) int32, max_seqlen)``.

    Example:
        >>> mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
        >>> packed, idx, cu, longest = unpad_input(torch.arange(6).view(2, 3, 1), mask)
        >>> packed.flatten().tolist(), idx.tolist(), cu.tolist(), longest
        ([1, 2, 3, 4], [1, 2, 3, 4], [0, 2, 4], 2)
    """
    if hidden.shape[:2] != attention_mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and attention_mask {tuple(attention_mask.shape)} disagree")
    lengths = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    flat = hidden.reshape(-1, *hidden.shape[2:])
    return index_first_axis(flat, indices), indices, cu_seqlens, int(lengths.max().item()) if lengths.numel() else 0


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Scatter ``packed`` ``(nnz, ...)`` back to ``(batch, seqlen, ...)`` at ``indices``; zeros elsewhere."""
    out = packed.new_zeros((batch * seqlen, *packed.shape[1:]))
    out[indices] = packed
    return out.view(batch, seqlen, *packed.shape[1:])
