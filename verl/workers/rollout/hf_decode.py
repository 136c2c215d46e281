"""A lean sampling loop for decoder-only Hugging Face models: what ``generate`` does for one plain sampling call.

``HFRollout`` asks for one thing only: sample up to ``max_new_tokens`` per row with temperature / top-k / top-p
(or greedily), stop a row at EOS, pad it afterwards, optionally keep the raw logits of every step. transformers'
``generate`` does that and much more (beam search, assisted decoding, compiled caches, dozens of logits
processors), and on a small model its per-step bookkeeping costs as much as a quarter of the call. This loop does
the same steps in the same order:

* one prefill forward on the whole (left-padded) prompt with ``logits_to_keep=1`` and a fresh KV cache;
* per step: the last position's logits in float32, the same warpers as ``generate`` (transformers'
  ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``, added under the same conditions), then
  ``softmax`` + ``torch.multinomial`` (or ``argmax``), finished rows forced to the pad id, the attention mask
  extended by one and the position ids by +1 per row, exactly as ``generate`` updates them;
* stop when every row has produced an EOS or after ``max_new_tokens`` steps.

The random stream is consumed identically, so for the same seed the sampled tokens equal ``generate``'s (tested
against it). Models this loop cannot serve the same way (encoder-decoder, no ``logits_to_keep`` or
``past_key_values`` argument) go through ``generate``: see :func:`supports_lean_decode`.
"""

from __future__ import annotations

import torch
from torch import nn

from verl.utils.hf_models import forward_accepts

__all__ = ["lean_sample", "supports_lean_decode"]


def supports_lean_decode(module: nn.Module) -> bool:
    """Whether :func:`lean_sample` can stand in for ``module.generate`` (a decoder-only LM with a KV cache)."""
    config = getattr(module, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    names = ("input_ids", "attention_mask", "position_ids", "past_key_values", "logits_to_keep")
    return forward_accepts(module, *names)


def _warpers(do_sample: bool, temperature: float, top_k: int, top_p: float):
    """The logits processors ``generate`` builds for these sampling settings (none when greedy)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if not do_sample:
        return processors
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k != 0:
        processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return processors


@torch.no_grad()
def lean_sample(
    module: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_token_id: int | list[int],
    pad_token_id: int,
    output_logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample continuations of left-padded prompts.

    Args:
        module: a decoder-only causal LM (see :func:`supports_lean_decode`), already in eval mode.
        input_ids, attention_mask, position_ids: ``(bs, P)`` left-padded prompts.
        max_new_tokens: the most tokens per row.
        do_sample, temperature, top_k, top_p: as ``GenerationConfig`` (``top_k=0`` and ``top_p=1`` disable).
        eos_token_id: one id or several; a row stops after emitting any of them.
        pad_token_id: written after a row's EOS.
        output_logits: also return each step's raw (unprocessed) logits.

    Returns:
        ``(new_tokens (bs, L), raw_logits (bs, L, V) float32 or None)``, ``L <= max_new_tokens`` (fewer when every
        row stopped early), as ``generate(..., return_dict_in_generate=True, output_logits=...)`` gives them.
    """
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    eos = eos.to(input_ids.device)
    processors = _warpers(do_sample, float(temperature), int(top_k), float(top_p))
    unfinished = torch.ones(input_ids.size(0), dtype=torch.long, device=input_ids.device)
    sequence = input_ids
    steps: list[torch.Tensor] = []
    raw: list[torch.Tensor] = []
    from transformers import DynamicCache

    outputs = module(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=DynamicCache(config=module.config),  # what generate and the model would create
        use_cache=True,
        logits_to_keep=1,
        return_dict=True,
    )
    for step in range(max_new_tokens):
        if step > 0:
            # extend the mask and positions as generate does (every row, finished or not), then one cached step
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.size(0), 1))], dim=-1)
            position_ids = position_ids[..., -1:] + 1
            outputs = module(
                input_ids=steps[-1][:, None],
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=outputs.past_key_values,
                use_cache=True,
                logits_to_keep=1,
                return_dict=True,
            )
        logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        if output_logits:
            raw.append(logits)
        scores = processors(sequence, logits)
        if do_sample:
            tokens = torch.multinomial(nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            tokens = torch.argmax(scores, dim=-1)
        tokens = tokens * unfinished + pad_token_id * (1 - unfinished)
        steps.append(tokens)
        sequence = torch.cat([sequence, tokens[:, None]], dim=-1)
        unfinished = unfinished & ~torch.isin(tokens, eos)
        if not bool(unfinished.any()):
            break
    new_tokens = torch.stack(steps, dim=1) if steps else input_ids.new_empty((input_ids.size(0), 0))
    return new_tokens, (torch.stack(raw, dim=1) if output_logits and raw else None)
