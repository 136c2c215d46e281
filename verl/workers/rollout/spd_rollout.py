"""SPD rollout (``("spd", "sync")``): sample accept/reject decisions on draft tokens with the scorer.

.. warning::
   Here ``responses`` are DECISION BITS, not generated tokens, and ``input_ids`` is NOT ``prompts + responses``:
   it is ``prompts + draft tokens``. The actor only reads ``input_ids``, ``attention_mask``, ``position_ids`` and
   ``responses``, so ``DataParallelPPOActor.compute_log_prob`` on this output gives ``log Bernoulli(a_i; p_i)``
   (``spd_scorer.ScoringActor`` returns 2-way logits ``[0, s]``, shifted like an LM's). Anything that decodes
   ``responses`` as text (a generic reward manager, validation printing) sees ``0``/``1`` ids; the SPD reward reads
   the ``spd_*`` columns instead.

Per row (``spd_scorer`` has the terms and the maths): the scorer reads context ``c`` + draft ``d`` in one no-grad
forward, ``a_i ~ Bernoulli(p_i)`` with ``p_i = sigmoid(s_i / temperature)``, ``a_i = 1`` where the draft matches
the target (``m_i = 0``). ``n`` is not applied here: the trainer repeats each prompt ``n`` times first.

Input: ``input_ids`` / ``attention_mask`` / ``position_ids`` ``(bs, P)`` of the left-padded context, non-tensor
``spd_draft_ids`` and ``spd_target_ids`` (K ints per row, equal lengths). Meta keys: ``seed`` (seeds the draws;
else the torch RNG), ``temperature``, ``response_length``, ``pad_token_id``, ``validate`` or ``do_sample=False``
(greedy decisions: accept when ``p >= 0.5``).

Output, ``R = response_length`` (meta, else ``rollout.response_length``; a fixed width, so that the ranks' outputs
concatenate; set it to the longest draft, K, to avoid scoring padding):

=====================  ===========  ================================================================================
key                    shape        meaning
=====================  ===========  ================================================================================
``prompts``            ``(bs, P)``  the context ids, exactly as given
``responses``          ``(bs, R)``  decisions ``a`` (1 = accept), 0 on padding
``input_ids``          ``(bs, P+R)`` ``prompts`` then the DRAFT tokens (``pad_token_id`` after the K-th)
``attention_mask``     ``(bs, P+R)`` prompt mask, then 1 on the K draft positions
``position_ids``       ``(bs, P+R)`` prompt positions, continued by +1 per draft position
``response_mask``      ``(bs, R)``  decision mask: mismatches up to and including the first rejected one
``rollout_log_probs``  ``(bs, R)``  ``log Bernoulli(a; p)`` at the sampling temperature, 0 outside the mask
=====================  ===========  ================================================================================

Non-tensor columns added per row: ``spd_decisions`` (K bits), ``spd_accepted_mismatches``, ``spd_first_rejection``
(0-based, K when none), ``spd_num_mismatches``; the input's non-tensor columns are kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from verl.protocol import DataProto
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.hf_rollout import as_rollout_config

__all__ = ["SPDRollout", "pad_token_lists"]

DRAFT_KEY, TARGET_KEY = "spd_draft_ids", "spd_target_ids"


def _import_scorer():
    try:
        import spd_scorer
    except ImportError as exc:
        raise ImportError(
            "the spd rollout needs spd_scorer.py (repository root) importable; install the repository with "
            "`pip install -e .` or put its root on PYTHONPATH"
        ) from exc
    return spd_scorer


def pad_token_lists(rows: Iterable[Any], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-row id lists to ``width``.

    Returns:
        ``(ids (B, width) long, valid (B, width) long)``.
    """
    rows = [[int(x) for x in row] for row in rows]
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        valid[i, : len(row)] = 1
    return ids, valid


def _object_column(values: list) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


class SPDRollout(BaseRollout):
    """Sample SPD decisions with an (unsharded) :class:`spd_scorer.ScoringActor`.

    Args:
        module: the scorer; the FSDP worker keeps its weights equal to the actor's (``self.module`` is synced).
        config: typed ``actor_rollout_ref.rollout`` config (a DictConfig or dict is converted); reads
            ``temperature``, ``response_length``, ``do_sample`` and ``val_kwargs``.
        micro_batch_size: rows per scorer forward (default: all at once).
        **kwargs: ``model_config`` / ``seed`` / ``device_mesh`` as the worker passes to non-hf engines; unused
            (draws use ``meta_info["seed"]`` or the worker's per-rank-seeded torch RNG).
    """

    def __init__(self, module: nn.Module, config: Any, micro_batch_size: int | None = None, **kwargs: Any):
        typed, legacy_micro = as_rollout_config(config)
        super().__init__(typed, model_config=kwargs.get("model_config"), device_mesh=kwargs.get("device_mesh"))
        self.module = module
        self.micro_batch_size = micro_batch_size or legacy_micro

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """Decisions for every row of ``prompts``; see the module docstring for the input and output contract."""
        start = time.perf_counter()
        non_tensor = prompts.non_tensor_batch or {}
        for key in (DRAFT_KEY, TARGET_KEY):
            if key not in non_tensor:
                raise ValueError(
                    f"prompts.non_tensor_batch[{key!r}] is missing; the spd rollout needs SPD data "
                    "(build it with `python -m verl.utils.dataset.spd_dataset`)"
                )
        meta = prompts.meta_info
        generator = None
        if meta.get("seed") is not None:
            generator = torch.Generator().manual_seed(int(meta["seed"]))
        micro = int(self.micro_batch_size or len(prompts)) or 1
        outputs = [self._decide(chunk, generator) for chunk in prompts.split(micro)]
        output = DataProto.concat(outputs)
        output.meta_info["timing"] = {"generate_sequences": time.perf_counter() - start}
        # the spd_scorer reward reads these from extra_info (the reward manager copies the listed columns there)
        output.meta_info["reward_extra_info_keys"] = ["spd_decisions", "spd_draft_ids", "spd_target_ids"]
        return output

    def _settings(self, meta: dict) -> tuple[float, bool]:
        """``(temperature, greedy)`` of this call; validation uses ``val_kwargs``."""
        source = self.config.val_kwargs if meta.get("validate", False) else self.config
        temperature = float(meta.get("temperature", source.temperature))
        greedy = not bool(meta.get("do_sample", source.do_sample)) or temperature <= 0
        return (temperature if temperature > 0 else 1.0), greedy

    def _response_length(self, meta: dict, longest: int) -> int:
        length = int(meta.get("response_length", self.config.response_length))
        if longest > length:
            raise ValueError(
                f"a draft has {longest} tokens but rollout.response_length={length}; set "
                f"actor_rollout_ref.rollout.response_length (data.max_response_length) to at least {longest}"
            )
        return length

    @torch.no_grad()
    def _accept_log_probs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, width: int, temp: float
    ) -> torch.Tensor:
        """``(bs, width, 2)`` float32 ``(log(1-p), log p)`` of the last ``width`` positions, as the actor scores them."""
        was_training = self.module.training
        self.module.eval()
        try:
            out = self.module(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
        finally:
            self.module.train(was_training)
        logits = out.logits if hasattr(out, "logits") else out
        logits = logits[:, -width - 1 : -1, :].float() / temp  # (bs, R, 2): position t scores the token at t+1
        return torch.log_softmax(logits, dim=-1)

    def _decide(self, prompts: DataProto, generator: torch.Generator | None) -> DataProto:
        spd = _import_scorer()
        batch, meta, non_tensor = prompts.batch, prompts.meta_info, prompts.non_tensor_batch
        idx, attention_mask, position_ids = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
        device = idx.device
        drafts, targets = list(non_tensor[DRAFT_KEY]), list(non_tensor[TARGET_KEY])
        lengths = [len(d) for d in drafts]
        for i, (d, t) in enumerate(zip(drafts, targets)):
            if len(d) != len(t):
                raise ValueError(f"row {i}: {DRAFT_KEY} has {len(d)} ids but {TARGET_KEY} has {len(t)}")
        width = self._response_length(meta, max(lengths, default=0))
        pad = int(meta.get("pad_token_id") if meta.get("pad_token_id") is not None else 0)
        draft, valid = pad_token_lists(drafts, width, pad)  # (bs, R)
        target, _ = pad_token_lists(targets, width, pad)
        mismatch = spd.mismatch_mask(draft, target, valid)  # (bs, R)

        # The scorer reads c + d; positions continue the prompt's (left padding keeps the last one the largest).
        delta = torch.arange(1, width + 1, dtype=position_ids.dtype, device=device)
        full = {
            "input_ids": torch.cat([idx, draft.to(device=device, dtype=idx.dtype)], dim=-1),
            "attention_mask": torch.cat([attention_mask, valid.to(device=device, dtype=attention_mask.dtype)], dim=-1),
            "position_ids": torch.cat([position_ids, position_ids[..., -1:] + delta], dim=-1),
        }
        temperature, greedy = self._settings(meta)
        log_probs = self._accept_log_probs(**full, width=width, temp=temperature).cpu()  # (bs, R, 2)
        p_accept = log_probs[..., 1].exp()
        if greedy:
            sampled = (p_accept >= 0.5).long()
        else:
            sampled = (torch.rand(p_accept.shape, generator=generator) < p_accept).long()
        # Matching draft tokens are always accepted; padding stays 0.
        decisions = torch.where(mismatch.bool(), sampled, valid)  # (bs, R)
        mask = spd.decision_mask(decisions, mismatch)
        rollout_log_probs = torch.gather(log_probs, -1, decisions.unsqueeze(-1)).squeeze(-1) * mask

        first = spd.first_rejection(decisions, mismatch)
        accepted = spd.accepted_mismatches(decisions, mismatch)
        tensors = {
            "prompts": idx,
            "responses": decisions.to(device=device, dtype=idx.dtype),
            **full,
            "response_mask": mask.to(device=device, dtype=attention_mask.dtype),
            "rollout_log_probs": rollout_log_probs.to(device),
        }
        extra = {
            "spd_decisions": _object_column([decisions[i, :k].tolist() for i, k in enumerate(lengths)]),
            "spd_accepted_mismatches": np.array(accepted.tolist(), dtype=np.int64),
            "spd_first_rejection": np.array([min(int(j), k) for j, k in zip(first.tolist(), lengths)], dtype=np.int64),
            "spd_num_mismatches": np.array(mismatch.sum(-1).tolist(), dtype=np.int64),
        }
        return DataProto.from_dict(tensors=tensors, non_tensors={**dict(non_tensor), **extra})
