"""Hugging Face Llama / Qwen2 weights <-> megatron-core ``GPTModel`` weights (local layer spec), as pure functions.

The megatron layout differs from Hugging Face's in three ways:

* the query, key and value projections are one ``linear_qkv``, grouped by key/value head: for each of the ``G``
  query groups, that group's ``H/G`` query heads, then its key head, then its value head (rows of ``head_dim``);
* the gate and up projections are one ``linear_fc1`` (gate rows first);
* with tensor parallelism ``tp``, each rank holds a slice: rows of the vocabulary (embedding, output layer), of the
  query groups (``linear_qkv``), of the gate and of the up projection (rank ``r`` holds ``[gate_r; up_r]``), and
  columns of ``linear_proj`` and ``linear_fc2``; norms are whole on every rank;
* with pipeline parallelism ``pp``, stage ``s`` holds layers ``[s * L / pp, (s + 1) * L / pp)`` numbered from 0 in
  its state dict (megatron-core numbers each stage's layers locally), the first stage the embedding, the last
  stage the final norm and the output layer; with tied embeddings and ``pp > 1`` the last stage holds a copy of the
  embedding as ``output_layer.weight`` (megatron-core keeps the two equal by an all-reduce of their gradients).

:func:`hf_to_mcore_state_dict` builds one rank's slice (``tp_rank``, ``pp_rank``), :func:`merge_tp_shards` and
:func:`merge_pp_stages` reassemble the slices into the unsharded layout and :func:`mcore_to_hf_state_dict` goes back
to Hugging Face names. The round trip is exact: no
arithmetic touches a value, only reshapes, slices and concatenations.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "gather_pp_state_dict",
    "gather_tp_state_dict",
    "hf_to_mcore_state_dict",
    "mcore_to_hf_state_dict",
    "mcore_to_hf_named_tensors",
    "merge_pp_stages",
    "merge_tp_shards",
    "pp_layer_range",
    "split_pp_stage",
    "tp_split_dim",
]

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def _dims(hf_config: Any) -> tuple[int, int, int]:
    """(query heads, query groups, head dim)."""
    heads = int(hf_config.num_attention_heads)
    groups = int(getattr(hf_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    return heads, groups, head_dim


def _tied(hf_config: Any) -> bool:
    return bool(getattr(hf_config, "tie_word_embeddings", False))


def tp_split_dim(name: str) -> int | None:
    """The dimension a megatron parameter is split along across tensor-parallel ranks (None: replicated)."""
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return 0
    if name.endswith(("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias", "mlp.linear_fc1.weight")):
        return 0
    if name.endswith(("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")):
        return 1
    return None


def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hf_config: Any) -> torch.Tensor:
    heads, groups, head_dim = _dims(hf_config)
    tail = q.shape[1:]
    q = q.reshape(groups, heads // groups * head_dim, *tail)
    k = k.reshape(groups, head_dim, *tail)
    v = v.reshape(groups, head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)


def _split_qkv(qkv: torch.Tensor, hf_config: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    heads, groups, head_dim = _dims(hf_config)
    tail = qkv.shape[1:]
    per_group = heads // groups * head_dim
    grouped = qkv.reshape(groups, per_group + 2 * head_dim, *tail)
    q, k, v = torch.split(grouped, [per_group, head_dim, head_dim], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def _slice(tensor: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    if tensor.shape[dim] % size:
        raise ValueError(f"a dimension of {tuple(tensor.shape)} does not divide over {size} tensor-parallel ranks")
    return tensor.chunk(size, dim=dim)[rank]


def _unsharded_mcore(
    hf_sd: Mapping[str, torch.Tensor], hf_config: Any, output_layer: bool = True
) -> dict[str, torch.Tensor]:
    """The ``tp = 1`` megatron state dict of an HF state dict (``output_layer=False``: the backbone only)."""
    out = {"embedding.word_embeddings.weight": hf_sd["model.embed_tokens.weight"]}
    for i in range(int(hf_config.num_hidden_layers)):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        attn = hf + "self_attn."
        out[mc + "input_layernorm.weight"] = hf_sd[hf + "input_layernorm.weight"]
        out[mc + "self_attention.linear_qkv.weight"] = _fuse_qkv(
            hf_sd[attn + "q_proj.weight"], hf_sd[attn + "k_proj.weight"], hf_sd[attn + "v_proj.weight"], hf_config
        )
        if attn + "q_proj.bias" in hf_sd:
            out[mc + "self_attention.linear_qkv.bias"] = _fuse_qkv(
                hf_sd[attn + "q_proj.bias"], hf_sd[attn + "k_proj.bias"], hf_sd[attn + "v_proj.bias"], hf_config
            )
        out[mc + "self_attention.linear_proj.weight"] = hf_sd[attn + "o_proj.weight"]
        out[mc + "pre_mlp_layernorm.weight"] = hf_sd[hf + "post_attention_layernorm.weight"]
        out[mc + "mlp.linear_fc1.weight"] = torch.cat(
            [hf_sd[hf + "mlp.gate_proj.weight"], hf_sd[hf + "mlp.up_proj.weight"]], dim=0
        )
        out[mc + "mlp.linear_fc2.weight"] = hf_sd[hf + "mlp.down_proj.weight"]
    out["decoder.final_layernorm.weight"] = hf_sd["model.norm.weight"]
    if output_layer and not _tied(hf_config):
        out["output_layer.weight"] = hf_sd["lm_head.weight"]
    return out


def _shard(name: str, tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    dim = tp_split_dim(name)
    if dim is None or size == 1:
        return tensor
    if name.endswith("mlp.linear_fc1.weight"):  # [gate; up] -> [gate_r; up_r]
        gate, up = tensor.chunk(2, dim=0)
        return torch.cat([_slice(gate, 0, rank, size), _slice(up, 0, rank, size)], dim=0)
    return _slice(tensor, dim, rank, size)


def pp_layer_range(num_layers: int, pp_rank: int, pp_size: int) -> range:
    """The global indices of the layers pipeline stage ``pp_rank`` holds (megatron-core's even split)."""
    if num_layers % pp_size:
        raise ValueError(
            f"{num_layers} layers do not divide over pipeline_model_parallel_size={pp_size}; choose a divisor"
        )
    per = num_layers // pp_size
    return range(pp_rank * per, (pp_rank + 1) * per)


def split_pp_stage(
    full: Mapping[str, torch.Tensor], num_layers: int, pp_rank: int, pp_size: int, tied: bool = False
) -> dict[str, torch.Tensor]:
    """Pipeline stage ``pp_rank``'s part of a megatron state dict (any TP slice), its layers renumbered from 0;
    ``tied``: the output layer is the embedding (the last stage then gets a copy)."""
    if pp_size == 1:
        return dict(full)
    layers = pp_layer_range(num_layers, pp_rank, pp_size)
    first, last = pp_rank == 0, pp_rank == pp_size - 1
    out = {}
    for name, tensor in full.items():
        match = _LAYER.match(name)
        if match is not None:
            index = int(match.group(1))
            if index in layers:
                out[f"decoder.layers.{index - layers.start}.{match.group(2)}"] = tensor
        elif name == "embedding.word_embeddings.weight":
            if first:
                out[name] = tensor
            if last and tied and "output_layer.weight" not in full:
                out["output_layer.weight"] = tensor  # the last stage's copy of a tied embedding
        elif name in ("decoder.final_layernorm.weight", "output_layer.weight"):
            if last:
                out[name] = tensor
        else:
            raise KeyError(f"no pipeline stage for megatron parameter {name!r}")
    return out


def merge_pp_stages(
    stages: Sequence[Mapping[str, torch.Tensor]], num_layers: int, tied: bool = False
) -> dict[str, torch.Tensor]:
    """One megatron state dict from every pipeline stage's (in stage order): layers renumbered globally, the last
    stage's copy of a tied embedding (``tied``) dropped."""
    if len(stages) == 1:
        return {k: v for k, v in stages[0].items() if torch.is_tensor(v)}
    out: dict[str, torch.Tensor] = {}
    for rank, stage in enumerate(stages):
        layers = pp_layer_range(num_layers, rank, len(stages))
        for name, tensor in stage.items():
            if not torch.is_tensor(tensor):
                continue
            match = _LAYER.match(name)
            if match is not None:
                out[f"decoder.layers.{int(match.group(1)) + layers.start}.{match.group(2)}"] = tensor
            elif name == "output_layer.weight" and tied:
                continue
            else:
                out[name] = tensor
    return out


def hf_to_mcore_state_dict(
    hf_sd: Mapping[str, torch.Tensor],
    hf_config: Any,
    tp_rank: int = 0,
    tp_size: int = 1,
    output_layer: bool = True,
    pp_rank: int = 0,
    pp_size: int = 1,
) -> dict[str, torch.Tensor]:
    """The megatron state dict of tensor-parallel rank ``tp_rank`` in pipeline stage ``pp_rank``, from a (whole) HF
    state dict.

    The query groups must divide over ``tp_size`` and the layers over ``pp_size`` (megatron-core requires both); a
    tied ``lm_head.weight`` is the embedding and is not repeated (except as the last stage's copy when
    ``pp_size > 1``). ``output_layer=False`` converts the backbone only (a value model's head is not an LM head).
    """
    _, groups, _ = _dims(hf_config)
    if groups % tp_size:
        raise ValueError(f"{groups} key/value heads do not divide over tensor_model_parallel_size={tp_size}")
    full = _unsharded_mcore(hf_sd, hf_config, output_layer)
    used = {hf_name for hf_name, _ in mcore_to_hf_named_tensors(full, hf_config)}
    left = sorted(
        k for k in hf_sd if k not in used and not (k == "lm_head.weight" and (_tied(hf_config) or not output_layer))
    )
    left = [k for k in left if not k.endswith("rotary_emb.inv_freq")]  # a buffer, recomputed by megatron
    if left:
        raise KeyError(f"HF weights the megatron layout has no place for (they would be lost): {left[:8]}")
    sharded = {name: _shard(name, tensor, tp_rank, tp_size).contiguous() for name, tensor in full.items()}
    tied = _tied(hf_config) and output_layer  # a value model has no output layer to tie
    return split_pp_stage(sharded, int(hf_config.num_hidden_layers), pp_rank, pp_size, tied)


def merge_tp_shards(shards: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The ``tp = 1`` megatron state dict from every tensor-parallel rank's state dict (in rank order)."""
    if not shards:
        raise ValueError("no shards to merge")
    out = {}
    for name, first in shards[0].items():
        if not torch.is_tensor(first):
            continue  # ``_extra_state`` entries carry no weights
        dim = tp_split_dim(name)
        parts = [shard[name] for shard in shards]
        if dim is None or len(parts) == 1:
            out[name] = first
        elif name.endswith("mlp.linear_fc1.weight"):
            halves = [p.chunk(2, dim=0) for p in parts]
            out[name] = torch.cat([torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])], dim=0)
        else:
            out[name] = torch.cat(parts, dim=dim)
    return out


def mcore_to_hf_named_tensors(
    mcore_sd: Mapping[str, torch.Tensor], hf_config: Any
) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named tensors of a ``tp = 1`` megatron state dict, one at a time (the rollout's weight sync streams them).

    Tied embeddings yield no ``lm_head.weight`` (HF ties it to ``model.embed_tokens.weight`` itself).
    """
    for name, tensor in mcore_sd.items():
        if not torch.is_tensor(tensor):
            continue
        if name == "embedding.word_embeddings.weight":
            yield "model.embed_tokens.weight", tensor
        elif name == "decoder.final_layernorm.weight":
            yield "model.norm.weight", tensor
        elif name == "output_layer.weight":
            if not _tied(hf_config):
                yield "lm_head.weight", tensor
        else:
            match = _LAYER.match(name)
            if match is None:
                raise KeyError(f"no Hugging Face name for megatron parameter {name!r}")
            layer, rest = match.group(1), match.group(2)
            hf = f"model.layers.{layer}."
            if rest == "input_layernorm.weight":
                yield hf + "input_layernorm.weight", tensor
            elif rest == "pre_mlp_layernorm.weight":
                yield hf + "post_attention_layernorm.weight", tensor
            elif rest in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                q, k, v = _split_qkv(tensor, hf_config)
                yield from ((f"{hf}self_attn.{p}_proj.{kind}", t) for p, t in zip("qkv", (q, k, v)))
            elif rest == "self_attention.linear_proj.weight":
                yield hf + "self_attn.o_proj.weight", tensor
            elif rest == "mlp.linear_fc1.weight":
                gate, up = tensor.chunk(2, dim=0)
                yield hf + "mlp.gate_proj.weight", gate
                yield hf + "mlp.up_proj.weight", up
            elif rest == "mlp.linear_fc2.weight":
                yield hf + "mlp.down_proj.weight", tensor
            else:
                raise KeyError(f"no Hugging Face name for megatron parameter {name!r}")


def gather_tp_state_dict(local: Mapping[str, torch.Tensor], group: Any = None) -> dict[str, torch.Tensor]:
    """The ``tp = 1`` megatron state dict, assembled on every rank of the tensor-parallel ``group`` from each rank's
    ``local`` state dict (one all-gather per split parameter)."""
    import torch.distributed as dist

    tensors = {name: t for name, t in local.items() if torch.is_tensor(t)}
    size = dist.get_world_size(group) if dist.is_initialized() else 1
    if size == 1:
        return dict(tensors)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(size)]
    for name, tensor in tensors.items():
        if tp_split_dim(name) is None:
            for shard in shards:
                shard[name] = tensor
            continue
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        for shard, part in zip(shards, parts):
            shard[name] = part
    return merge_tp_shards(shards)


def gather_pp_state_dict(local: Mapping[str, torch.Tensor], hf_config: Any) -> dict[str, torch.Tensor]:
    """The whole model's megatron state dict, on every rank of this rank's pipeline, from each stage's ``local`` one
    (already gathered over tensor parallelism; :func:`merge_pp_stages` joins them). Identity with one stage."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    tensors = {name: t for name, t in local.items() if torch.is_tensor(t)}
    size = parallel_state.get_pipeline_model_parallel_world_size() if dist.is_initialized() else 1
    if size == 1:
        return tensors
    device = next(iter(tensors.values())).device
    stages: list[Any] = [None] * size
    dist.all_gather_object(
        stages, {n: t.cpu() for n, t in tensors.items()}, group=parallel_state.get_pipeline_model_parallel_group()
    )
    merged = merge_pp_stages(stages, int(hf_config.num_hidden_layers), _tied(hf_config))
    return {name: t.to(device) for name, t in merged.items()}


def mcore_to_hf_state_dict(mcore_sd: Mapping[str, torch.Tensor], hf_config: Any) -> dict[str, torch.Tensor]:
    """The HF state dict of a ``tp = 1`` megatron state dict (see :func:`merge_tp_shards` for TP slices)."""
    return {name: tensor.contiguous() for name, tensor in mcore_to_hf_named_tensors(mcore_sd, hf_config)}
