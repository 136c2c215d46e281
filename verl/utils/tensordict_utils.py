"""Helpers for using a plain ``TensorDict`` as the batch container ("DataProto v2"), imported as ``tu``.

Layout of such a TensorDict with N rows:

* tensors of shape (N, ...), or jagged nested tensors (``layout=torch.jagged``) for ragged rows;
* per-row Python objects as a ``NonTensorStack`` of ``NonTensorData`` (one wrapper per row, so lists and dicts
  stay whole instead of being turned into nested stacks);
* per-batch settings as ``NonTensorData`` (the DataProto ``meta_info`` equivalent).

The module also holds the numpy codec behind ``VERL_DATAPROTO_SERIALIZATION_METHOD=numpy`` and the deep
equality used when merging batches; ``verl.protocol`` re-exports both.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch


def _import_tensordict() -> Any:
    """Import tensordict leaving ``os.environ`` as it was.

    tensordict (>= 0.15) imports torch._dynamo, which writes TORCHINDUCTOR_CACHE_DIR (inductor's default value) into
    the environment; importing verl must change no environment variable, so the old state is put back.
    """
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        return importlib.import_module("tensordict")
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


_tensordict = _import_tensordict()
NonTensorData, NonTensorStack, TensorDict = (
    _tensordict.NonTensorData,
    _tensordict.NonTensorStack,
    _tensordict.TensorDict,
)

__all__ = [
    "TensorDictError",
    "as_index_array",
    "assert_tensordict_eq",
    "assign_non_tensor",
    "assign_non_tensor_data",
    "assign_non_tensor_stack",
    "chunk_tensordict",
    "concat_nested_tensors",
    "concat_tensordict",
    "contiguous",
    "deep_equal",
    "deserialize_single_tensor",
    "deserialize_tensordict",
    "get",
    "get_keys",
    "get_non_tensor_data",
    "get_tensordict",
    "index_select_tensor_dict",
    "list_of_dict_to_tensordict",
    "make_iterator",
    "maybe_fix_3d_position_ids",
    "nested_tensor_from_tensor_list",
    "pad_to_divisor",
    "pop",
    "pop_keys",
    "rows_to_object_array",
    "serialize_single_tensor",
    "serialize_tensordict",
    "union_tensor_dict",
    "unbind_nested",
    "unpad",
    "unwrap_non_tensor_data",
]


class TensorDictError(ValueError, AssertionError):
    """Invalid batch input. Also an AssertionError, the type upstream callers catch for these checks."""


# --------------------------------------------------------------------------------------------------------------
# deep equality (NaN-aware, recursive, safe on self-referencing object arrays)
# --------------------------------------------------------------------------------------------------------------


def deep_equal(a: Any, b: Any, _seen: set | None = None) -> bool:
    """True when ``a`` and ``b`` hold the same values.

    NaN equals NaN at the same position; object arrays, dicts, lists and tensors are compared element by element;
    containers that refer to themselves compare equal when their structure matches.
    """
    if a is b:
        return True
    seen = set() if _seen is None else _seen
    pair = (id(a), id(b))
    if pair in seen:  # already being compared higher up: a cycle, judged by the rest of the structure
        return True
    seen.add(pair)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)) or a.shape != b.shape:
            return False
        if a.dtype == object or b.dtype == object:
            return all(deep_equal(x, y, seen) for x, y in zip(a.flat, b.flat))
        equal_nan = a.dtype.kind in "fc" and b.dtype.kind in "fc"
        return bool(np.array_equal(a, b, equal_nan=equal_nan))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return _tensor_equal(a, b)
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return False
        return all(deep_equal(a[k], b[k], seen) for k in a)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))) or len(a) != len(b):
            return False
        return all(deep_equal(x, y, seen) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        result = a == b
        return bool(result) if not isinstance(result, np.ndarray) else bool(result.all())
    except (TypeError, ValueError):
        return False


def _tensor_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_nested or b.is_nested:
        if not (a.is_nested and b.is_nested):
            return False
        rows_a, rows_b = unbind_nested(a), unbind_nested(b)
        return len(rows_a) == len(rows_b) and all(_tensor_equal(x, y) for x, y in zip(rows_a, rows_b))
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not (a.is_floating_point() or a.is_complex()):
        return False
    nan_a, nan_b = a.isnan(), b.isnan()
    return bool(torch.equal(nan_a, nan_b) and torch.equal(a[~nan_a], b[~nan_b]))


# --------------------------------------------------------------------------------------------------------------
# numpy codec: tensors as raw bytes, so pickling never goes through torch.save
# --------------------------------------------------------------------------------------------------------------


def serialize_single_tensor(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], np.ndarray]:
    """Encode a dense tensor as (dtype name, shape, uint8 array of its bytes); works for bf16 and fp8 too."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # A byte view works for every dtype, including those numpy lacks (bfloat16, float8).
    return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), flat.view(torch.uint8).numpy()


def deserialize_single_tensor(encoded: tuple[str, Sequence[int], np.ndarray]) -> torch.Tensor:
    """Inverse of ``serialize_single_tensor`` (the result lives on CPU and owns its memory)."""
    dtype_name, shape, raw = encoded
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype '{dtype_name}' in serialized data")
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.size == 0:  # a zero-length byte view cannot be reinterpreted, so build the empty tensor directly
        return torch.empty(tuple(shape), dtype=dtype)
    if not raw.flags.writeable:
        raw = raw.copy()
    return torch.from_numpy(raw).view(dtype).reshape(tuple(shape))


def serialize_tensordict(td: TensorDict) -> tuple[tuple[int, ...], str | None, list[tuple[str, str, Any]]]:
    """Encode a TensorDict as (batch_size, device, [(key, kind, payload), ...]) of numpy arrays and plain objects.

    Kinds: ``tensor``, ``jagged`` (values/offsets/lengths/ragged_idx), ``strided_nested`` (list of rows),
    ``tensordict`` (recursive), ``stack`` (NonTensorStack rows) and ``data`` (NonTensorData value).
    """
    items = []
    for key in td.keys():
        val = td.get(key)
        if isinstance(val, NonTensorStack):
            items.append((key, "stack", val.tolist()))
        elif isinstance(val, NonTensorData):
            items.append((key, "data", val.data))
        elif isinstance(val, TensorDict):
            items.append((key, "tensordict", serialize_tensordict(val)))
        elif val.is_nested and val.layout == torch.jagged:
            lengths = val.lengths()
            payload = (
                serialize_single_tensor(val.values()),
                serialize_single_tensor(val.offsets()),
                None if lengths is None else serialize_single_tensor(lengths),
                val._ragged_idx,
            )
            items.append((key, "jagged", payload))
        elif val.is_nested:
            items.append((key, "strided_nested", [serialize_single_tensor(row) for row in val.unbind()]))
        else:
            items.append((key, "tensor", serialize_single_tensor(val)))
    device = None if td.device is None else str(td.device)
    return tuple(td.batch_size), device, items


def deserialize_tensordict(encoded: tuple[Sequence[int], str | None, list[tuple[str, str, Any]]]) -> TensorDict:
    """Inverse of ``serialize_tensordict``; a CUDA device is dropped (CPU) when no GPU is present."""
    batch_size, device, items = encoded
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        device = None
    source, non_tensor = {}, {}
    for key, kind, payload in items:
        if kind == "tensor":
            source[key] = deserialize_single_tensor(payload)
        elif kind == "jagged":
            values, offsets, lengths, ragged_idx = payload
            source[key] = torch.nested.nested_tensor_from_jagged(
                deserialize_single_tensor(values),
                deserialize_single_tensor(offsets),
                lengths=None if lengths is None else deserialize_single_tensor(lengths),
                jagged_dim=ragged_idx,
            )
        elif kind == "strided_nested":
            source[key] = torch.nested.as_nested_tensor([deserialize_single_tensor(row) for row in payload])
        elif kind == "tensordict":
            source[key] = deserialize_tensordict(payload)
        elif kind in ("stack", "data"):
            non_tensor[key] = (kind, payload)
        else:
            raise ValueError(f"unknown item kind '{kind}' for key '{key}' in serialized TensorDict")
    td = TensorDict(source, batch_size=list(batch_size), device=device)
    for key, (kind, payload) in non_tensor.items():
        (assign_non_tensor_stack if kind == "stack" else assign_non_tensor_data)(td, key, payload)
    return td


# --------------------------------------------------------------------------------------------------------------
# row indexing helpers shared with verl.protocol
# --------------------------------------------------------------------------------------------------------------


def as_index_array(idxs: Any, length: int) -> np.ndarray:
    """An int64 row index from a list / np / torch index or boolean mask over ``length`` rows."""
    if isinstance(idxs, torch.Tensor):
        idxs = idxs.detach().cpu().numpy()
    elif isinstance(idxs, (list, tuple, range)):
        all_bool = len(idxs) > 0 and all(isinstance(i, (bool, np.bool_)) for i in idxs)
        idxs = np.asarray(idxs, dtype=bool if all_bool else np.int64)
    if not isinstance(idxs, np.ndarray):
        raise TypeError(f"index must be a list, np.ndarray or torch.Tensor, got {type(idxs).__name__}")
    if idxs.dtype == bool:
        if idxs.shape != (length,):
            raise IndexError(f"boolean mask of shape {idxs.shape} does not match {length} rows")
        return np.flatnonzero(idxs)
    if idxs.ndim != 1 or not np.issubdtype(idxs.dtype, np.integer):
        raise IndexError(f"index must be a 1-D integer array or boolean mask, got dtype={idxs.dtype} ndim={idxs.ndim}")
    return idxs.astype(np.int64, copy=False)


def rows_to_object_array(values: Sequence[Any]) -> np.ndarray:
    """An object array with one entry per value; equal-shape array rows stack into extra dims, numpy scalars
    keep their dtype."""
    if values and all(isinstance(v, np.ndarray) for v in values) and len({v.shape for v in values}) == 1:
        return np.stack(values).astype(object, copy=False)
    if values and all(isinstance(v, np.generic) for v in values):
        return np.asarray(values)
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# non-tensor wrappers
# --------------------------------------------------------------------------------------------------------------


def _check_is_td(tensor_dict: Any) -> None:
    if not isinstance(tensor_dict, TensorDict):
        raise TensorDictError(f"expected a TensorDict, got {type(tensor_dict).__name__}")


def assign_non_tensor_data(tensor_dict: TensorDict, key: str, val: Any) -> None:
    """Store one per-batch value under ``key`` as ``NonTensorData``."""
    _check_is_td(tensor_dict)
    tensor_dict[key] = NonTensorData(val)


def assign_non_tensor_stack(tensor_dict: TensorDict, key: str, val: Sequence[Any]) -> None:
    """Store one Python object per row under ``key`` as a ``NonTensorStack`` (lists and dicts stay whole)."""
    _check_is_td(tensor_dict)
    rows = list(val)
    if tensor_dict.batch_size and len(rows) != tensor_dict.batch_size[0]:
        raise RuntimeError(
            f"'{key}' has {len(rows)} rows but the TensorDict has batch_size {list(tensor_dict.batch_size)}"
        )
    tensor_dict[key] = NonTensorStack(*[NonTensorData(row) for row in rows], stack_dim=0)


def assign_non_tensor(tensor_dict: TensorDict, **kwargs: Any) -> TensorDict:
    """Store each keyword: wrappers as they are, lists as per-row stacks, anything else as per-batch data."""
    _check_is_td(tensor_dict)
    for key, val in kwargs.items():
        if isinstance(val, (NonTensorData, NonTensorStack)):
            tensor_dict[key] = val
        elif isinstance(val, list):
            assign_non_tensor_stack(tensor_dict, key, val)
        else:
            assign_non_tensor_data(tensor_dict, key, val)
    return tensor_dict


def unwrap_non_tensor_data(data: Any) -> Any:
    """The value inside a ``NonTensorData``; anything else is returned unchanged."""
    return data.data if isinstance(data, NonTensorData) else data


def get_non_tensor_data(data: TensorDict, key: str, default: Any) -> Any:
    """``data[key]`` unwrapped from ``NonTensorData``, or ``default`` when missing."""
    return unwrap_non_tensor_data(data.get(key, default))


def _native(val: Any) -> Any:
    # Tensors stay tensors; stacks become lists of rows; per-batch data becomes its value.
    if isinstance(val, NonTensorStack):
        return val.tolist()
    if isinstance(val, NonTensorData):
        return val.data
    return val


def get(tensordict: TensorDict, key: str, default: Any = None) -> Any:
    """``tensordict[key]`` as a tensor, a list (NonTensorStack) or a plain value (NonTensorData)."""
    if key not in tensordict.keys():
        return default
    return _native(tensordict.get(key))


def pop(tensordict: TensorDict, key: str, default: Any = None) -> Any:
    """Like ``get`` but removes the key."""
    if key not in tensordict.keys():
        return default
    return _native(tensordict.pop(key))


def _split_by_kind(tensordict: TensorDict, keys: Iterable[str], remove: bool) -> TensorDict:
    per_row, per_batch = {}, {}
    for key in keys:
        if key not in tensordict.keys():
            raise KeyError(f"key '{key}' not in tensordict; available: {sorted(tensordict.keys())}")
        val = tensordict.pop(key) if remove else tensordict.get(key)
        if isinstance(val, NonTensorData):
            per_batch[key] = val.data
        else:
            per_row[key] = val
    return get_tensordict(per_row, per_batch)


def get_keys(tensordict: TensorDict, keys: Iterable[str]) -> TensorDict:
    """A new TensorDict with only ``keys`` (KeyError naming the first missing key)."""
    return _split_by_kind(tensordict, list(keys), remove=False)


def pop_keys(tensordict: TensorDict, keys: Iterable[str]) -> TensorDict:
    """Remove ``keys`` from ``tensordict`` and return them as a new TensorDict."""
    keys = list(keys)
    for key in keys:  # check all first so a missing key leaves the input untouched
        if key not in tensordict.keys():
            raise KeyError(f"key '{key}' not in tensordict; available: {sorted(tensordict.keys())}")
    return _split_by_kind(tensordict, keys, remove=True)


# --------------------------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------------------------


def get_tensordict(tensor_dict: dict[str, Any], non_tensor_dict: dict[str, Any] | None = None) -> TensorDict:
    """Build a TensorDict from per-row values and per-batch settings.

    Args:
        tensor_dict: ``{key: tensor (N, ...) | jagged nested tensor | list | np.ndarray | NonTensorStack}``;
            lists and arrays become per-row NonTensorStacks. Empty gives ``batch_size=[]``.
        non_tensor_dict: ``{key: value}`` stored as NonTensorData.
    """
    source, n_rows, first = {}, None, None
    for key, val in tensor_dict.items():
        if isinstance(val, torch.Tensor):
            if val.is_nested and (val.layout != torch.jagged or not val.is_contiguous()):
                raise TensorDictError(f"nested tensor '{key}' must be contiguous with layout=torch.jagged")
            rows = val.shape[0]
        elif isinstance(val, NonTensorStack):
            rows = len(val)
        elif isinstance(val, (list, np.ndarray)):
            if any(isinstance(row, torch.Tensor) for row in val):
                raise TensorDictError(f"'{key}' is a list holding tensors; use a (nested) tensor or numpy rows")
            rows = len(val)
            val = NonTensorStack(*[NonTensorData(row) for row in val], stack_dim=0)
        else:
            raise TensorDictError(f"'{key}' must be a tensor, list, np.ndarray or NonTensorStack, got {type(val)}")
        if n_rows is None:
            n_rows, first = rows, key
        elif rows != n_rows:
            raise TensorDictError(f"'{key}' has {rows} rows but '{first}' has {n_rows}")
        source[key] = val
    td = TensorDict(source, batch_size=[] if n_rows is None else [n_rows])
    for key, val in (non_tensor_dict or {}).items():
        if key in source:
            raise TensorDictError(f"key '{key}' is in both tensor_dict and non_tensor_dict")
        td[key] = val if isinstance(val, NonTensorData) else NonTensorData(val)
    return td


def list_of_dict_to_tensordict(list_of_dicts: Sequence[dict[str, Any]]) -> TensorDict:
    """Rows given as dicts -> TensorDict: scalar tensors stack, other tensors nest, the rest become stacks."""
    if not list_of_dicts:
        raise TensorDictError("list_of_dict_to_tensordict needs at least one row")
    columns = {key: [row[key] for row in list_of_dicts] for key in list_of_dicts[0]}
    source = {}
    for key, column in columns.items():
        if all(isinstance(v, torch.Tensor) for v in column):
            # Always nested (even when lengths happen to match) so readers can rely on .offsets().
            source[key] = torch.stack(column) if column[0].dim() == 0 else nested_tensor_from_tensor_list(column)
        else:
            source[key] = NonTensorStack(*[NonTensorData(v) for v in column], stack_dim=0)
    return TensorDict(source, batch_size=[len(list_of_dicts)])


# --------------------------------------------------------------------------------------------------------------
# nested (jagged) tensors
# --------------------------------------------------------------------------------------------------------------


def nested_tensor_from_tensor_list(tensors: Sequence[torch.Tensor], ragged_idx: int | None = None) -> torch.Tensor:
    """A jagged nested tensor of ``len(tensors)`` rows, ragged along ``ragged_idx`` (1-based in the result).

    ``ragged_idx`` defaults to the last dim: rows (4, L_i) give shape (B, 4, j) with ``_ragged_idx == 2``.
    """
    if not tensors:
        raise TensorDictError("nested_tensor_from_tensor_list needs at least one tensor")
    sample_dim = tensors[0].dim()
    ragged_idx = sample_dim if ragged_idx is None else ragged_idx
    if not 1 <= ragged_idx <= sample_dim:
        raise TensorDictError(f"ragged_idx must be in [1, {sample_dim}] for {sample_dim}-d rows, got {ragged_idx}")
    cat_dim = ragged_idx - 1
    values = torch.cat(list(tensors), dim=cat_dim)
    lengths = torch.tensor([t.shape[cat_dim] for t in tensors], dtype=torch.long, device=values.device)
    offsets = torch.zeros(len(tensors) + 1, dtype=torch.long, device=values.device)
    torch.cumsum(lengths, dim=0, out=offsets[1:])
    return torch.nested.nested_tensor_from_jagged(values, offsets, jagged_dim=ragged_idx)


def unbind_nested(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The rows of a nested tensor, sliced from ``values()`` with ``offsets()`` for jagged layouts."""
    if tensor.layout != torch.jagged:
        return list(tensor.unbind())
    values, offsets = tensor.values(), tensor.offsets().tolist()
    cat_dim = tensor._ragged_idx - 1
    if values.shape[cat_dim] < offsets[-1]:
        raise TensorDictError(
            f"jagged tensor has _ragged_idx={tensor._ragged_idx} but values of shape {tuple(values.shape)} are "
            f"shorter than its offsets ({offsets[-1]}) along that dim"
        )
    lengths = tensor.lengths()
    lengths = [e - s for s, e in zip(offsets, offsets[1:])] if lengths is None else lengths.tolist()
    return [values.narrow(cat_dim, start, n) for start, n in zip(offsets, lengths)]


def concat_nested_tensors(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate jagged nested tensors along the batch dim, keeping the ragged dim of the first."""
    for t in tensors:
        if not t.is_nested or t.dim() < 2:
            raise TensorDictError(f"concat_nested_tensors expects nested tensors of >= 2 dims, got {tuple(t.shape)}")
    rows = [row for t in tensors for row in unbind_nested(t)]
    return nested_tensor_from_tensor_list(rows, ragged_idx=getattr(tensors[0], "_ragged_idx", tensors[0].dim() - 1))


def maybe_fix_3d_position_ids(data: TensorDict) -> None:
    """Reset ``_ragged_idx`` of 3-D nested ``position_ids`` (rows (k, L_i)) to 2, which pickling can lose."""
    if "position_ids" in data.keys():
        pos = data.get("position_ids")
        if isinstance(pos, torch.Tensor) and pos.is_nested and pos.dim() == 3 and pos.layout == torch.jagged:
            pos._ragged_idx = 2


def _nested_keys(td: TensorDict) -> list[str]:
    return [k for k in td.keys() if isinstance(td.get(k), torch.Tensor) and td.get(k).is_nested]


# --------------------------------------------------------------------------------------------------------------
# row operations
# --------------------------------------------------------------------------------------------------------------


def index_select_tensor_dict(batch: TensorDict | None, indices: torch.Tensor | Sequence[int]) -> TensorDict | None:
    """Rows ``indices`` (1-D ints or a boolean mask) of ``batch``; nested tensors are rebuilt, per-batch data kept."""
    if batch is None:
        return None
    indices = torch.from_numpy(as_index_array(indices, batch.batch_size[0] if batch.batch_size else 0))
    maybe_fix_3d_position_ids(batch)
    nested = _nested_keys(batch)
    out = batch.exclude(*nested)[indices] if nested else batch[indices]
    out.batch_size = torch.Size([int(indices.shape[0])])
    for key in nested:
        nt = batch.get(key)
        rows = unbind_nested(nt)
        picked = [rows[i] for i in indices.tolist()]
        out[key] = nested_tensor_from_tensor_list(picked, ragged_idx=getattr(nt, "_ragged_idx", nt.dim() - 1))
    return out


def chunk_tensordict(td: TensorDict, chunks: int) -> list[TensorDict]:
    """Split into ``chunks`` equal pieces along dim0; nested tensors are split row-wise."""
    _check_is_td(td)
    if chunks <= 0 or len(td) % chunks != 0:
        raise TensorDictError(f"cannot split {len(td)} rows into {chunks} equal chunks")
    size = len(td) // chunks
    return [index_select_tensor_dict(td, torch.arange(i * size, (i + 1) * size)) for i in range(chunks)]


def concat_tensordict(data: Sequence[TensorDict]) -> TensorDict:
    """Concatenate along dim0; per-batch data (NonTensorData) keeps the first input's value.

    TensorDicts without a batch dim (only per-batch data) return the first one. Inputs are not modified.
    """
    data = list(data)
    if not data:
        raise TensorDictError("concat_tensordict needs at least one TensorDict")
    if len(data[0].batch_size) == 0:
        if any(len(d.batch_size) != 0 for d in data):
            raise TensorDictError("cannot concat TensorDicts with and without a batch dim")
        return data[0]
    first = data[0]
    nested = _nested_keys(first)
    per_batch = [k for k in first.keys() if isinstance(first.get(k), NonTensorData)]
    for i, d in enumerate(data[1:], start=1):
        if set(d.keys()) != set(first.keys()):
            raise TensorDictError(f"keys of item {i} {sorted(d.keys())} differ from item 0 {sorted(first.keys())}")
    out = torch.cat([d.exclude(*nested, *per_batch) for d in data], dim=0)
    for key in nested:
        out[key] = concat_nested_tensors([d.get(key) for d in data])
    for key in per_batch:
        out[key] = NonTensorData(first.get(key).data)
    return out


def union_tensor_dict(tensor_dict1: TensorDict, tensor_dict2: TensorDict) -> TensorDict:
    """Add the keys of ``tensor_dict2`` to ``tensor_dict1`` in place; shared keys must hold equal values."""
    if tensor_dict1.batch_size != tensor_dict2.batch_size:
        raise TensorDictError(
            f"cannot union TensorDicts with batch sizes {list(tensor_dict1.batch_size)} and "
            f"{list(tensor_dict2.batch_size)}"
        )
    for key in tensor_dict2.keys():
        val2 = tensor_dict2.get(key)
        if key not in tensor_dict1.keys():
            tensor_dict1[key] = val2
        elif not deep_equal(_native(tensor_dict1.get(key)), _native(val2)):
            raise TensorDictError(f"`{key}` in tensor_dict1 and tensor_dict2 are not the same object")
    return tensor_dict1


def pad_to_divisor(data: TensorDict, size_divisor: int) -> tuple[TensorDict, int]:
    """Pad rows by cycling from the start until ``len`` divides ``size_divisor``: a b c /7 -> a b c a b c a."""
    _check_is_td(data)
    if size_divisor <= 0:
        raise TensorDictError(f"size_divisor must be positive, got {size_divisor}")
    pad_size = (-len(data)) % size_divisor
    if pad_size == 0:
        return data, 0
    if len(data) == 0:
        raise TensorDictError(f"cannot pad an empty TensorDict to a multiple of {size_divisor}")
    padding = index_select_tensor_dict(data, torch.arange(pad_size) % len(data))
    return concat_tensordict([data, padding]), pad_size


def unpad(data: TensorDict, pad_size: int) -> TensorDict:
    """Drop the last ``pad_size`` rows added by ``pad_to_divisor``."""
    return data[:-pad_size] if pad_size else data


def make_iterator(
    tensordict: TensorDict,
    mini_batch_size: int,
    epochs: int,
    seed: int | None = None,
    dataloader_kwargs: dict | None = None,
) -> Iterator[TensorDict]:
    """Mini-batches of ``mini_batch_size`` rows for ``epochs`` passes (shuffled when the kwargs say so)."""
    n_rows = tensordict.batch_size[0]
    if mini_batch_size <= 0 or n_rows % mini_batch_size != 0:
        raise TensorDictError(f"cannot cut {n_rows} rows into mini-batches of {mini_batch_size}")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.arange(n_rows),
        batch_size=mini_batch_size,
        collate_fn=torch.stack,
        generator=generator,
        **(dataloader_kwargs or {}),
    )

    def _iterate() -> Iterator[TensorDict]:
        for _ in range(epochs):
            for indices in loader:
                yield index_select_tensor_dict(tensordict, indices)

    return iter(_iterate())


def contiguous(data: TensorDict) -> TensorDict:
    """A new TensorDict whose tensors are contiguous (so ``consolidate()`` works); wrappers are kept."""
    per_row, per_batch = {}, {}
    for key in data.keys():
        val = data.get(key)
        if isinstance(val, NonTensorData):
            per_batch[key] = val
        elif isinstance(val, NonTensorStack):
            per_row[key] = val
        else:
            per_row[key] = val.contiguous()
    return get_tensordict(per_row, per_batch)


def assert_tensordict_eq(tensordict1: TensorDict, tensordict2: TensorDict) -> None:
    """Raise AssertionError naming the first key whose type or value differs."""
    keys1, keys2 = set(tensordict1.keys()), set(tensordict2.keys())
    if keys1 != keys2:
        raise AssertionError(f"key sets differ: only in first {keys1 - keys2}, only in second {keys2 - keys1}")
    for key in tensordict1.keys():
        val1, val2 = tensordict1.get(key), tensordict2.get(key)
        if type(val1) is not type(val2):
            raise AssertionError(f"'{key}' has type {type(val1).__name__} vs {type(val2).__name__}")
        if not deep_equal(_native(val1), _native(val2)):
            raise AssertionError(f"'{key}' differs between the two TensorDicts")
