"""``DataProto`` <-> engine requests: the translation every rollout shares (``EngineRollout`` in ``base.py``).

1. ``rollout_sampling(config, meta, ...)``: one ``generate_sequences`` call's settings from the rollout config and the
   prompts' ``meta_info`` (``validate`` switches to ``val_kwargs``; meta keys override; temperature <= 0 or
   ``do_sample=False`` is greedy), as one :class:`~verl.workers.rollout.engine.SamplingParams` per row.
2. ``prompt_token_lists(prompts)``: the left-padded prompt rows as unpadded id lists, one request per row.
3. ``assemble_output(prompts, outputs, sampling)``: the engine's per-row outputs as the rollout output contract
   (``verl.workers.rollout.hf_rollout``), capture tensors included.

``n`` is never sent to an engine: the trainer repeats each prompt ``n`` times before generating, so each row is one
request. With ``meta_info["seed"]`` row ``i`` samples with seed ``seed + i``, so repeated prompts differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from verl.protocol import DataProto
from verl.utils.torch_functional import get_response_mask, pad_2d_list_to_length, remove_pad_token
from verl.workers.rollout.engine import GenerationOutput, SamplingParams
from verl.workers.rollout.logit_capture import CaptureSpec, captures_to_tensors

__all__ = ["RolloutSampling", "assemble_output", "prompt_token_lists", "rollout_sampling"]


@dataclass(frozen=True)
class RolloutSampling:
    """The settings of one ``generate_sequences`` call."""

    params: SamplingParams
    """Every row's sampling; ``params.seed`` is the base seed (row ``i`` uses ``seed + i``)."""
    pad_id: int
    logit_capture: bool = False
    """Whether ``params.capture`` is ``rollout.logit_capture`` (False: none, or the logprob-only capture of
    ``calculate_log_probs``)."""

    @property
    def response_length(self) -> int:
        return self.params.max_tokens

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return self.params.stop_token_ids

    def row(self, i: int) -> SamplingParams:
        """Row ``i``'s parameters (its own seed when the call has one)."""
        return self.params if self.params.seed is None else self.params.replace(seed=self.params.seed + i)


def rollout_sampling(
    config: Any,
    meta: dict,
    default_eos: int | Sequence[int] | None,
    default_pad: int | None,
    capture_spec: CaptureSpec | None = None,
) -> RolloutSampling:
    """Resolve one call's settings.

    Args:
        config: typed ``RolloutConfig``.
        meta: the prompts' ``meta_info`` (``validate``, ``do_sample``, ``temperature``, ``top_p``, ``top_k``,
            ``response_length``, ``seed``, ``calculate_log_probs``, ``eos_token_id``, ``pad_token_id``).
        default_eos: the model's EOS id(s), used when the meta has none.
        default_pad: the pad id used when the meta has none (falls back to the first EOS).
        capture_spec: ``rollout.logit_capture`` (None when off). Without it, ``calculate_log_probs`` asks for the
            sampled tokens' logprobs (raw with ``rollout.logprobs_mode=raw_logprobs``).

    Raises:
        ValueError: no EOS id anywhere, or a non-positive response length.
    """
    source = config.val_kwargs if meta.get("validate", False) else config
    values = {key: meta.get(key, getattr(source, key)) for key in ("do_sample", "temperature", "top_p", "top_k")}
    greedy = not bool(values["do_sample"]) or float(values["temperature"]) <= 0
    eos = meta.get("eos_token_id", default_eos)
    if eos is None or eos == ():
        raise ValueError("prompts.meta_info['eos_token_id'] is missing and the model has no EOS id")
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    pad = meta.get("pad_token_id", default_pad)
    response_length = int(meta.get("response_length", config.response_length))
    if response_length <= 0:
        raise ValueError("response_length must be set (rollout.response_length or meta_info['response_length'])")
    capture = capture_spec
    if capture is None and bool(meta.get("calculate_log_probs", config.calculate_log_probs)):
        capture = CaptureSpec(mode="logprob", raw=config.logprobs_mode == "raw_logprobs")
    seed = meta.get("seed")
    params = SamplingParams(
        max_tokens=response_length,
        temperature=0.0 if greedy else float(values["temperature"]),
        top_p=1.0 if greedy else float(values["top_p"]),
        top_k=-1 if greedy else int(values["top_k"]),
        seed=None if seed is None else int(seed),
        stop_token_ids=eos_ids,
        ignore_eos=bool(config.ignore_eos),
        capture=capture,
    )
    return RolloutSampling(params, int(eos_ids[0] if pad is None else pad), capture_spec is not None)


def prompt_token_lists(prompts: DataProto) -> list[list[int]]:
    """The prompt ids of each row without its left padding (what an engine request takes)."""
    return remove_pad_token(prompts.batch["input_ids"], prompts.batch["attention_mask"])


def assemble_output(prompts: DataProto, outputs: Sequence[GenerationOutput], sampling: RolloutSampling) -> DataProto:
    """Build the rollout output contract (see ``verl.workers.rollout.hf_rollout``) from per-row engine outputs.

    Returns:
        DataProto with ``prompts``, ``responses``, ``input_ids``, ``attention_mask``, ``position_ids``,
        ``response_mask``; with a capture, ``rollout_log_probs`` ``(bs, R)`` (0 on padding) and the capture mode's
        tensors (``logit_capture.CAPTURE_TENSOR_KEYS``); ``meta_info["aborted_rows"]``.
    """
    idx, attention_mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
    position_ids = prompts.batch["position_ids"]
    r = sampling.response_length
    token_lists = [o.token_ids for o in outputs]
    if len(token_lists) != idx.size(0) or any(len(row) > r for row in token_lists):
        raise ValueError(f"engine returned {len(token_lists)} rows for {idx.size(0)} prompts, or a row longer than {r}")
    responses = pad_2d_list_to_length(token_lists, sampling.pad_id, max_length=r).to(idx.device)  # (bs, R)
    # 1 up to and including the first EOS and only over generated tokens (a short row is padding after its end).
    lengths = torch.tensor([len(row) for row in token_lists], device=idx.device)
    generated = (torch.arange(r, device=idx.device).unsqueeze(0) < lengths.unsqueeze(1)).to(attention_mask.dtype)
    response_mask = get_response_mask(responses, eos_token=list(sampling.eos_ids), dtype=attention_mask.dtype)
    response_mask = response_mask * generated
    responses = torch.where(response_mask.bool(), responses, torch.full_like(responses, sampling.pad_id))
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
    spec = sampling.params.capture
    if spec is not None:
        captured = captures_to_tensors([o.capture for o in outputs], r, spec)
        captured["rollout_log_probs"] = captured["rollout_log_probs"] * response_mask.to("cpu", torch.float32)
        tensors.update({key: value.to(idx.device) for key, value in captured.items()})
    out = DataProto.from_dict(tensors=tensors, non_tensors=dict(prompts.non_tensor_batch or {}))
    out.meta_info["aborted_rows"] = sum(o.finish_reason == "abort" for o in outputs)
    if sampling.logit_capture:  # tells consumers (reward managers) the capture tensors are there
        out.meta_info["logit_capture"] = spec.describe()
    return out
