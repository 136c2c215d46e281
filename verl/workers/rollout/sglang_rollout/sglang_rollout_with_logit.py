"""``rollout.name=sglang_with_logit``: the SGLang engine plus logit capture (DESIGN.md section 5).

The capture follows ``rollout.logit_capture`` (mode ``logprob``, ``topk``, ``token_ids`` or ``full``); with
``logit_capture.enable=false`` it still captures the sampled token's logprob (mode ``logprob``). Requests carry
``logit_capture.sglang_sampling_kwargs`` and responses go through ``capture_from_sglang``, the same capture code the
hf and vLLM engines use. Needs SGLang (GPU).
"""

from __future__ import annotations

from verl.workers.rollout.sglang_rollout.sglang_rollout import ServerAdapter

__all__ = ["SGLangRolloutWithLogit"]


class SGLangRolloutWithLogit(ServerAdapter):
    """SGLang with per-token logit capture; outputs add the ``logit_capture.CAPTURE_TENSOR_KEYS`` of the mode."""

    capture_by_default = True
