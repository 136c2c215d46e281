"""Tensor helpers shared by the actor, critic, rollout and the PPO maths (imported as ``verl_F``).

Everything here is pure torch: tensors in, tensors out. The only exceptions are the two ``distributed_*``
reductions at the bottom, which import ``torch.distributed`` lazily and fall back to local maths when no process
group is initialised, and ``tokenize_and_postprocess_data``, which calls a tokenizer handed in by the caller.

Conventions: token tensors are ``(bs, seq_len)``; masks hold 1 for positions that count and 0 elsewhere, in any
numeric or bool dtype. Log-probabilities are computed without flash-attn kernels (CPU first); the chunked paths
exist so that a (bs, seq_len, vocab) float32 copy of the logits is never materialised at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

# Rows processed at once by the memory-aware log-prob / entropy paths. Each chunk costs one
# (chunk, vocab) float32 temporary, ~600 MB for 1024 rows of a 150k vocabulary.
_LOGPROB_CHUNK_ROWS = 1024

# ---------------------------------------------------------------------------------------------------------------------
# log-probabilities and entropy
# ---------------------------------------------------------------------------------------------------------------------


def gather_from_labels(data: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pick ``data[..., label]`` along the last dimension.

    Args:
        data: ``(..., vocab)`` values per class.
        label: ``(...)`` integer class ids.

    Returns:
        ``(...)`` the value of the labelled class at each position.
    """
    return torch.gather(data, -1, label.unsqueeze(-1)).squeeze(-1)


def logprobs_from_logits_naive(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference implementation: a full ``log_softmax`` then a gather (materialises ``(..., vocab)``).

    Args:
        logits: ``(..., vocab)`` unnormalised scores.
        labels: ``(...)`` token ids.

    Returns:
        ``(...)`` log p(label).
    """
    return gather_from_labels(F.log_softmax(logits, dim=-1), labels)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, inplace_backward: bool = True) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits)``, without a full-size log-softmax copy.

    ``inplace_backward`` is accepted for signature compatibility with upstream's flash-attn kernel; the pure torch
    path here ignores it. float32/float64 logits use ``gather - logsumexp`` (the logsumexp runs in row chunks);
    low-precision logits are upcast one row chunk at a time, which keeps bf16 accuracy close to float32.

    Args:
        logits: ``(..., vocab)`` unnormalised scores, any float dtype.
        labels: ``(...)`` token ids, same leading shape as ``logits``.
        inplace_backward: ignored (kept for compatibility).

    Returns:
        ``(...)`` log p(label), in float32 for low-precision inputs and in the input dtype otherwise.
    """
    del inplace_backward
    lead_shape = logits.shape[:-1]
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_labels = labels.reshape(-1)  # (N,)
    pieces = []
    for start in range(0, flat_logits.shape[0], _LOGPROB_CHUNK_ROWS):
        chunk = flat_logits[start : start + _LOGPROB_CHUNK_ROWS]
        chunk_labels = flat_labels[start : start + _LOGPROB_CHUNK_ROWS]
        if chunk.dtype not in (torch.float32, torch.float64):
            chunk = chunk.float()
        picked = gather_from_labels(chunk, chunk_labels)
        pieces.append(picked - torch.logsumexp(chunk, dim=-1))
    if not pieces:
        return flat_logits.new_zeros(lead_shape, dtype=torch.float32)
    return torch.cat(pieces).reshape(lead_shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dimension: ``logsumexp(z) - sum(softmax(z) * z)``.

    Args:
        logits: ``(..., vocab)`` unnormalised scores.

    Returns:
        ``(...)`` entropy in nats.
    """
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)


def entropy_from_logits_with_chunking(logits: torch.Tensor, chunk_size: int = 2048) -> torch.Tensor:
    """Same as :func:`entropy_from_logits`, computed ``chunk_size`` rows at a time in float32.

    Args:
        logits: ``(N, vocab)`` (or any ``(..., vocab)``; leading dims are flattened and restored).
        chunk_size: rows per chunk.

    Returns:
        ``(...)`` float32 entropy.
    """
    lead_shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.zeros(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], chunk_size):
        out[start : start + chunk_size] = entropy_from_logits(flat[start : start + chunk_size].float())
    return out.reshape(lead_shape)


def log_probs_from_logits_response(input_ids: torch.Tensor, logits: torch.Tensor, response_length: int) -> torch.Tensor:
    """Log-probs of the last ``response_length`` tokens of ``input_ids`` from full-sequence logits.

    The logit at position ``t`` predicts token ``t + 1``, hence the shift by one.

    Args:
        input_ids: ``(bs, seq_len)`` prompt + response ids.
        logits: ``(bs, seq_len, vocab)``.
        response_length: number of trailing response tokens.

    Returns:
        ``(bs, response_length)`` log-probs.
    """
    response_logits = logits[:, -response_length - 1 : -1]  # (bs, response_length, vocab)
    return logprobs_from_logits(response_logits, input_ids[:, -response_length:])


# ---------------------------------------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, axis: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set; NaN/inf outside the mask are ignored (not multiplied by 0).

    Args:
        values: any shape.
        mask: broadcastable to ``values``.
        axis: dimension(s) to reduce; ``None`` reduces everything.

    Returns:
        the masked sum, reduced over ``axis``.
    """
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if axis is None else kept.sum(dim=axis)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of ``values`` over masked positions: ``masked_sum / (mask.sum() + 1e-8)``; an empty mask gives 0.

    Args:
        values: any shape.
        mask: same shape as ``values``.
        axis: dimension(s) to reduce; ``None`` reduces everything.

    Returns:
        the masked mean, reduced over ``axis``.
    """
    count = mask.sum() if axis is None else mask.sum(dim=axis)
    return masked_sum(values, mask, axis) / (count + 1e-8)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over all masked positions (Bessel-corrected when ``unbiased``).

    Args:
        values: any shape.
        mask: same shape as ``values``.
        unbiased: divide by ``n - 1`` instead of ``n``.

    Returns:
        scalar variance.

    Raises:
        ValueError: when ``unbiased`` and the mask selects 0 or 1 elements (the variance is undefined).
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count == 0:
            raise ValueError("masked_var: the mask selects no elements, so the variance is undefined.")
        if count == 1:
            raise ValueError("masked_var: the mask selects one element, so the unbiased variance is undefined.")
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise to zero mean and unit variance using statistics over masked positions only.

    ``(x - mean) * rsqrt(var + 1e-8)``; with ``shift_mean=False`` the mean is added back (scale only).
    Unmasked positions are transformed too; callers multiply by the mask afterwards when it matters.

    Args:
        values: any shape.
        mask: same shape as ``values``; must select at least two elements.
        shift_mean: subtract the mean (True) or only rescale (False).

    Returns:
        tensor shaped like ``values``.
    """
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def clip_by_value(x: torch.Tensor, tensor_min: torch.Tensor | float, tensor_max: torch.Tensor | float) -> torch.Tensor:
    """Element-wise clamp where the bounds may themselves be tensors (broadcast against ``x``)."""
    tensor_min = torch.as_tensor(tensor_min, dtype=x.dtype, device=x.device)
    tensor_max = torch.as_tensor(tensor_max, dtype=x.dtype, device=x.device)
    return torch.max(torch.min(x, tensor_max), tensor_min)


def get_response_mask(
    response_id: torch.Tensor, eos_token: int | Sequence[int] = 2, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Mask that is 1 up to and including the first EOS token of each row, 0 after it.

    Example: ids ``[[5, 2, 7, 2]]`` with eos 2 -> ``[[1, 1, 0, 0]]``; a row with no EOS is all ones.

    Args:
        response_id: ``(bs, response_length)`` generated ids.
        eos_token: one id or a list of ids that end a response.
        dtype: output dtype.

    Returns:
        ``(bs, response_length)`` mask.
    """
    eos_ids = torch.as_tensor(eos_token, device=response_id.device).reshape(-1)
    is_eos = torch.isin(response_id, eos_ids).long()
    # cumsum - is_eos counts EOS tokens strictly before each position; zero means "not yet finished".
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos
    return eos_before.eq(0).to(dtype)


def response_mask_of(batch: Any) -> torch.Tensor:
    """``(bs, R)`` response part of ``batch["attention_mask"]``, with ``R = batch["responses"].size(-1)``.

    ``batch`` is anything indexable by key (a TensorDict, ``DataProto.batch``, a dict of tensors). This is the
    mask of every token the rollout returned; multi-turn rollouts carry their own ``response_mask`` instead.
    """
    return batch["attention_mask"][:, -batch["responses"].size(-1) :]


def compute_grad_norm(model: torch.nn.Module) -> float:
    """Global L2 norm of all parameter gradients of ``model`` (parameters without a grad are skipped)."""
    total = 0.0
    for param in model.parameters():
        if param.grad is not None:
            total += float(torch.sum(param.grad.detach().float() ** 2))
    return math.sqrt(total)


def get_unpad_data(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Indices and cumulative lengths for packing a padded batch into one row (varlen attention layout).

    Args:
        attention_mask: ``(bs, seq_len)`` 1 for real tokens.

    Returns:
        ``indices`` ``(total_tokens,)`` flat positions of real tokens, ``cu_seqlens`` ``(bs + 1,)`` int32 prefix
        sums of per-row lengths, and the longest row length.
    """
    seqlens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, int(seqlens.max().item()) if seqlens.numel() else 0


def leading_pad_columns(attention_mask: torch.Tensor) -> int:
    """How many leading columns are padding in every row (0 when some row starts with a real token).

    Prompts are left-padded to ``data.max_prompt_length``; when a batch's longest prompt is shorter, its first
    columns hold no token at all. A causal LM's outputs at the real positions do not depend on fully masked
    columns, so dropping them gives the same values for less compute.
    """
    if attention_mask.numel() == 0:
        return 0
    any_real = attention_mask.reshape(-1, attention_mask.size(-1)).bool().any(dim=0)
    first = int(torch.argmax(any_real.to(torch.int8)).item())
    return first if bool(any_real[first]) else 0


# ---------------------------------------------------------------------------------------------------------------------
# padding, truncation and tokenisation
# ---------------------------------------------------------------------------------------------------------------------


def pad_2d_list_to_length(
    response: Sequence[Sequence[int]], pad_token_id: int, max_length: int | None = None
) -> torch.Tensor:
    """Right-pad a ragged list of id lists into a tensor.

    Args:
        response: ``bs`` lists of ids.
        pad_token_id: fill value.
        max_length: target width; the longest row when ``None`` (a smaller value never truncates).

    Returns:
        ``(bs, max(max_length, longest row))`` tensor.
    """
    longest = max((len(row) for row in response), default=0)
    width = longest if max_length is None else max(longest, max_length)
    rows = [list(row) + [pad_token_id] * (width - len(row)) for row in response]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), width)


def pad_sequence_to_length(
    tensors: torch.Tensor, max_seq_len: int, pad_token_id: int | float, left_pad: bool = False
) -> torch.Tensor:
    """Pad the last dimension of ``tensors`` up to ``max_seq_len`` (never truncates).

    Args:
        tensors: ``(..., seq_len)``.
        max_seq_len: target length.
        pad_token_id: fill value.
        left_pad: pad on the left instead of the right.

    Returns:
        ``(..., max(seq_len, max_seq_len))``.
    """
    missing = max_seq_len - tensors.shape[-1]
    if missing <= 0:
        return tensors
    pad = (missing, 0) if left_pad else (0, missing)
    return F.pad(tensors, pad, mode="constant", value=pad_token_id)


_TRUNCATION_MODES = ("error", "left", "right", "middle")


def postprocess_data(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    pad_token_id: int,
    left_pad: bool = True,
    truncation: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad or truncate a tokenised prompt batch to exactly ``max_length`` columns.

    Truncation modes: ``left`` keeps the last ``max_length`` tokens, ``right`` the first ones, ``middle`` keeps
    ``max_length // 2`` from the start and the rest from the end, ``error`` refuses.

    Args:
        input_ids: ``(bs, seq_len)``.
        attention_mask: ``(bs, seq_len)``.
        max_length: output width.
        pad_token_id: fill value for ``input_ids`` (the mask is padded with 0).
        left_pad: pad on the left (prompts are left-padded for generation).
        truncation: one of ``error | left | right | middle``.

    Returns:
        ``(input_ids, attention_mask)`` both ``(bs, max_length)``.

    Raises:
        ValueError: unknown ``truncation``, or ``seq_len > max_length`` with ``truncation="error"``.
    """
    if truncation not in _TRUNCATION_MODES:
        raise ValueError(f"truncation={truncation!r} is not supported; use one of {list(_TRUNCATION_MODES)}.")
    seq_len = input_ids.shape[-1]
    if seq_len < max_length:
        input_ids = pad_sequence_to_length(input_ids, max_length, pad_token_id, left_pad=left_pad)
        attention_mask = pad_sequence_to_length(attention_mask, max_length, 0, left_pad=left_pad)
    elif seq_len > max_length:
        if truncation == "error":
            raise ValueError(
                f"Prompt length {seq_len} is larger than max_length {max_length}. Raise data.max_prompt_length, "
                "enable data.filter_overlong_prompts, or set data.truncation to left, right or middle."
            )
        if truncation == "left":
            input_ids, attention_mask = input_ids[:, -max_length:], attention_mask[:, -max_length:]
        elif truncation == "right":
            input_ids, attention_mask = input_ids[:, :max_length], attention_mask[:, :max_length]
        else:
            input_ids, attention_mask = _keep_ends(input_ids, max_length), _keep_ends(attention_mask, max_length)
    return input_ids, attention_mask


def _keep_ends(t: torch.Tensor, max_length: int) -> torch.Tensor:
    """First ``max_length // 2`` and last ``max_length - max_length // 2`` columns of ``t``."""
    head = max_length // 2
    return torch.cat([t[:, :head], t[:, t.shape[-1] - (max_length - head) :]], dim=-1)


def tokenize_and_postprocess_data(
    prompt: str,
    tokenizer: Any,
    max_length: int,
    pad_token_id: int,
    left_pad: bool = True,
    truncation: str = "error",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise one prompt (no special tokens added) and run :func:`postprocess_data` on it.

    Returns:
        ``(input_ids, attention_mask)`` both ``(1, max_length)``.
    """
    encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    return postprocess_data(
        encoded["input_ids"], encoded["attention_mask"], max_length, pad_token_id, left_pad, truncation
    )


def remove_pad_token(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Drop padded positions row by row.

    Args:
        input_ids: ``(bs, seq_len)``.
        attention_mask: ``(bs, seq_len)``.

    Returns:
        ``bs`` lists holding the ids where the mask is set.
    """
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]


def split_dict_tensor_into_batches(tensors: Any, batch_size: int) -> list[Any]:
    """Split a ``TensorDict`` along its batch dimension into chunks of exactly ``batch_size`` rows."""
    total = tensors.batch_size[0]
    if total % batch_size != 0:
        raise ValueError(f"batch of {total} rows cannot be split evenly into chunks of batch_size={batch_size}.")
    return list(tensors.split(batch_size))


# ---------------------------------------------------------------------------------------------------------------------
# learning-rate schedules (LambdaLR factories)
# ---------------------------------------------------------------------------------------------------------------------


def get_constant_schedule_with_warmup(optimizer: Any, num_warmup_steps: int, last_epoch: int = -1) -> LambdaLR:
    """Linear warmup from 0 to the base lr over ``num_warmup_steps``, constant afterwards."""

    def lr_lambda(step: int) -> float:
        # without warm-up the first step already runs at the base lr (step / 1 would make it 0)
        if num_warmup_steps <= 0:
            return 1.0
        return min(1.0, float(step) / float(num_warmup_steps))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_cosine_schedule_with_warmup(
    optimizer: Any,
    num_warmup_steps: int,
    num_training_steps: int,
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
    init_lr_ratio: float | None = None,
) -> LambdaLR:
    """Linear warmup, then cosine decay from the base lr down to ``min_lr_ratio * lr``.

    Args:
        optimizer: the optimizer to schedule.
        num_warmup_steps: warmup length; the multiplier rises from ``init_lr_ratio`` (default 0) to 1.
        num_training_steps: total steps, warmup included.
        min_lr_ratio: floor of the multiplier, in ``[0, 1]``.
        num_cycles: cosine periods over the decay phase (0.5 = one half-wave from max to min).
        last_epoch: for resuming.
        init_lr_ratio: multiplier at step 0.

    Returns:
        a ``LambdaLR``.
    """
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}.")
    start = 0.0 if init_lr_ratio is None else float(init_lr_ratio)
    # cos in [-1, 1] is mapped affinely onto [min_lr_ratio, 1].
    half_span = (1.0 - min_lr_ratio) * 0.5
    mid = (1.0 + min_lr_ratio) * 0.5

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return start + (1.0 - start) * float(step) / float(max(1, num_warmup_steps))
        progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
        return max(min_lr_ratio, mid + half_span * math.cos(2.0 * math.pi * num_cycles * progress))

    return LambdaLR(optimizer, lr_lambda, last_epoch)


def get_wsd_schedule_with_warmup(
    optimizer: Any,
    num_warmup_steps: int,
    num_training_steps: int,
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
    last_epoch: int = -1,
    stable_ratio: float = 0.9,
) -> LambdaLR:
    """Warmup-stable-decay: linear warmup, a flat phase (``stable_ratio`` of the remaining steps), cosine decay.

    Returns:
        a ``LambdaLR`` whose multiplier ends at ``min_lr_ratio``.
    """
    remaining = max(0, num_training_steps - num_warmup_steps)
    num_stable = int(remaining * stable_ratio)
    num_decay = remaining - num_stable

    def lr_lambda(step: int) -> float:
        if step < num_warmup_steps:
            return float(step) / float(max(1, num_warmup_steps))
        if step < num_warmup_steps + num_stable:
            return 1.0
        if step < num_training_steps:
            progress = float(step - num_warmup_steps - num_stable) / float(max(1, num_decay))
            shape = max(0.0, 0.5 * (1.0 + math.cos(2.0 * math.pi * num_cycles * progress)))
            return min_lr_ratio + (1.0 - min_lr_ratio) * shape
        return min_lr_ratio

    return LambdaLR(optimizer, lr_lambda, last_epoch)


# ---------------------------------------------------------------------------------------------------------------------
# cross-rank reductions (lazy torch.distributed; local maths without a process group)
# ---------------------------------------------------------------------------------------------------------------------


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    if _dist_ready():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor


def distributed_masked_mean(local_tensor: torch.Tensor, local_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the elements of every rank (sum and count are all-reduced separately)."""
    local_sum = masked_sum(local_tensor, local_mask).float().reshape(1)
    local_count = local_mask.sum().float().reshape(1)
    total = _all_reduce(torch.cat([local_sum, local_count]), "SUM")
    return total[0] / (total[1] + 1e-8)


def distributed_mean_max_min_std(
    local_tensor: torch.Tensor, compute_max: bool = True, compute_min: bool = True, compute_std: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Mean, max, min and unbiased std of a tensor spread over all ranks.

    Returns:
        ``(mean, max, min, std)``; entries not requested are ``None``.
    """
    values = local_tensor.detach().float().reshape(-1)
    stats = _all_reduce(torch.stack([values.sum(), torch.tensor(float(values.numel()))]), "SUM")
    mean = stats[0] / stats[1]
    max_v = _all_reduce(values.max().clone(), "MAX") if compute_max else None
    min_v = _all_reduce(values.min().clone(), "MIN") if compute_min else None
    std = None
    if compute_std:
        sq = _all_reduce(((values - mean) ** 2).sum(), "SUM")
        std = torch.sqrt(sq / torch.clamp(stats[1] - 1, min=1))
    return mean, max_v, min_v, std
