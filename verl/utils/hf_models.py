"""Build the Hugging Face models, optimizers and LR schedulers the FSDP workers train.

* actor / reference / rollout: ``AutoModelForCausalLM``;
* critic: a value model = the causal-LM backbone + a 1-output head, loaded with ``AutoModelForTokenClassification``
  (``num_labels=1``) straight from the actor checkpoint, so the backbone starts from the policy weights and only
  the head is new;
* reward model: a sequence-classification checkpoint, wrapped so it returns one score per token
  (:class:`TokenScoreModel`); the worker reads the score at the last valid token.

Randomly initialised parts (the critic/RM head) are created under a fixed seed, so every rank builds the same
weights before FSDP shards them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
from typing import Any

import torch
from torch import nn

from verl.utils.config import as_config
from verl.utils.fsdp_utils import to_torch_dtype
from verl.utils.optim_config import FSDPOptimizerConfig
from verl.utils.py_functional import cfg_get

logger = logging.getLogger(__name__)

__all__ = [
    "TokenScoreModel",
    "build_causal_lm",
    "build_lr_scheduler",
    "build_optimizer",
    "build_reward_model",
    "build_value_model",
    "enable_gradient_checkpointing",
    "kv_cache_arg",
    "load_generation_config",
    "load_hf_config",
    "resolve_model_path",
]


def forward_accepts(module: nn.Module, *names: str) -> bool:
    """Whether ``module``'s class's ``forward`` takes every keyword in ``names`` (cached per class)."""
    return _forward_params(type(module)).issuperset(names)


def kv_cache_arg(module: nn.Module) -> str | None:
    """The keyword ``module``'s ``forward`` takes its KV cache by, or None when it takes none.

    transformers up to 5.19 names it ``past_key_values``; later releases name it ``cache`` (the old name is a deprecated
    alias that warns and is left out of the signature). The model's output returns the updated cache under the same
    name, so ``getattr(output, kv_cache_arg(module))`` reads it on either version.
    """
    params = _forward_params(type(module))
    return next((name for name in ("cache", "past_key_values") if name in params), None)


@functools.lru_cache(maxsize=64)
def _forward_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _plain(obj: Any) -> Any:
    """OmegaConf nodes -> plain Python containers (HF configs and optimizers want dicts/lists)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # omegaconf is a hard dependency, but keep the helper usable without it
        pass
    return obj


def resolve_model_path(path: str | None, key: str) -> str:
    """Return a local directory for ``path`` or raise an error naming the config key to fix.

    Args:
        path: the configured path (local dir, ``file://`` URL or ``~``-relative).
        key: the full config key it came from, e.g. ``actor_rollout_ref.model.path``.
    """
    from verl.utils.fs import copy_to_local

    if not path:
        raise ValueError(f"{key} is not set; pass {key}=/path/to/hf/model")
    try:
        local = copy_to_local(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot open the model at {key}={path!r}: {str(exc).rstrip('.')}. Point {key} at a local Hugging Face model directory."
        ) from exc
    if os.path.isdir(local) and not os.path.exists(os.path.join(local, "config.json")):
        raise FileNotFoundError(f"{key}={path!r} is a directory without config.json; expected a Hugging Face model dir")
    return local


def _apply_overrides(hf_config: Any, overrides: dict[str, Any]) -> None:
    """Set (possibly nested) fields of an HF config; nested dicts update sub-configs or dict fields in place."""
    for key, value in overrides.items():
        current = getattr(hf_config, key, None)
        if isinstance(value, dict) and current is not None and not isinstance(current, dict):
            _apply_overrides(current, value)
        elif isinstance(value, dict) and isinstance(current, dict):
            current.update(value)
        else:
            setattr(hf_config, key, value)


def load_hf_config(path: str, override_config: Any = None, trust_remote_code: bool = False, **extra: Any) -> Any:
    """``AutoConfig`` of ``path`` with ``override_config`` (``model.override_config``) and ``extra`` applied."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    overrides = dict(_plain(override_config) or {})
    overrides.update(extra)
    overrides.pop("attn_implementation", None)  # a loading argument, not a config field
    _apply_overrides(hf_config, overrides)
    return hf_config


def _attn_kwargs(override_config: Any) -> dict[str, Any]:
    attn = cfg_get(override_config, "attn_implementation")
    return {"attn_implementation": attn} if attn else {}


def enable_gradient_checkpointing(module: nn.Module) -> None:
    """Non-reentrant activation checkpointing (the reentrant variant breaks with FSDP and frozen inputs)."""
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(module.config, "use_cache", False):
        module.config.use_cache = False


def build_causal_lm(
    path: str,
    dtype: str | torch.dtype | None = "fp32",
    override_config: Any = None,
    trust_remote_code: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> nn.Module:
    """Load an ``AutoModelForCausalLM`` with full weights on the host.

    Args:
        path: local model directory (see :func:`resolve_model_path`).
        dtype: parameter dtype (``fp32``/``bf16``/...).
        override_config: ``model.override_config``; ``attn_implementation`` in it selects the attention kernel.
        trust_remote_code: allow custom model code.
        extra_config: more config fields (e.g. token ids from the tokenizer).
    """
    from transformers import AutoModelForCausalLM

    hf_config = load_hf_config(path, override_config, trust_remote_code, **(extra_config or {}))
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=hf_config,
        dtype=to_torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        **_attn_kwargs(override_config),
    )
    return model


def build_value_model(
    path: str,
    dtype: str | torch.dtype | None = "fp32",
    override_config: Any = None,
    trust_remote_code: bool = False,
    seed: int = 42,
) -> nn.Module:
    """A value model: the checkpoint's backbone + a fresh 1-output token head (``(B, T, 1)`` logits).

    Dropout in the head is switched off so values are deterministic in train mode (dp=1 and dp=2 agree).
    """
    from transformers import AutoModelForTokenClassification

    hf_config = load_hf_config(path, override_config, trust_remote_code, num_labels=1, classifier_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # identical head initialisation on every rank
        model = AutoModelForTokenClassification.from_pretrained(
            path,
            config=hf_config,
            dtype=to_torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
            **_attn_kwargs(override_config),
        )
    return model


class TokenScoreModel(nn.Module):
    """Per-token scores from a sequence- or token-classification reward model.

    HF sequence classifiers pool at the last non-pad token, which breaks when pad == eos; scoring every position
    and letting the caller pick the last valid one avoids that.

    Forward returns ``(B, T)`` float scores (label 0 of the head).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        archs = list(getattr(model.config, "architectures", None) or [type(model).__name__])
        self.is_token_classifier = any(a.endswith("ForTokenClassification") for a in archs) or type(
            model
        ).__name__.endswith("ForTokenClassification")

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> torch.Tensor:
        kwargs.setdefault("use_cache", False)
        if self.is_token_classifier:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
            return out.logits[..., 0]
        backbone = getattr(self.model, self.model.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        return self.model.score(hidden.last_hidden_state)[..., 0]  # (B, T)


def build_reward_model(
    path: str,
    dtype: str | torch.dtype | None = "fp32",
    override_config: Any = None,
    trust_remote_code: bool = False,
    seed: int = 42,
) -> TokenScoreModel:
    """Load a reward model (``*ForSequenceClassification`` or ``*ForTokenClassification``) as a per-token scorer."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    hf_config = load_hf_config(path, override_config, trust_remote_code)
    archs = list(getattr(hf_config, "architectures", None) or [])
    auto_cls = (
        AutoModelForTokenClassification
        if any(a.endswith("ForTokenClassification") for a in archs)
        else AutoModelForSequenceClassification
    )
    if getattr(hf_config, "num_labels", 1) != 1:
        logger.warning("reward model %s has num_labels=%s; label 0 is used as the score", path, hf_config.num_labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_cls.from_pretrained(
            path, config=hf_config, dtype=to_torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    return TokenScoreModel(model)


def load_generation_config(path: str, trust_remote_code: bool = False) -> Any | None:
    """The checkpoint's ``GenerationConfig``, or None when it has no generation_config.json."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError:
        return None


def build_optimizer(params, optim_config: Any) -> torch.optim.Optimizer:
    """Optimizer from an ``optim`` node: class ``optimizer`` (AdamW) looked up in ``optimizer_impl`` (torch.optim).

    ``lr``, ``betas``, ``weight_decay`` and ``override_optimizer_config`` (extra kwargs) are passed through.
    """
    cfg = as_config(optim_config, FSDPOptimizerConfig)
    impl, name = cfg.optimizer_impl, cfg.optimizer
    try:
        optimizer_cls = getattr(importlib.import_module(impl), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"optim.optimizer={name!r} not found in optim.optimizer_impl={impl!r}") from exc
    kwargs: dict[str, Any] = {"lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay)}
    if "Adam" in name:
        kwargs["betas"] = tuple(float(b) for b in cfg.betas)
    overrides = _plain(cfg.override_optimizer_config) or {}
    kwargs.update(overrides)
    if optimizer_cls in (torch.optim.AdamW, torch.optim.Adam) and not {"foreach", "fused"} & set(overrides):
        # torch picks its per-parameter loop for CPU tensors and for FSDP2's DTensors; the multi-tensor
        # implementation gives bit-identical updates at a third of the cost (override_optimizer_config wins)
        kwargs["foreach"] = True
    return optimizer_cls(params, **kwargs)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, optim_config: Any, total_training_steps: int | None = None
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up + constant or cosine LR schedule from an ``optim`` node.

    Warm-up steps: ``lr_warmup_steps`` when > 0, else ``lr_warmup_steps_ratio * total_training_steps``.
    ``warmup_style`` (deprecated) wins over ``lr_scheduler_type`` when set, as upstream (the node resolves it).

    Args:
        optimizer: the optimizer to schedule.
        optim_config: the ``optim`` node (a plain dict is read as ``FSDPOptimizerConfig``).
        total_training_steps: the run's length, decided by the trainer; None reads ``optim.total_training_steps``.
    """
    from verl.utils.torch_functional import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    cfg = as_config(optim_config, FSDPOptimizerConfig)
    total = int(cfg.total_training_steps if total_training_steps is None else total_training_steps)
    warmup = int(cfg.lr_warmup_steps)
    if warmup <= 0:
        warmup = int(float(cfg.lr_warmup_steps_ratio) * max(total, 0))
    style = cfg.lr_scheduler_type
    if style == "constant":
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if style == "cosine":
        if total <= 0:
            raise ValueError("optim.lr_scheduler_type=cosine needs optim.total_training_steps > 0 (set by the trainer)")
        return get_cosine_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=total,
            min_lr_ratio=float(cfg.min_lr_ratio or 0.0),
            num_cycles=float(cfg.num_cycles),
        )
    raise ValueError(f"optim.lr_scheduler_type={style!r} is not supported; use 'constant' or 'cosine'")
