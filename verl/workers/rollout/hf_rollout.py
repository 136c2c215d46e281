"""The transformers rollout (``rollout.name=hf``): ``EngineRollout`` over ``HFEngine`` (``hf_engine.py``).

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

from typing import Any

from torch import nn

from verl.workers.config import RolloutConfig
from verl.workers.rollout.base import EngineRollout
from verl.workers.rollout.hf_engine import HFEngine

__all__ = ["HFRollout", "as_rollout_config"]


def as_rollout_config(config: Any) -> tuple[RolloutConfig, int | None]:
    """``(typed RolloutConfig, micro_batch_size)`` from a typed config, a DictConfig or a dict.

    ``micro_batch_size`` (prompts per batch) is not a key of verl's rollout config; older callers put it there, so a
    mapping's ``micro_batch_size`` is taken out before the rest is typed.
    """
    if isinstance(config, RolloutConfig):
        return config, None
    from omegaconf import OmegaConf

    from verl.utils.config import omega_conf_to_dataclass

    plain = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else dict(config)
    micro = plain.pop("micro_batch_size", None)
    plain.pop("_target_", None)
    return omega_conf_to_dataclass(plain, RolloutConfig), micro


class HFRollout(EngineRollout):
    """Generate with a Hugging Face causal LM, ``micro_batch_size`` prompts per batch (default: all at once).

    Args:
        module: a decoder-only causal LM (unsharded).
        config: typed ``actor_rollout_ref.rollout`` config (a DictConfig or dict is converted); reads the sampling
            keys, ``response_length``, ``val_kwargs``, ``calculate_log_probs``, ``logprobs_mode``, ``ignore_eos``,
            ``logit_capture``.
        micro_batch_size: prompts decoded together.
    """

    def __init__(self, module: nn.Module, config: Any, micro_batch_size: int | None = None, **_: Any):
        typed, legacy_micro = as_rollout_config(config)
        super().__init__(typed)
        self.module = module
        self.micro_batch_size = micro_batch_size or legacy_micro
        self.engine = HFEngine(module, max_batch_size=self.micro_batch_size)
