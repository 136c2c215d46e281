"""Request/response translation shared by the token-in/token-out engines (vLLM, SGLang).

An engine adapter does three things around its engine call, and this module holds the engine-free two of them:

1. ``sampling_request(config, meta, ...)``: the sampling settings of one ``generate_sequences`` call, resolved from
   the rollout config and the prompts' ``meta_info`` exactly as ``HFRollout`` resolves them (``validate`` switches to
   ``val_kwargs``; meta keys override; temperature <= 0 or ``do_sample=False`` is greedy).
2. ``prompt_token_lists(prompts)``: the left-padded prompt rows as unpadded id lists, one engine request per row.
3. ``assemble_output(prompts, token_lists, log_prob_lists, request)``: the engine's per-row generated ids (and
   sampled-token logprobs) as the output contract documented in ``verl.workers.rollout.hf_rollout``.

``n`` is never sent to an engine: the trainer repeats each prompt ``n`` times before generating, so each row is one
request. Rows get distinct seeds (``seed + row``) so repeated prompts do not sample the same response.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from verl.protocol import DataProto
from verl.utils.torch_functional import get_response_mask, pad_2d_list_to_length, remove_pad_token

__all__ = ["SamplingRequest", "assemble_output", "prompt_token_lists", "sampling_request"]


@dataclass(frozen=True)
class SamplingRequest:
    """The sampling settings of one batch, engine-neutral."""

    greedy: bool
    temperature: float
    """The sampling temperature; 1.0 when greedy (what the actor divides logits by to recompute logprobs)."""
    top_p: float
    top_k: int
    """-1 keeps every token."""
    response_length: int
    seed: int | None
    """Base seed; row ``i`` uses ``seed + i``. None leaves the engine's own RNG stream."""
    calculate_log_probs: bool
    eos_ids: tuple[int, ...]
    pad_id: int
    ignore_eos: bool = False

    def row_seed(self, row: int) -> int | None:
        return None if self.seed is None else self.seed + row


def sampling_request(
    config: Any, meta: dict, default_eos: int | Sequence[int] | None, default_pad: int | None
) -> SamplingRequest:
    """Resolve one call's sampling settings like ``HFRollout`` does.

    Args:
        config: typed ``RolloutConfig``.
        meta: the prompts' ``meta_info`` (``validate``, ``do_sample``, ``temperature``, ``top_p``, ``top_k``,
            ``response_length``, ``seed``, ``calculate_log_probs``, ``eos_token_id``, ``pad_token_id``).
        default_eos: the model's EOS id(s), used when the meta has none.
        default_pad: the tokenizer's pad id, used when the meta has none (falls back to the first EOS).

    Raises:
        ValueError: no EOS id anywhere, or a non-positive response length.
    """
    source = config.val_kwargs if meta.get("validate", False) else config
    params = {key: meta.get(key, getattr(source, key)) for key in ("do_sample", "temperature", "top_p", "top_k")}
    greedy = not bool(params["do_sample"]) or float(params["temperature"]) <= 0
    eos = meta.get("eos_token_id", default_eos)
    if eos is None:
        raise ValueError("prompts.meta_info['eos_token_id'] is missing and the model has no EOS id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    pad = meta.get("pad_token_id", default_pad)
    response_length = int(meta.get("response_length", config.response_length))
    if response_length <= 0:
        raise ValueError("response_length must be set (rollout.response_length or meta_info['response_length'])")
    top_k = int(params["top_k"])
    seed = meta.get("seed")
    return SamplingRequest(
        greedy=greedy,
        temperature=1.0 if greedy else float(params["temperature"]),
        top_p=1.0 if greedy else float(params["top_p"]),
        top_k=-1 if greedy or top_k <= 0 else top_k,
        response_length=response_length,
        seed=None if seed is None else int(seed),
        calculate_log_probs=bool(meta.get("calculate_log_probs", config.calculate_log_probs)),
        eos_ids=eos_ids,
        pad_id=int(eos_ids[0] if pad is None else pad),
        ignore_eos=bool(config.ignore_eos),
    )


def prompt_token_lists(prompts: DataProto) -> list[list[int]]:
    """The prompt ids of each row without its left padding (what an engine request takes)."""
    return remove_pad_token(prompts.batch["input_ids"], prompts.batch["attention_mask"])


def assemble_output(
    prompts: DataProto,
    token_lists: Sequence[Sequence[int]],
    log_prob_lists: Sequence[Sequence[float]] | None,
    request: SamplingRequest,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> DataProto:
    """Build the rollout output contract (see ``verl.workers.rollout.hf_rollout``) from per-row engine results.

    Args:
        prompts: the input batch (``input_ids``, ``attention_mask``, ``position_ids`` of shape ``(bs, P)``).
        token_lists: ``bs`` lists of generated ids (at most ``response_length`` each; an EOS may end them).
        log_prob_lists: ``bs`` lists of sampled-token logprobs aligned with ``token_lists``, or None.
        request: the resolved sampling settings.
        extra_tensors: more ``(bs, ...)`` tensors to add (e.g. logit captures).

    Returns:
        DataProto with ``prompts``, ``responses``, ``input_ids``, ``attention_mask``, ``position_ids``,
        ``response_mask`` and, when ``log_prob_lists`` is given, ``rollout_log_probs`` ``(bs, R)`` (0 on padding).
    """
    idx, attention_mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
    position_ids = prompts.batch["position_ids"]
    r = request.response_length
    if len(token_lists) != idx.size(0) or any(len(row) > r for row in token_lists):
        raise ValueError(f"engine returned {len(token_lists)} rows for {idx.size(0)} prompts, or a row longer than {r}")
    responses = pad_2d_list_to_length(token_lists, request.pad_id, max_length=r).to(idx.device)  # (bs, R)
    # 1 up to and including the first EOS and only over generated tokens (a short row is padding after its end).
    lengths = torch.tensor([len(row) for row in token_lists], device=idx.device)
    generated = (torch.arange(r, device=idx.device).unsqueeze(0) < lengths.unsqueeze(1)).to(attention_mask.dtype)
    response_mask = get_response_mask(responses, eos_token=list(request.eos_ids), dtype=attention_mask.dtype)
    response_mask = response_mask * generated
    responses = torch.where(response_mask.bool(), responses, torch.full_like(responses, request.pad_id))
    shape = [1] * (position_ids.dim() - 1) + [r]
    delta = torch.arange(1, r + 1, device=position_ids.device, dtype=position_ids.dtype)
    tensors = {
        "prompts": idx,
        "responses": responses,
        "input_ids": torch.cat([idx, responses], dim=-1),
        "attention_mask": torch.cat([attention_mask, response_mask], dim=-1),
        "position_ids": torch.cat([position_ids, position_ids[..., -1:] + delta.view(*shape)], dim=-1),
        "response_mask": response_mask,
    }
    if log_prob_lists is not None:
        rows = [list(map(float, row)) + [0.0] * (r - len(row)) for row in log_prob_lists]
        log_probs = torch.tensor(rows, dtype=torch.float32, device=idx.device).reshape(len(rows), r)
        tensors["rollout_log_probs"] = log_probs * response_mask.to(log_probs.dtype)
    tensors.update(extra_tensors or {})
    return DataProto.from_dict(tensors=tensors, non_tensors=dict(prompts.non_tensor_batch or {}))
