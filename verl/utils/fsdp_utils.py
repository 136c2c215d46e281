"""FSDP helpers shared by the workers and the checkpoint manager.

Two wrapping paths are supported and both run on CPU with ``gloo``:

* ``strategy=fsdp``  -> FSDP1 (``FullyShardedDataParallel``). On CPU, ``sync_module_states`` must stay off and full
  state dicts must not ask for ``cpu_offload`` (torch raises or segfaults); every rank loads the same weights from
  disk, so no synchronisation is needed anyway.
* ``strategy=fsdp2`` -> FSDP2 (``fully_shard`` on every decoder layer, then on the root; models under
  ``SINGLE_UNIT_MAX_PARAMS`` parameters are one unit, see ``fsdp2_blocks``).

Parameter and optimizer offload only mean something when parameters live on an accelerator: on CPU they are
no-ops (the workers log a line saying so).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from verl.utils.config import as_config
from verl.utils.device import get_device_name, get_torch_device
from verl.utils.fsdp_config import FSDPEngineConfig
from verl.utils.py_functional import cfg_get

logger = logging.getLogger(__name__)

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def to_torch_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """Translate a config dtype string (``fp32``, ``bf16``, ``bfloat16`` ...) into a ``torch.dtype``."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[key]


def mixed_precision_dtypes(fsdp_config: Any) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """``(param_dtype, reduce_dtype, buffer_dtype)`` from ``fsdp_config.mixed_precision``.

    Defaults are fp32 everywhere on CPU (bf16 matmuls are ~3x slower than fp32 on AVX2 CPUs); on an accelerator
    params default to ``fsdp_config.dtype`` (bf16) with fp32 reductions and buffers, as upstream does.
    """
    cfg = as_config(fsdp_config, FSDPEngineConfig)
    mp = cfg.mixed_precision
    on_cpu = get_device_name() == "cpu"
    gpu_default = to_torch_dtype(cfg.dtype)
    param = to_torch_dtype(cfg_get(mp, "param_dtype"), torch.float32 if on_cpu else gpu_default)
    reduce = to_torch_dtype(cfg_get(mp, "reduce_dtype"), torch.float32)
    buffer = to_torch_dtype(cfg_get(mp, "buffer_dtype"), torch.float32)
    return param, reduce, buffer


def is_fsdp2_module(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def is_fsdp1_module(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(module, FSDP)


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user module under an FSDP1 wrapper (FSDP2 modifies the module in place, so it is returned as is)."""
    while is_fsdp1_module(module):
        module = module.module
    return module


def get_layer_classes(module: nn.Module, names: Iterable[str] | None = None) -> set[type]:
    """Classes of the blocks to shard one by one (``_no_split_modules`` of HF models, e.g. ``LlamaDecoderLayer``)."""
    wanted = set(names or [])
    if not wanted:
        for sub in module.modules():
            wanted.update(getattr(sub, "_no_split_modules", None) or [])
    classes = {type(sub) for sub in module.modules() if type(sub).__name__ in wanted}
    if names and not classes:
        raise ValueError(
            f"transformer_layer_cls_to_wrap={sorted(wanted)} matches no submodule of {type(module).__name__}"
        )
    return classes


def get_fsdp_wrap_policy(module: nn.Module, config: Any = None, is_lora: bool = False):
    """FSDP1 ``auto_wrap_policy`` from ``fsdp_config.wrap_policy``.

    ``min_num_params > 0`` selects size-based wrapping; otherwise each transformer block is wrapped. Returns
    ``None`` when ``disable`` is set (the root is then the only FSDP unit).
    """
    from torch.distributed.fsdp.wrap import (
        _or_policy,
        lambda_auto_wrap_policy,
        size_based_auto_wrap_policy,
        transformer_auto_wrap_policy,
    )

    if cfg_get(config, "disable", False):
        return None
    min_num_params = int(cfg_get(config, "min_num_params", 0))
    if min_num_params > 0:
        return functools.partial(size_based_auto_wrap_policy, min_num_params=min_num_params)
    layer_classes = get_layer_classes(module, cfg_get(config, "transformer_layer_cls_to_wrap", None))
    if not layer_classes:
        return None
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)
    if is_lora:
        # LoRA leaves are trainable while their parents are frozen: FSDP1 needs them in their own units.
        def _lora_leaf(m: nn.Module) -> bool:
            params = list(m.parameters(recurse=False))
            return len(list(m.named_children())) == 0 and bool(params) and all(p.requires_grad for p in params)

        policy = functools.partial(
            _or_policy, policies=[functools.partial(lambda_auto_wrap_policy, lambda_fn=_lora_leaf), policy]
        )
    return policy


def create_device_mesh(world_size: int, fsdp_size: int = -1):
    """1-D ``("fsdp",)`` mesh, or a 2-D ``("ddp", "fsdp")`` mesh for hybrid sharding when ``fsdp_size`` divides the world."""
    from torch.distributed.device_mesh import init_device_mesh

    device = get_device_name()
    if fsdp_size <= 0 or fsdp_size >= world_size:
        return init_device_mesh(device, (world_size,), mesh_dim_names=("fsdp",))
    if world_size % fsdp_size != 0:
        raise ValueError(f"fsdp_config.fsdp_size={fsdp_size} must divide the world size {world_size}")
    return init_device_mesh(device, (world_size // fsdp_size, fsdp_size), mesh_dim_names=("ddp", "fsdp"))


# Below this many parameters a model is one FSDP2 unit (see ``apply_fsdp2``).
SINGLE_UNIT_MAX_PARAMS = 10_000_000


def _small_under_default_policy(model: nn.Module, config: Any) -> bool:
    """Fewer than ``SINGLE_UNIT_MAX_PARAMS`` parameters and ``wrap_policy`` left at verl's defaults."""
    policy = as_config(config, FSDPEngineConfig).wrap_policy
    if policy.get("transformer_layer_cls_to_wrap") or int(policy.get("min_num_params") or 0) > 0:
        return False
    return sum(p.numel() for p in model.parameters()) < SINGLE_UNIT_MAX_PARAMS


def fsdp2_blocks(model: nn.Module, config: Any = None) -> list[nn.Module]:
    """The submodules ``apply_fsdp2`` gives their own FSDP unit (the root is always one).

    * ``wrap_policy.transformer_layer_cls_to_wrap`` set: every block of those classes;
    * ``wrap_policy.min_num_params > 0``: the transformer blocks with at least that many parameters (FSDP1's
      size-based policy, applied per block);
    * neither (verl's defaults): every transformer block, unless the whole model has fewer than
      ``SINGLE_UNIT_MAX_PARAMS`` parameters. Units exist to bound the memory of gathered weights; for a model that
      small the whole of it costs a few MB, while every extra unit costs an all-gather in forward and in backward
      and a reduce-scatter, which on such models is most of the step. One unit computes the same numbers.
    """
    if _small_under_default_policy(model, config):
        return []
    policy = as_config(config, FSDPEngineConfig).wrap_policy
    names = policy.get("transformer_layer_cls_to_wrap")
    min_num_params = int(policy.get("min_num_params") or 0)
    layer_classes = tuple(get_layer_classes(model, names))
    blocks = [m for m in model.modules() if layer_classes and isinstance(m, layer_classes)]
    if not names and min_num_params > 0:
        return [b for b in blocks if sum(p.numel() for p in b.parameters()) >= min_num_params]
    return blocks


def replicate_frozen_model(module: nn.Module, strategy: str, fsdp_config: Any) -> bool:
    """Whether a frozen model (the reference policy) is better kept whole on every rank than sharded.

    True for an FSDP2 model that ``fsdp2_blocks`` would make one unit (small, default wrap policy), with no
    offload and a compute dtype equal to its stored dtype. Sharding it saves a few MB per rank but costs an
    all-gather and the FSDP hooks on every scoring call; a full copy computes the same numbers without them.
    """
    cfg = as_config(fsdp_config, FSDPEngineConfig)
    if strategy != "fsdp2" or cfg.param_offload or cfg.offload_policy:
        return False
    params = list(module.parameters())
    if not params or not _small_under_default_policy(module, fsdp_config):
        return False
    return all(p.dtype == mixed_precision_dtypes(fsdp_config)[0] for p in params)


def apply_fsdp2(model: nn.Module, fsdp_kwargs: dict, config: Any = None) -> nn.Module:
    """Shard ``model`` in place with FSDP2: the blocks of :func:`fsdp2_blocks` first, then the root.

    Args:
        model: the HF module (unwrapped).
        fsdp_kwargs: keyword arguments for ``fully_shard`` (``mesh``, ``mp_policy``, ``offload_policy``,
            ``reshard_after_forward``).
        config: the ``fsdp_config`` node (its ``wrap_policy``).

    Returns:
        The same module, now an ``FSDPModule``.
    """
    from torch.distributed.fsdp import fully_shard

    for block in fsdp2_blocks(model, config):
        fully_shard(block, **fsdp_kwargs)
    fully_shard(model, **fsdp_kwargs)
    return model


def wrap_model(
    module: nn.Module,
    strategy: str,
    fsdp_config: Any,
    mesh,
    trainable: bool = True,
) -> nn.Module:
    """Wrap a model with FSDP1 (``strategy="fsdp"``) or FSDP2 (``strategy="fsdp2"``).

    Args:
        module: HF model with full weights loaded on every rank.
        strategy: ``fsdp`` or ``fsdp2``.
        fsdp_config: the role's ``fsdp_config`` node (``mixed_precision``, ``param_offload``, ``offload_policy``,
            ``reshard_after_forward``, ``forward_prefetch``, ``use_orig_params``, ``wrap_policy``).
        mesh: device mesh from :func:`create_device_mesh`.
        trainable: whether an optimizer will step these parameters (FSDP1 needs ``use_orig_params`` for
            frozen/trainable mixes).
    """
    fsdp_config = as_config(fsdp_config, FSDPEngineConfig)
    # FSDP2 has no buffer dtype knob: buffers keep the dtype the model was loaded with.
    param_dtype, reduce_dtype, buffer_dtype = mixed_precision_dtypes(fsdp_config)
    on_cpu = get_device_name() == "cpu"
    # Only FSDP2's offload_policy is handed to torch; param_offload is done by the workers between calls
    # (offload_fsdp_model_to_cpu / load_fsdp_model_to_gpu), for FSDP1 and FSDP2 alike.
    offload = bool(fsdp_config.offload_policy)
    if strategy == "fsdp2":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, output_dtype=None)
        kwargs = {
            "mesh": mesh,
            "mp_policy": mp,
            "reshard_after_forward": bool(fsdp_config.reshard_after_forward),
        }
        if offload and not on_cpu:
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
        return apply_fsdp2(module, kwargs, fsdp_config)
    if strategy != "fsdp":
        raise ValueError(f"strategy must be 'fsdp' or 'fsdp2' for FSDP workers, got {strategy!r}")
    return _wrap_fsdp1(module, fsdp_config, mesh, (param_dtype, reduce_dtype, buffer_dtype), on_cpu)


def _wrap_fsdp1(module: nn.Module, fsdp_config: Any, mesh, dtypes, on_cpu: bool) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import MixedPrecision, ShardingStrategy

    param_dtype, reduce_dtype, buffer_dtype = dtypes
    hybrid = mesh.ndim == 2
    device_id = torch.device("cpu") if on_cpu else get_torch_device().current_device()
    # LoRA: frozen base weights next to trainable adapters; FSDP1 flattens them together only with use_orig_params,
    # and the adapters get their own units (get_fsdp_wrap_policy's is_lora)
    grads = {p.requires_grad for p in module.parameters()}
    mixed = len(grads) == 2
    return FSDP(
        module,
        auto_wrap_policy=get_fsdp_wrap_policy(module, fsdp_config.wrap_policy, is_lora=mixed),
        device_id=device_id,
        sharding_strategy=ShardingStrategy.HYBRID_SHARD if hybrid else ShardingStrategy.FULL_SHARD,
        mixed_precision=MixedPrecision(param_dtype=param_dtype, reduce_dtype=reduce_dtype, buffer_dtype=buffer_dtype),
        # Every rank loads identical weights from disk, and on CPU torch refuses sync_module_states=True.
        sync_module_states=False,
        use_orig_params=bool(fsdp_config.use_orig_params) or mixed,
        forward_prefetch=bool(fsdp_config.forward_prefetch),
        device_mesh=mesh,
    )


# ---------------------------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------------------------


def fsdp2_clip_grad_norm_(
    parameters: Iterable[torch.Tensor] | torch.Tensor,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> torch.Tensor:
    """Clip gradients of FSDP2 (DTensor) parameters by their global norm.

    Returns:
        The total norm before clipping as a plain (replicated) scalar tensor, the same on every rank.
    """
    from torch.distributed.tensor import DTensor

    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    if isinstance(total, DTensor):
        # The local norms are partial: full_tensor() performs the cross-rank reduction.
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
    return total


# ---------------------------------------------------------------------------------------------------------------
# Offload (meaningful on accelerators only)
# ---------------------------------------------------------------------------------------------------------------


def _params_on_cpu() -> bool:
    return get_device_name() == "cpu"


@torch.no_grad()
def offload_fsdp_model_to_cpu(model: nn.Module, empty_cache: bool = True) -> None:
    """Move an FSDP model's (sharded) parameters to host memory. No-op on CPU."""
    if _params_on_cpu():
        return
    if is_fsdp2_module(model):
        model.cpu()
    else:
        for handle in _fsdp1_handles(model):
            flat = handle.flat_param
            flat.data = flat.data.to("cpu", non_blocking=True)
            flat._local_shard = flat.data
    if empty_cache:
        get_torch_device().empty_cache()


@torch.no_grad()
def load_fsdp_model_to_gpu(model: nn.Module) -> None:
    """Move an offloaded FSDP model back to the accelerator. No-op on CPU."""
    if _params_on_cpu():
        return
    device = torch.device(get_device_name(), get_torch_device().current_device())
    if is_fsdp2_module(model):
        model.to(device)
    else:
        for handle in _fsdp1_handles(model):
            flat = handle.flat_param
            flat.data = flat.data.to(device, non_blocking=True)
            flat._local_shard = flat.data


def _fsdp1_handles(model: nn.Module) -> list:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return [m._handle for m in FSDP.fsdp_modules(model) if getattr(m, "_handle", None) is not None]


@torch.no_grad()
def offload_fsdp_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Move optimizer state tensors to host memory. No-op on CPU."""
    if _params_on_cpu() or not optimizer.state:
        return
    _move_optimizer_state(optimizer, torch.device("cpu"))


@torch.no_grad()
def load_fsdp_optimizer(optimizer: torch.optim.Optimizer, device_id: int | torch.device | None = None) -> None:
    """Move optimizer state tensors back to the accelerator. No-op on CPU."""
    if _params_on_cpu() or not optimizer.state:
        return
    if device_id is None:
        device_id = get_torch_device().current_device()
    device = device_id if isinstance(device_id, torch.device) else torch.device(get_device_name(), device_id)
    _move_optimizer_state(optimizer, device)


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------------------------


def get_full_state_dict(module: nn.Module, cpu_offload: bool = False) -> dict[str, torch.Tensor]:
    """Gather the full (unsharded) model state dict.

    Args:
        module: an FSDP1/FSDP2 module, or a plain module (returned detached as is).
        cpu_offload: when True only rank 0 receives tensors (on host memory) and other ranks get ``{}``. FSDP1 on
            CPU cannot do this (torch segfaults), so there every rank gathers and ranks > 0 drop the result.

    Returns:
        ``{fqn: tensor}`` with plain tensors, keys as in the unwrapped HF model (tied weights listed under both names).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not (is_fsdp1_module(module) or is_fsdp2_module(module)):
        return {k: v.detach() for k, v in module.state_dict().items()}
    fsdp1_on_cpu = is_fsdp1_module(module) and _params_on_cpu()
    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload and not fsdp1_on_cpu)
    state = get_model_state_dict(module, options=options)
    if cpu_offload and fsdp1_on_cpu and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return state


@contextlib.contextmanager
def full_params(module: nn.Module):
    """Every rank sees the full weights of ``module`` for the duration of the block.

    Yields ``{fqn: tensor}`` like :func:`get_full_state_dict` (tied weights under every name, persistent buffers
    included), read-only and valid only inside the block. For FSDP2 modules whose gathered parameters keep the
    stored dtype (no ``mixed_precision.param_dtype`` cast), the weights come from ``unshard()``: one all-gather per
    FSDP unit into the buffers a forward would use, resharded on exit. That is the same values as the
    state-dict gather at a fraction of its cost (which issues one collective per parameter). Anything else (FSDP1,
    a cast to a lower precision, a plain module) falls back to :func:`get_full_state_dict`.
    """
    from torch.distributed.fsdp import FSDPModule

    if not is_fsdp2_module(module):
        yield get_full_state_dict(module)
        return
    stored = {name: p.dtype for name, p in module.named_parameters()}
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    try:
        for unit in units:  # synchronous, one unit after the other, in the same order on every rank
            unit.unshard()
        params = dict(module.named_parameters(remove_duplicate=False))
        if any(params[name].dtype != dtype for name, dtype in stored.items()):
            state = None  # gathered in the compute dtype: read the full-precision values the slow way
        else:
            state = {name: p.detach() for name, p in params.items()}
            for prefix, sub in module.named_modules():
                for name, buf in sub.named_buffers(recurse=False):
                    if buf is not None and name not in sub._non_persistent_buffers_set:
                        state[f"{prefix}.{name}" if prefix else name] = buf.detach()
        if state is not None:
            yield state
    finally:
        for unit in units:
            unit.reshard()
    if state is None:
        yield get_full_state_dict(module)


@contextlib.contextmanager
def generation_weights(module: nn.Module, reshard_after_forward: bool):
    """The module with its full weights for a block of many forwards (generation), freed on exit.

    FSDP2: every unit is unsharded once (one all-gather per unit, in the mixed-precision ``param_dtype``, i.e. the
    compute dtype) and kept unsharded across the block's forwards; on exit the units reshard (the gathered weights
    are freed) and get ``reshard_after_forward`` back. A module that is not FSDP2 is yielded as it is.
    """
    from torch.distributed.fsdp import FSDPModule

    if not is_fsdp2_module(module):
        yield module
        return
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    try:
        for unit in units:  # in the same order on every rank
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        yield module
    finally:
        for unit in units:
            unit.set_reshard_after_forward(reshard_after_forward, recurse=False)
            unit.reshard()


def load_full_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], broadcast_from_rank0: bool = False):
    """Load a full state dict into an FSDP1/FSDP2 (or plain) module.

    With ``broadcast_from_rank0`` only rank 0 needs to pass real tensors; the others may pass ``{}``.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not (is_fsdp1_module(module) or is_fsdp2_module(module)):
        return module.load_state_dict(state_dict)
    # Full state dicts list a tied weight once; FSDP1's strict load would then miss its alias (e.g. lm_head).
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast_from_rank0, strict=False)
    result = set_model_state_dict(module, state_dict, options=options)
    missing = [k for k in result.missing_keys if k not in tied_output_keys(module)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"full state dict mismatch: missing {missing}, unexpected {list(result.unexpected_keys)}")
    return result


def tied_output_keys(module: nn.Module) -> set[str]:
    """State-dict keys that alias the input embedding (tied output embeddings of HF models)."""
    inner = unwrap_module(module)
    config = getattr(inner, "config", None)
    if not getattr(config, "tie_word_embeddings", False) or not hasattr(inner, "get_output_embeddings"):
        return set()
    output = inner.get_output_embeddings()
    keys = set()
    for name, sub in inner.named_modules():
        if sub is output:
            clean = ".".join(part for part in name.split(".") if part != "_fsdp_wrapped_module")
            # FSDP1 (use_orig_params=False) replaces the module's Parameters by views, so name the weight directly.
            keys.add(f"{clean}.weight")
    return keys


def local_shard(tensor: Any) -> Any:
    """The part of a DTensor / ShardedTensor held by this rank (a view), or the tensor itself."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        return tensor.to_local()
    if isinstance(tensor, ShardedTensor):
        shards = tensor.local_shards()
        return shards[0].tensor if shards else torch.empty(0, dtype=tensor.dtype)
    return tensor


def shard_layout(tensor: Any) -> dict[str, Any] | None:
    """Global shape and this rank's offset of a sharded tensor, so shards can be stitched together offline."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        _, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
        return {"global_shape": list(tensor.shape), "global_offset": list(offset)}
    if isinstance(tensor, ShardedTensor):
        shards = tensor.local_shards()
        offset = list(shards[0].metadata.shard_offsets) if shards else None
        return {"global_shape": list(tensor.size()), "global_offset": offset}
    return None
