"""Synchronous rollout with transformers ``generate``: the reference engine, and the only one that runs on CPU.

The caller passes the module to generate with and keeps its weights equal to the actor's (in the hybrid engine
the FSDP worker hands over the current unsharded module). ``n`` is not applied here: the trainer repeats each prompt
before calling ``generate_sequences``.

Output contract (shared by every engine), for ``bs`` prompts of padded length ``P`` and ``R = response_length``:

=====================  =================  ==========================================================================
key                    shape              meaning
=====================  =================  ==========================================================================
``prompts``            ``(bs, P)``        the prompt ids, left-padded, exactly as given
``responses``          ``(bs, R)``        generated ids, right-padded with ``pad_token_id`` after the first EOS
``input_ids``          ``(bs, P+R)``      ``prompts`` then ``responses``
``attention_mask``     ``(bs, P+R)``      prompt mask, then 1 up to and including the first EOS, 0 after
``position_ids``       ``(bs, P+R)``      prompt positions, continued by +1 per response token
``response_mask``      ``(bs, R)``        1 on generated tokens up to and including the first EOS
``rollout_log_probs``  ``(bs, R)``        only when asked: log_softmax(raw logits / T) at the sampled token, 0 on pad
=====================  =================  ==========================================================================

``rollout_log_probs`` are the sampled token's logprob under the distribution it was drawn from (raw logits / T,
then top-k and top-p; vLLM's ``processed_logprobs``), or under the raw logits with ``rollout.logprobs_mode=
raw_logprobs`` or ``logit_capture.raw``. Without top-k/top-p filtering (the training default) they equal what
``DataParallelPPOActor.compute_log_prob`` recomputes at the same temperature. With ``rollout.logit_capture.enable``
the output also carries the captured tensors of ``logit_capture.CAPTURE_TENSOR_KEYS`` (same padding). Raw logits
cost ``bs * R * vocab`` floats, so they are only requested when something needs them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

from verl.protocol import DataProto
from verl.utils.torch_functional import get_response_mask, leading_pad_columns, pad_sequence_to_length
from verl.workers.config import RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.hf_decode import lean_sample, supports_lean_decode
from verl.workers.rollout.logit_capture import (
    CaptureSpec,
    capture_from_logits,
    captures_to_tensors,
    check_capture_budget,
)

__all__ = ["HFRollout"]


def as_rollout_config(config: Any) -> tuple[RolloutConfig, int | None]:
    """``(typed RolloutConfig, micro_batch_size)`` from a typed config, a DictConfig or a dict.

    ``micro_batch_size`` (prompts per ``generate`` call) is not a key of verl's rollout config; older callers put it
    there, so a mapping's ``micro_batch_size`` is taken out before the rest is typed.
    """
    if isinstance(config, RolloutConfig):
        return config, None
    from omegaconf import OmegaConf

    from verl.utils.config import omega_conf_to_dataclass

    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    micro = plain.pop("micro_batch_size", None)
    plain.pop("_target_", None)
    return omega_conf_to_dataclass(plain, RolloutConfig), micro


class HFRollout(BaseRollout):
    """Generate with ``module.generate`` in micro-batches of ``micro_batch_size`` prompts (default: all at once).

    Args:
        module: a Hugging Face causal LM (unsharded, or a wrapper whose ``generate`` works).
        config: typed ``actor_rollout_ref.rollout`` config (a DictConfig or dict is converted); reads
            ``temperature``, ``top_p``, ``top_k``, ``do_sample``, ``response_length``, ``val_kwargs``,
            ``calculate_log_probs``.
        micro_batch_size: prompts per ``generate`` call.

    Meta keys of the prompts override the config: ``do_sample``, ``temperature``, ``top_p``, ``top_k`` (-1 or 0
    disables), ``response_length``, ``eos_token_id`` (int or list), ``pad_token_id``, ``calculate_log_probs``,
    ``seed``; ``validate=True`` switches to ``config.val_kwargs`` (temperature 0 or do_sample False = greedy).
    """

    def __init__(self, module: nn.Module, config: Any, micro_batch_size: int | None = None):
        typed, legacy_micro = as_rollout_config(config)
        super().__init__(typed)
        self.module = module
        self.micro_batch_size = micro_batch_size or legacy_micro
        self.capture_spec = CaptureSpec.from_config(self.config.logit_capture)  # None when capture is off
        # hf_decode.lean_sample instead of module.generate for decoder-only models (identical tokens, less overhead)
        self.lean_decode = True

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """Generate responses for ``prompts`` (``input_ids``, ``attention_mask``, ``position_ids``); see module doc."""
        start = time.perf_counter()
        micro_batch_size = int(self.micro_batch_size or len(prompts))
        outputs = [self._generate_micro_batch(chunk, i) for i, chunk in enumerate(prompts.split(micro_batch_size))]
        output = DataProto.concat(outputs)
        output.meta_info["timing"] = {"generate_sequences": time.perf_counter() - start}
        if self.capture_spec is not None:  # tells consumers (reward managers) the capture tensors are there
            output.meta_info["logit_capture"] = self.capture_spec.describe()
        return output

    def _sampling_params(self, meta: dict) -> dict[str, Any]:
        """do_sample / temperature / top_p / top_k for this call; greedy when temperature <= 0."""
        cfg = self.config
        source = cfg.val_kwargs if meta.get("validate", False) else cfg
        params = {key: meta.get(key, getattr(source, key)) for key in ("do_sample", "temperature", "top_p", "top_k")}
        if float(params["temperature"]) <= 0:
            params["do_sample"] = False
        return params

    def _special_ids(self, meta: dict) -> tuple[int | list[int], int]:
        gen_cfg = getattr(self.module, "generation_config", None)
        eos = meta.get("eos_token_id", getattr(gen_cfg, "eos_token_id", None))
        if eos is None:
            raise ValueError("prompts.meta_info['eos_token_id'] is missing and the model has no generation eos id")
        pad = meta.get("pad_token_id", getattr(gen_cfg, "pad_token_id", None))
        if pad is None:  # pad with EOS, as tokenizers without a pad token do
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        return eos, int(pad)

    def _generation_config(self, params: dict, response_length: int, eos, pad: int, need_logits: bool):
        """The GenerationConfig of one call; ``_checkpoint_defaults_off`` keeps the checkpoint's out of it."""
        sampling = bool(params["do_sample"])
        return GenerationConfig(
            do_sample=sampling,
            temperature=float(params["temperature"]) if sampling else 1.0,
            top_p=float(params["top_p"]) if sampling else 1.0,
            top_k=max(int(params["top_k"]), 0) if sampling else 0,
            repetition_penalty=1.0,
            max_new_tokens=response_length,
            min_new_tokens=0,
            eos_token_id=eos,
            pad_token_id=pad,
            use_cache=True,
            num_beams=1,
            num_return_sequences=1,
            return_dict_in_generate=True,
            output_logits=need_logits,
        )

    @contextlib.contextmanager
    def _checkpoint_defaults_off(self):
        """Hide the checkpoint's generation_config while generating.

        transformers fills every field the call leaves unset from ``module.generation_config`` (a chat model's
        repetition_penalty, no_repeat_ngram_size, top_k, ...). Those would make the sampling distribution differ
        from the policy being trained, so only the rollout config's values and library defaults may apply.
        """
        saved = getattr(self.module, "generation_config", None)
        if saved is None:
            yield
            return
        self.module.generation_config = GenerationConfig()
        try:
            yield
        finally:
            self.module.generation_config = saved

    def _generate_with_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        generation_config: GenerationConfig,
        seed: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run ``generate`` and return the new tokens and, when requested, the raw per-step logits.

        Logit-capture modes build on this: the raw logits are the model's outputs before temperature, penalties or
        top-k/top-p, one row per generated step.

        Returns:
            ``(new_tokens (bs, L), raw_logits (bs, L, V) float32 or None)`` with ``L <= max_new_tokens`` (generation
            stops early once every row has finished).
        """
        extra = {"position_ids": position_ids} if position_ids.dim() == 2 else {}
        rng = contextlib.nullcontext()
        if seed is not None:
            devices = [input_ids.device.index or 0] if input_ids.is_cuda else []
            rng = torch.random.fork_rng(devices=devices)
        lean = self.lean_decode and position_ids.dim() == 2 and supports_lean_decode(self.module)
        was_training = self.module.training
        self.module.eval()
        try:
            with rng, torch.no_grad(), self._checkpoint_defaults_off():
                if seed is not None:
                    torch.manual_seed(seed)
                if lean:  # same tokens as generate for the same seed, without its per-step bookkeeping
                    return lean_sample(
                        self.module,
                        input_ids,
                        attention_mask,
                        position_ids,
                        max_new_tokens=int(generation_config.max_new_tokens),
                        do_sample=bool(generation_config.do_sample),
                        temperature=float(generation_config.temperature),
                        top_k=int(generation_config.top_k or 0),
                        top_p=float(generation_config.top_p),
                        eos_token_id=generation_config.eos_token_id,
                        pad_token_id=int(generation_config.pad_token_id),
                        output_logits=bool(generation_config.output_logits),
                    )
                out = self.module.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **extra
                )
        finally:
            self.module.train(was_training)
        new_tokens = out.sequences[:, input_ids.size(1) :]
        raw_logits = torch.stack(out.logits, dim=1).float() if out.logits else None  # (bs, L, V)
        return new_tokens, raw_logits

    def _logit_outputs(
        self, raw_logits: torch.Tensor, responses: torch.Tensor, response_mask: torch.Tensor, params: dict
    ) -> dict[str, torch.Tensor]:
        """``rollout_log_probs`` ``(bs, R)`` and, with logit capture on, the captured tensors (0 outside the mask).

        One code path, ``logit_capture.capture_from_logits``, serves every mode: the sampled token's logprob under
        the distribution it was drawn from (temperature, top-k, top-p applied; see ``logit_capture``), or under the
        raw logits with ``logit_capture.raw`` / ``rollout.logprobs_mode=raw_logprobs``.

        Args:
            raw_logits: ``(bs, L, V)`` raw logits of the ``L <= R`` generated steps.
            responses: ``(bs, R)`` padded responses.
            response_mask: ``(bs, R)``.
            params: the call's sampling parameters (``do_sample``, ``temperature``, ``top_k``, ``top_p``).
        """
        spec = self.capture_spec or CaptureSpec(mode="logprob", raw=self.config.logprobs_mode == "raw_logprobs")
        sampling = {"temperature": 1.0, "top_k": -1, "top_p": 1.0}
        if params["do_sample"]:
            sampling = {key: float(params[key]) for key in ("temperature", "top_p")}
            sampling["top_k"] = int(params["top_k"])
        lengths = response_mask.sum(dim=-1).tolist()
        captures = [
            capture_from_logits(raw_logits[i, : int(n)], responses[i, : int(n)], spec, **sampling)
            for i, n in enumerate(lengths)
        ]
        return captures_to_tensors(captures, responses.size(1), spec)

    def _generate_micro_batch(self, prompts: DataProto, index: int) -> DataProto:
        batch, meta = prompts.batch, prompts.meta_info
        idx, attention_mask, position_ids = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
        params = self._sampling_params(meta)
        eos, pad = self._special_ids(meta)
        response_length = int(meta.get("response_length", self.config.response_length))
        if response_length <= 0:
            raise ValueError("response_length must be set (rollout.response_length or meta_info['response_length'])")
        want_log_probs = bool(meta.get("calculate_log_probs", self.config.calculate_log_probs))
        if self.capture_spec is not None:
            vocab = int(self.module.config.vocab_size)
            check_capture_budget(self.capture_spec, len(prompts), response_length, vocab)
        need_logits = want_log_probs or self.capture_spec is not None
        gen_config = self._generation_config(params, response_length, eos, pad, need_logits=need_logits)
        seed = meta.get("seed")
        # Columns that are padding in every prompt change nothing but the cost of each step: generate without them.
        skip = leading_pad_columns(attention_mask)
        new_tokens, raw_logits = self._generate_with_logits(
            idx[..., skip:],
            attention_mask[..., skip:],
            position_ids[..., skip:],
            gen_config,
            None if seed is None else int(seed) + index,
        )

        responses = pad_sequence_to_length(new_tokens, response_length, pad)  # (bs, R)
        response_mask = get_response_mask(responses, eos_token=eos, dtype=attention_mask.dtype)
        # Whatever follows the first EOS is padding, even if the engine wrote something else there.
        responses = torch.where(response_mask.bool(), responses, torch.full_like(responses, pad))
        shape = [1] * (position_ids.dim() - 1) + [response_length]
        delta = torch.arange(1, response_length + 1, device=position_ids.device, dtype=position_ids.dtype)
        response_position_ids = position_ids[..., -1:] + delta.view(*shape)
        tensors = {
            "prompts": idx,
            "responses": responses,
            "input_ids": torch.cat([idx, responses], dim=-1),
            "attention_mask": torch.cat([attention_mask, response_mask], dim=-1),
            "position_ids": torch.cat([position_ids, response_position_ids], dim=-1),
            "response_mask": response_mask,
        }
        if raw_logits is not None:
            tensors.update(self._logit_outputs(raw_logits, responses, response_mask, params))
        return DataProto.from_dict(tensors=tensors, non_tensors=dict(prompts.non_tensor_batch or {}))

    def turn_engine(self, tokenizer: Any, pad_token_id: int, eos_token_id: Any, capture_spec: Any = None) -> Any:
        """This engine as a multi-turn ``TurnEngine`` (same module, so weight updates reach it)."""
        eos = eos_token_id[0] if isinstance(eos_token_id, (list, tuple)) else eos_token_id
        return HFTurnEngine(self.module, tokenizer, pad_token_id, int(eos), capture_spec)

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
        """Copy ``(name, tensor)`` pairs into the module's parameters/buffers (DTensors are gathered first)."""
        targets = dict(self.module.named_parameters())
        targets.update(dict(self.module.named_buffers()))
        with torch.no_grad():
            for name, tensor in weights:
                if name not in targets:
                    raise KeyError(f"weight {name!r} does not exist in the rollout module")
                if hasattr(tensor, "full_tensor"):
                    tensor = tensor.full_tensor()
                targets[name].copy_(tensor.to(device=targets[name].device, dtype=targets[name].dtype))


class HFTurnEngine:
    """``TurnEngine`` on a Hugging Face causal LM: left-padded batched ``generate``, capture from raw logits.

    Generation itself (checkpoint generation defaults hidden, sampling config, raw logits) is ``HFRollout``'s.
    """

    def __init__(self, module: Any, tokenizer: Any, pad_token_id: int, eos_token_id: int, capture_spec: Any = None):
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = int(eos_token_id)
        self.capture_spec = capture_spec
        self._hf = HFRollout(module, RolloutConfig(name="hf"))
        self._calls = 0  # a seeded dialogue draws fresh numbers each turn (seed + a per-call offset)

    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: list[int], sampling: dict
    ) -> list[tuple[list[int], Any]]:
        device = next(self._hf.module.parameters()).device
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompt_ids):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        greedy = not sampling["do_sample"] or float(sampling["temperature"]) <= 0
        params = {
            "do_sample": not greedy,
            "temperature": float(sampling["temperature"]),
            "top_p": float(sampling["top_p"]),
            "top_k": int(sampling["top_k"]),
        }
        gen_config = self._hf._generation_config(
            params, max(max_new_tokens), self.eos_token_id, self.pad_token_id, self.capture_spec is not None
        )
        seed = sampling.get("seed")
        seed = None if seed is None else int(seed) + 1_000_003 * self._calls
        self._calls += 1
        new_tokens, raw_logits = self._hf._generate_with_logits(
            input_ids.to(device), attention_mask.to(device), position_ids.to(device), gen_config, seed
        )
        results = []
        for i, limit in enumerate(max_new_tokens):
            row = new_tokens[i, :limit].tolist()
            n = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            results.append((row[:n], self._capture(raw_logits, i, row[:n], params, greedy)))
        return results

    def _capture(self, raw_logits, row: int, ids: list[int], params: dict, greedy: bool):
        if self.capture_spec is None or raw_logits is None:
            return None
        from verl.workers.rollout.logit_capture import capture_from_logits

        return capture_from_logits(
            raw_logits[row, : len(ids)],  # (L, V)
            torch.tensor(ids, device=raw_logits.device),
            self.capture_spec,
            temperature=1.0 if greedy else params["temperature"],
            top_k=params["top_k"] if not greedy else -1,
            top_p=params["top_p"] if not greedy else 1.0,
        )
