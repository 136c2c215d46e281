"""Padded batches <-> padding-free (nested) ones, as verl's engine workers exchange them.

* :func:`left_right_2_no_padding`: a batch whose rows are padded (prompt left, response right, or anything else the
  ``attention_mask`` describes) becomes one whose ``input_ids`` and ``position_ids`` are jagged nested tensors of each
  row's real tokens, with a nested ``loss_mask`` on the same tokens (0 on the prompt, the row's ``response_mask`` on
  its response); every other entry (log-probs, advantages, ...) stays padded.
* :func:`no_padding_2_padding`: per-token values computed on such a nested batch (position ``t`` predicting token
  ``t + 1``, as logits and log-probs are) back to a padded ``(batch, response_length)`` tensor aligned with the
  responses.

A row's prompt length is the length of its ``prompts`` entry when that is nested, else its real tokens minus the
real tokens in the last ``R`` columns (the response columns of a left/right-padded batch, ``R`` the width of
``response_mask``).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["left_right_2_no_padding", "no_padding_2_padding"]


def _nested(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def _prompt_lengths(data: TensorDict) -> list[int]:
    prompts = data.get("prompts", None) if "prompts" in data.keys() else None
    if prompts is not None and prompts.is_nested:
        return [int(p.numel()) for p in prompts.unbind()]
    mask = data["attention_mask"]
    width = data["response_mask"].shape[-1]
    real, responses = mask.sum(-1), mask[:, -width:].sum(-1)
    return [int(r) - int(s) for r, s in zip(real.tolist(), responses.tolist())]


def left_right_2_no_padding(data: TensorDict) -> TensorDict:
    """The batch with ``input_ids``, ``position_ids`` and ``loss_mask`` as nested tensors of the real tokens.

    Args:
        data: ``input_ids``, ``attention_mask``, ``position_ids`` ``(b, T)``, ``response_mask`` ``(b, R)``;
            optionally nested ``prompts`` / ``responses``.

    Returns:
        A new TensorDict (``data`` is not changed) with the three nested entries; the rest as given.
    """
    mask = data["attention_mask"].bool()
    out = data.clone(recurse=False)
    out["input_ids"] = _nested([row[m] for row, m in zip(data["input_ids"], mask)])
    out["position_ids"] = _nested([row[m] for row, m in zip(data["position_ids"], mask)])
    loss_rows = []
    response_mask = data["response_mask"]
    for i, prompt_length in enumerate(_prompt_lengths(data)):
        n_real = int(mask[i].sum())
        response = response_mask[i, : n_real - prompt_length].to(response_mask.dtype)
        loss_rows.append(torch.cat([response.new_zeros(prompt_length), response]))
    out["loss_mask"] = _nested(loss_rows)
    return out


def no_padding_2_padding(values: torch.Tensor, data: TensorDict) -> torch.Tensor:
    """Nested per-token ``values`` (value ``t`` predicts token ``t + 1``) -> ``(b, R)`` aligned with the responses.

    Row ``i``'s column ``j`` is ``values[i][prompt_length_i - 1 + j]``; columns past the row's tokens are 0.
    """
    width = data["response_mask"].shape[-1]
    rows = []
    for row, prompt_length in zip(values.unbind(), _prompt_lengths(data)):
        piece = row[max(prompt_length - 1, 0) : max(prompt_length - 1, 0) + width]
        padded = row.new_zeros((width, *row.shape[1:]))
        padded[: piece.shape[0]] = piece
        rows.append(padded)
    return torch.stack(rows)
