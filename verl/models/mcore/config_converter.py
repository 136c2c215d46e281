"""Hugging Face config -> megatron-core ``TransformerConfig`` for Llama / Qwen2-architecture checkpoints.

Both families are a pre-norm decoder with RMSNorm, rotary position embeddings, grouped-query attention and a gated
SiLU MLP; Qwen2 adds biases to the query/key/value projections. :func:`hf_to_mcore_config` reads the fields that
describe that model and refuses what the local layer spec cannot express (rope scaling, sliding windows, other
activations), naming the field.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SUPPORTED_ARCHITECTURES", "check_convertible", "hf_to_mcore_config", "rope_theta"]

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")


def _architecture(hf_config: Any) -> str:
    names = list(getattr(hf_config, "architectures", None) or [])
    if not names:
        raise ValueError("the model's config.json names no architecture (`architectures`); cannot pick a converter")
    return names[0]


def rope_theta(hf_config: Any) -> float:
    """The rotary base: ``rope_parameters.rope_theta`` (transformers 5.x) or ``rope_theta`` (4.x)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(hf_config, "rope_theta", 10000.0))


def _check_supported(hf_config: Any, arch: str) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"the Megatron back-end converts {', '.join(SUPPORTED_ARCHITECTURES)} checkpoints; this model is {arch}. "
            "Use actor_rollout_ref.actor.strategy=fsdp2 for it."
        )
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if rope_type not in (None, "default"):
        raise ValueError(f"{arch} with rope_type={rope_type!r}: only the default rotary embedding is converted")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ValueError(f"{arch} with hidden_act={hf_config.hidden_act!r}: only the gated SiLU MLP is converted")
    if getattr(hf_config, "use_sliding_window", False):
        raise ValueError(f"{arch} with use_sliding_window=true: sliding-window attention is not converted")
    if arch == "LlamaForCausalLM" and getattr(hf_config, "attention_bias", False):
        raise ValueError(f"{arch} with attention_bias=true (biases on o_proj too): not converted")
    if getattr(hf_config, "mlp_bias", False):
        raise ValueError(f"{arch} with mlp_bias=true: MLP biases are not converted")


def check_convertible(
    hf_config: Any, tensor_model_parallel_size: int, key: str, pipeline_model_parallel_size: int
) -> None:
    """Before any worker starts: the model is one the converter handles, it splits over the tensor-parallel ranks,
    and its layers split evenly over the pipeline stages (``key`` names the tensor-parallel key of the layout in the
    message; the pipeline key is its sibling)."""
    _check_supported(hf_config, _architecture(hf_config))
    pp, layers = int(pipeline_model_parallel_size), int(hf_config.num_hidden_layers)
    if layers % pp:
        pp_key = key.rsplit(".", 1)[0] + ".pipeline_model_parallel_size"
        raise ValueError(
            f"{pp_key}={pp} does not divide the model's num_hidden_layers={layers} (each stage holds as many "
            "layers); choose a divisor of it"
        )
    tp = int(tensor_model_parallel_size)
    sizes = {
        "num_attention_heads": int(hf_config.num_attention_heads),
        "num_key_value_heads": int(getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads),
        "vocab_size": int(hf_config.vocab_size),
        "intermediate_size": int(hf_config.intermediate_size),
    }
    for name, size in sizes.items():
        if size % tp:
            raise ValueError(f"{key}={tp} does not divide the model's {name}={size}; choose a divisor of it")


def hf_to_mcore_config(hf_config: Any, dtype: torch.dtype = torch.float32, **overrides: Any):
    """The ``TransformerConfig`` of an HF Llama / Qwen2 config.

    Args:
        hf_config: a ``transformers.PretrainedConfig`` (``AutoConfig.from_pretrained``).
        dtype: parameter dtype (``bf16`` / ``fp16`` flags follow it).
        **overrides: any ``TransformerConfig`` field, e.g. ``tensor_model_parallel_size=2``.

    On a machine without CUDA the fused kernels megatron-core would pick (bias-dropout fusion, rope fusion, masked
    softmax fusion, gradient-accumulation fusion) are turned off: their CPU fallbacks are the plain ops.
    """
    from megatron.core.transformer import TransformerConfig

    arch = _architecture(hf_config)
    _check_supported(hf_config, arch)
    heads = int(hf_config.num_attention_heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    on_cpu = not torch.cuda.is_available()
    fields: dict[str, Any] = {
        "num_layers": int(hf_config.num_hidden_layers),
        "hidden_size": int(hf_config.hidden_size),
        "num_attention_heads": heads,
        "num_query_groups": int(getattr(hf_config, "num_key_value_heads", None) or heads),
        "kv_channels": head_dim,
        "ffn_hidden_size": int(hf_config.intermediate_size),
        "normalization": "RMSNorm",
        "layernorm_epsilon": float(getattr(hf_config, "rms_norm_eps", 1e-6)),
        "gated_linear_unit": True,
        "activation_func": torch.nn.functional.silu,
        "add_bias_linear": False,
        "add_qkv_bias": bool(getattr(hf_config, "attention_bias", False) or arch == "Qwen2ForCausalLM"),
        "attention_dropout": float(getattr(hf_config, "attention_dropout", 0.0) or 0.0),
        "hidden_dropout": 0.0,
        "params_dtype": dtype,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "pipeline_dtype": dtype,
        "use_cpu_initialization": True,
        "persist_layer_norm": not on_cpu,
        "bias_dropout_fusion": not on_cpu,
        "apply_rope_fusion": False,
        "masked_softmax_fusion": not on_cpu,
        "gradient_accumulation_fusion": False,
    }
    fields.update(overrides)
    return TransformerConfig(**fields)
