"""megatron-core models for the Megatron back-end (the ``[megatron]`` extra).

Importing this package imports no megatron code: each function imports megatron-core when it is called.

* :mod:`.cpu_patches`: the few patches megatron-core needs to run on a machine without CUDA (applied only there).
* :mod:`.config_converter`: Hugging Face config -> ``TransformerConfig`` (Llama / Qwen2 architectures).
* :mod:`.weight_converter`: Hugging Face state dict <-> megatron layout (fused QKV, fused gate/up, TP shards, PP
  stages), exact.
* :mod:`.model`: ``GPTModel`` from an HF config with the local (no Transformer Engine) layer spec, and an adapter
  that gives it the forward of a Hugging Face causal LM, so the PPO maths run on it unchanged.
"""

from verl.models.mcore.config_converter import SUPPORTED_ARCHITECTURES, hf_to_mcore_config
from verl.models.mcore.weight_converter import (
    hf_to_mcore_state_dict,
    mcore_to_hf_state_dict,
    merge_pp_stages,
    merge_tp_shards,
    split_pp_stage,
)

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "hf_to_mcore_config",
    "hf_to_mcore_state_dict",
    "mcore_to_hf_state_dict",
    "merge_pp_stages",
    "merge_tp_shards",
    "split_pp_stage",
]
