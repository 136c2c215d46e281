"""Tests for verl.protocol: DataProto construction, indexing, splitting, joining, padding and transport."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from verl import DataProto
from verl.protocol import (
    DataProtoConfig,
    DataProtoFuture,
    DataProtoItem,
    _padding_size_key,
    collate_fn,
    deserialize_single_tensor,
    deserialize_tensordict,
    fold_batch_dim,
    pad_dataproto_to_divisor,
    serialize_single_tensor,
    serialize_tensordict,
    unfold_batch_dim,
    union_numpy_dict,
    union_tensor_dict,
    unpad_dataproto,
)
from verl.utils.py_functional import temp_env_var


def _abc(meta: dict | None = None) -> DataProto:
    """Three rows a, b, c with obs [[1, 2], [3, 4], [5, 6]]."""
    return DataProto.from_dict(
        {"obs": torch.tensor([[1, 2], [3, 4], [5, 6]])}, {"labels": ["a", "b", "c"]}, meta_info=meta or {"info": "x"}
    )


def _six() -> DataProto:
    return DataProto.from_dict({"obs": torch.arange(1, 7)}, {"labels": list("abcdef")}, meta_info={"name": "six"})


def _labels(data: DataProto) -> list:
    return data.non_tensor_batch["labels"].tolist()


# ---- construction and invariants -------------------------------------------------------------------------------


def test_from_dict_builds_one_batch_dim_and_object_arrays():
    data = DataProto.from_dict({"obs": torch.zeros(4, 3), "act": torch.zeros(4)}, {"uid": ["u0", "u1", "u2", "u3"]})
    assert data.batch.batch_size == torch.Size([4])
    assert data.non_tensor_batch["uid"].dtype == object
    assert len(data) == 4


def test_from_dict_positional_order_is_tensors_non_tensors_meta():
    data = DataProto.from_dict({"obs": torch.zeros(2)}, {"na": ["x", "y"]}, {"temperature": 0.7})
    assert _labels_of(data, "na") == ["x", "y"]
    assert data.meta_info == {"temperature": 0.7}


def _labels_of(data: DataProto, key: str) -> list:
    return data.non_tensor_batch[key].tolist()


def test_from_dict_rejects_mismatched_batch_dims():
    obs, act = torch.randn(10, 5), torch.randn(10, 5, 3)
    # num_batch_dims=2 gives batch [10, 5] for both, but a DataProto allows only one batch dim.
    with pytest.raises(AssertionError, match="one batch dim"):
        DataProto.from_dict({"obs": obs, "act": act}, num_batch_dims=2)
    # num_batch_dims=3: obs.shape[:3] == (10, 5) differs from act.shape[:3] == (10, 5, 3).
    with pytest.raises(AssertionError, match="share the batch size"):
        DataProto.from_dict({"obs": obs, "act": act}, num_batch_dims=3)
    with pytest.raises(AssertionError, match="share the batch size"):
        DataProto.from_dict({"obs": torch.zeros(3), "act": torch.zeros(4)})


def test_from_dict_rejects_non_tensors_with_several_batch_dims_and_non_tensor_values():
    with pytest.raises(ValueError, match="num_batch_dims must be 1"):
        DataProto.from_dict({"obs": torch.zeros(2, 2)}, {"na": ["x", "y"]}, num_batch_dims=2)
    with pytest.raises(ValueError, match=r"tensors\['obs'\] must be a torch.Tensor"):
        DataProto.from_dict({"obs": [1, 2]})


def test_from_dict_without_tensors_has_no_batch():
    data = DataProto.from_dict(non_tensors={"labels": ["a", "b", "c"]}, meta_info={"info": "x"})
    assert data.batch is None
    assert len(data) == 3


def test_from_dict_auto_padding_sets_the_meta_flag():
    data = DataProto.from_dict({"obs": torch.zeros(3)}, auto_padding=True)
    assert data.meta_info == {"_verl_auto_padding": True}
    assert data.is_padding_enabled()


def test_check_consistency_names_the_bad_key():
    with pytest.raises(ValueError, match=r"non_tensor_batch\['uid'\] has 2 rows but the batch has 3"):
        DataProto(batch=TensorDict({"obs": torch.zeros(3)}, batch_size=[3]), non_tensor_batch={"uid": np.zeros(2)})
    with pytest.raises(ValueError, match=r"non_tensor_batch\['uid'\] must be a np.ndarray"):
        DataProto(batch=None, non_tensor_batch={"uid": ["a"]})


def test_len_counts_rows_with_or_without_a_batch():
    labels = np.array(["a", "b", "c"], dtype=object)
    assert len(_abc()) == 3
    assert len(DataProto(batch=None, non_tensor_batch={"labels": labels}, meta_info={})) == 3
    assert len(DataProto(batch=None, non_tensor_batch={}, meta_info={})) == 0
    assert len(DataProto(batch=None, non_tensor_batch=None, meta_info={"info": "x"})) == 0


def test_from_single_dict_splits_by_type_and_preserves_the_subclass():
    class MyProto(DataProto):
        pass

    data = MyProto.from_single_dict({"x": torch.tensor([0, 1]), "y": np.array(["p", "q"], dtype=object)})
    assert type(data) is MyProto
    assert list(data.batch.keys()) == ["x"]
    assert _labels_of(data, "y") == ["p", "q"]
    with pytest.raises(ValueError, match=r"data\['z'\] must be a torch.Tensor or np.ndarray, got list"):
        DataProto.from_single_dict({"z": [1, 2]})


# ---- unions ----------------------------------------------------------------------------------------------------


def test_union_tensor_dict_adds_new_keys_and_rejects_different_values():
    obs = torch.randn(4, 2)
    left = TensorDict({"obs": obs, "act": torch.zeros(4)}, batch_size=[4])
    right = TensorDict({"obs": obs, "rew": torch.ones(4)}, batch_size=[4])
    union_tensor_dict(left, right)
    assert set(left.keys()) == {"obs", "act", "rew"}
    with pytest.raises(AssertionError, match="`obs` in tensor_dict1 and tensor_dict2 are not the same object"):
        union_tensor_dict(left, TensorDict({"obs": obs + 1}, batch_size=[4]))
    with pytest.raises(AssertionError, match="batch sizes"):
        union_tensor_dict(left, TensorDict({"obs": obs[:2]}, batch_size=[2]))


def test_union_numpy_dict_treats_equal_nans_and_object_arrays_as_equal():
    nan_mix = np.array([float("nan")] * 3 + ["nan"], dtype=object)
    union_numpy_dict({"a": nan_mix}, {"a": nan_mix.copy()})
    union_numpy_dict({"a": np.array([1.0, np.nan])}, {"a": np.array([1.0, np.nan])})
    nested = np.array([[np.array([1, 2]), "t"], [np.array([3.0]), None]], dtype=object)
    union_numpy_dict({"a": nested}, {"a": copy.deepcopy(nested)})
    union_numpy_dict({"a": np.array(["x", "y"])}, {"a": np.array(["x", "y"])})


def test_union_numpy_dict_rejects_any_difference():
    with pytest.raises(AssertionError, match="`a` in tensor_dict1 and tensor_dict2 are not the same object."):
        union_numpy_dict({"a": np.arange(6).reshape(2, 3)}, {"a": np.arange(6).reshape(2, 3) + 1})
    with pytest.raises(AssertionError):  # NaN moved to another position
        union_numpy_dict({"a": np.array([1.0, np.nan])}, {"a": np.array([np.nan, 1.0])})
    with pytest.raises(AssertionError):  # a deep element of an object array differs
        a = np.array([[[np.array([1, 2])]]], dtype=object)
        union_numpy_dict({"a": a}, {"a": np.array([[[np.array([9, 9])]]], dtype=object)})
    with pytest.raises(AssertionError):
        union_numpy_dict({"a": np.array(["x", None], dtype=object)}, {"a": np.array(["x", "y"], dtype=object)})


def test_union_numpy_dict_handles_self_referencing_object_arrays():
    loop1, loop2, plain = (np.array([None], dtype=object) for _ in range(3))
    loop1[0], loop2[0] = loop1, loop2
    union_numpy_dict({"a": loop1}, {"a": loop2})
    with pytest.raises(AssertionError):
        union_numpy_dict({"a": loop1}, {"a": plain})


def test_union_merges_all_three_parts_in_place():
    left = DataProto.from_dict({"obs": torch.tensor([1, 2])}, {"uid": ["a", "b"]}, {"step": 1})
    right = DataProto.from_dict({"rew": torch.tensor([0.5, 1.0])}, {"uid": ["a", "b"], "src": ["s", "t"]}, {"lr": 2})
    out = left.union(right)
    assert out is left
    assert set(left.batch.keys()) == {"obs", "rew"}
    assert set(left.non_tensor_batch) == {"uid", "src"}
    assert left.meta_info == {"step": 1, "lr": 2}
    with pytest.raises(AssertionError):
        left.union(DataProto.from_dict({"obs": torch.tensor([9, 9])}))
    with pytest.raises(ValueError, match=r"meta_info\['step'\] differs: 1 vs 2"):
        left.union(DataProto.from_dict({"obs": torch.tensor([1, 2])}, meta_info={"step": 2}))
    # array-valued meta_info compares by value instead of raising "truth value is ambiguous"
    left.meta_info["mask"] = np.array([1, 0])
    left.union(DataProto.from_dict({"obs": torch.tensor([1, 2])}, meta_info={"mask": np.array([1, 0])}))


# ---- indexing and selection ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [
        np.array([4, 0, 4]),
        torch.tensor([4, 0, 4]),
        [4, 0, 4],
    ],
    ids=["numpy", "torch", "list"],
)
def test_indexing_with_integer_arrays_gathers_rows(index):
    picked = _six()[index]
    # obs = 1..6, so rows 4, 0, 4 hold 5, 1, 5 and labels e, a, e.
    assert picked.batch["obs"].tolist() == [5, 1, 5]
    assert _labels(picked) == ["e", "a", "e"]
    assert picked.meta_info == {"name": "six"}


@pytest.mark.parametrize(
    "mask",
    [
        np.array([True, False, True, False, False, True]),
        torch.tensor([True, False, True, False, False, True]),
        [True, False, True, False, False, True],
        [np.True_, np.False_, np.True_, np.False_, np.False_, np.True_],
    ],
    ids=["numpy", "torch", "list", "list-of-np-bool"],
)
def test_indexing_with_boolean_masks_keeps_selected_rows(mask):
    picked = _six()[mask]
    assert picked.batch["obs"].tolist() == [1, 3, 6]
    assert _labels(picked) == ["a", "c", "f"]
    # The batch size must stay a torch.Size of plain ints so that chunk() etc. keep working.
    assert isinstance(picked.batch.batch_size, torch.Size)
    assert all(type(d) is int for d in picked.batch.batch_size)
    assert len(picked.chunk(3)) == 3


def test_indexing_rejects_a_mask_of_the_wrong_length():
    with pytest.raises(IndexError, match="does not match 6 rows"):
        _six()[[True, False]]


def test_integer_index_returns_an_item_and_slice_returns_a_view():
    data = _six()
    item = data[np.int64(2)]
    assert isinstance(item, DataProtoItem)
    assert item.batch["obs"].item() == 3
    assert item.non_tensor_batch["labels"] == "c"
    sliced = data[1:5:2]
    assert sliced.batch["obs"].tolist() == [2, 4]
    assert _labels(sliced) == ["b", "d"]
    assert data.slice(4).batch["obs"].tolist() == [5, 6]
    with pytest.raises(TypeError, match="DataProto indices must be"):
        data["obs"]


def test_iterating_yields_one_item_per_row_and_stops_when_empty():
    assert [item.non_tensor_batch["labels"] for item in _abc()] == ["a", "b", "c"]
    assert list(DataProto()) == []


def test_select_picks_keys_and_deepcopy_detaches():
    data = DataProto.from_dict({"a": torch.zeros(2), "b": torch.ones(2)}, {"u": ["x", "y"]}, {"m": [1], "n": 2})
    sub = data.select(batch_keys=["a"], meta_info_keys=["m"])
    assert list(sub.batch.keys()) == ["a"]
    assert sub.meta_info == {"m": [1]}
    assert list(sub.non_tensor_batch) == ["u"]
    deep = data.select(deepcopy=True)
    deep.batch["a"][0] = 5
    deep.meta_info["m"].append(2)
    assert data.batch["a"][0] == 0 and data.meta_info["m"] == [1]
    with pytest.raises(KeyError, match=r"keys \['zz'\] not found in batch"):
        data.select(batch_keys=["zz"])


def test_select_and_pop_work_without_a_tensor_batch():
    data = DataProto.from_dict(non_tensors={"labels": ["a", "b", "c"]}, meta_info={"info": "x"})
    assert _labels(data.select(non_tensor_batch_keys=["labels"])) == ["a", "b", "c"]
    popped = data.pop(non_tensor_batch_keys=["labels"])
    assert _labels(popped) == ["a", "b", "c"]
    assert data.non_tensor_batch == {}


def test_pop_moves_keys_into_a_new_dataproto():
    data = DataProto.from_dict({"obs": torch.zeros(3, 2), "act": torch.ones(3)}, meta_info={"2": 2, "1": 1})
    popped = data.pop(batch_keys=["obs"], meta_info_keys=["2"])
    assert set(popped.batch.keys()) == {"obs"} and popped.meta_info == {"2": 2}
    assert set(data.batch.keys()) == {"act"} and data.meta_info == {"1": 1}
    with pytest.raises(KeyError, match="not found in meta_info"):
        data.pop(meta_info_keys=["2"])


def test_rename_accepts_strings_and_lists():
    data = DataProto.from_dict({"a": torch.zeros(2), "b": torch.ones(2)})
    assert data.rename("a", "x") is data
    data.rename(["x", "b"], ["y", "z"])
    assert set(data.batch.keys()) == {"y", "z"}
    with pytest.raises(ValueError, match="as many new keys"):
        data.rename(["y"], ["p", "q"])


def test_reorder_permutes_rows_in_place_and_keeps_meta():
    data = _six()
    data.reorder(torch.tensor([3, 4, 2, 0, 1, 5]))
    assert data.batch["obs"].tolist() == [4, 5, 3, 1, 2, 6]
    assert _labels(data) == ["d", "e", "c", "a", "b", "f"]
    assert data.meta_info == {"name": "six"}


def test_to_moves_the_batch_and_returns_self():
    data = _abc()
    assert data.to("cpu") is data
    assert data.batch["obs"].device.type == "cpu"


# ---- splitting and joining -------------------------------------------------------------------------------------


def test_chunk_splits_evenly_and_shares_meta():
    first, second = _six().chunk(2)
    assert first.batch["obs"].tolist() == [1, 2, 3] and _labels(first) == ["a", "b", "c"]
    assert second.batch["obs"].tolist() == [4, 5, 6] and _labels(second) == ["d", "e", "f"]
    assert first.meta_info == second.meta_info == {"name": "six"}


def test_chunk_refuses_uneven_split_without_padding():
    with pytest.raises(AssertionError, match="cannot split 6 rows into 5 equal chunks; enable auto padding"):
        _six().chunk(5)
    with pytest.raises(ValueError, match="chunks must be a positive int"):
        _six().chunk(0)


def test_chunk_allows_uneven_split_with_padding_enabled():
    data = DataProto.from_dict({"obs": torch.arange(7)}, auto_padding=True)
    # 7 rows into 3 pieces: linspace bounds 0, 2.33, 4.67, 7 -> 0, 2, 4, 7 -> sizes 2, 2, 3.
    assert [len(c) for c in data.chunk(3)] == [2, 2, 3]
    assert torch.cat([c.batch["obs"] for c in data.chunk(3)]).tolist() == list(range(7))


def test_global_auto_padding_switch_and_env_var():
    data = _six()
    assert not data.is_padding_enabled()
    DataProtoConfig.auto_padding = True
    try:
        assert data.is_padding_enabled()
        assert len(data.chunk(4)) == 4
    finally:
        DataProtoConfig.auto_padding = False
    with temp_env_var("VERL_AUTO_PADDING", "TRUE"):
        assert DataProtoConfig.auto_padding
    assert not DataProtoConfig.auto_padding
    with pytest.raises(TypeError):
        DataProtoConfig.auto_padding = "yes"


def test_split_gives_fixed_size_pieces_with_a_short_tail():
    pieces = _six().split(4)
    assert [p.batch["obs"].tolist() for p in pieces] == [[1, 2, 3, 4], [5, 6]]


def test_concat_is_the_inverse_of_chunk():
    data = _six()
    joined = DataProto.concat(data.chunk(3))
    assert joined.batch["obs"].tolist() == [1, 2, 3, 4, 5, 6]
    assert _labels(joined) == list("abcdef")
    assert joined.meta_info == {"name": "six"}


def test_concat_merges_metrics_from_every_worker():
    parts = [
        DataProto.from_dict({"obs": torch.tensor([1])}, meta_info={"flag": True}),  # no metrics on worker 0
        DataProto.from_dict(
            {"obs": torch.tensor([2])}, meta_info={"metrics": [{"loss": 0.5, "acc": 0.9}], "flag": True}
        ),
        DataProto.from_dict({"obs": torch.tensor([3])}, meta_info={"metrics": {"loss": 0.6, "acc": 0.8}, "flag": True}),
        DataProto.from_dict({"obs": torch.tensor([4])}, meta_info={"extra": "B"}),
    ]
    joined = DataProto.concat(parts)
    # list values are extended, dict values appended: [{0.5, 0.9}, {0.6, 0.8}] -> dict of lists.
    assert joined.meta_info["metrics"] == {"loss": [0.5, 0.6], "acc": [0.9, 0.8]}
    assert joined.meta_info["flag"] is True and joined.meta_info["extra"] == "B"
    assert joined.batch["obs"].tolist() == [1, 2, 3, 4]


def test_concat_reports_conflicting_meta_info():
    a = DataProto.from_dict({"obs": torch.tensor([1])}, meta_info={"config": "A"})
    b = DataProto.from_dict({"obs": torch.tensor([2])}, meta_info={"config": "B"})
    with pytest.raises(AssertionError, match="Conflicting values for meta_info key 'config'"):
        DataProto.concat([a, b])


def test_concat_rejects_mismatched_keys_and_empty_input():
    a = DataProto.from_dict({"obs": torch.tensor([1])})
    b = DataProto.from_dict({"act": torch.tensor([2])})
    with pytest.raises(AssertionError, match="batch keys of item 1"):
        DataProto.concat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        DataProto.concat([])


def test_concat_preserves_subclass_and_handles_missing_batch():
    class MyProto(DataProto):
        pass

    a = MyProto.from_dict(non_tensors={"u": ["x"]})
    b = MyProto.from_dict(non_tensors={"u": ["y"]})
    joined = DataProto.concat([a, b])
    assert type(joined) is MyProto and joined.batch is None
    assert _labels_of(joined, "u") == ["x", "y"]


def test_repeat_interleaves_or_tiles():
    data = _abc({"info": "test"})
    inter = data.repeat(repeat_times=2, interleave=True)
    assert inter.batch["obs"].tolist() == [[1, 2], [1, 2], [3, 4], [3, 4], [5, 6], [5, 6]]
    assert _labels(inter) == ["a", "a", "b", "b", "c", "c"]
    tiled = data.repeat(repeat_times=2, interleave=False)
    assert tiled.batch["obs"].tolist() == [[1, 2], [3, 4], [5, 6], [1, 2], [3, 4], [5, 6]]
    assert _labels(tiled) == ["a", "b", "c", "a", "b", "c"]
    assert inter.meta_info == tiled.meta_info == {"info": "test"}


def test_sample_level_repeat_uses_per_row_counts():
    data = _abc()
    # counts [3, 1, 2]: a a a b c c; sum 6 rows.
    out = data.sample_level_repeat([3, 1, 2])
    assert out.batch["obs"][:, 0].tolist() == [1, 1, 1, 3, 5, 5]
    assert _labels(out) == ["a", "a", "a", "b", "c", "c"]
    out = data.sample_level_repeat(torch.tensor([1, 2, 3]))
    assert _labels(out) == ["a", "b", "b", "c", "c", "c"]
    assert _labels(data.sample_level_repeat(np.array([0, 0, 1]))) == ["c"]
    with pytest.raises(ValueError, match="3 integers"):
        data.sample_level_repeat([1, 2])


def test_unfold_column_chunks_splits_named_keys_and_repeats_the_rest():
    data = DataProto.from_dict(
        {"obs1": torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), "obs2": torch.tensor([[1, 2], [5, 6]])},
        {"labels": [["a1", "a2"], ["b1", "b2"]], "uid": ["a", "b"]},
        meta_info={"name": "n"},
    )
    out = data.unfold_column_chunks(2, split_keys=["obs1", "labels"])
    # obs1 (2, 4) -> (4, 2): each row cut into two halves.
    assert out.batch["obs1"].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert out.batch["obs2"].tolist() == [[1, 2], [1, 2], [5, 6], [5, 6]]
    assert out.non_tensor_batch["labels"].tolist() == [["a1"], ["a2"], ["b1"], ["b2"]]
    assert _labels_of(out, "uid") == ["a", "a", "b", "b"]
    everything_repeated = data.unfold_column_chunks(2)
    assert everything_repeated.batch["obs1"].shape == (4, 4)
    with pytest.raises(ValueError, match="not divisible by n_split=3"):
        data.unfold_column_chunks(3, split_keys=["obs1"])


def test_unfold_column_chunks_keeps_trailing_dims():
    obs = torch.arange(16).reshape(2, 4, 2)
    out = DataProto.from_dict({"obs": obs}).unfold_column_chunks(2, split_keys=["obs"])
    # (2, 4, 2) -> (4, 2, 2): row 0's positions 0-1 then 2-3, then row 1's.
    assert out.batch["obs"].tolist() == obs.reshape(4, 2, 2).tolist()


# ---- padding ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("divisor", "pad", "rows"),
    [
        (2, 1, "abca"),  # 3 rows -> next multiple of 2 is 4: one extra row (a)
        (3, 0, "abc"),  # 3 is already divisible by 3
        (7, 4, "abcabca"),  # 7 - 3 = 4 extra rows, cycling from the start: a b c a
    ],
)
def test_pad_dataproto_to_divisor_cycles_rows_and_unpad_restores(divisor, pad, rows):
    data = _abc({"info": "test"})
    padded, pad_size = pad_dataproto_to_divisor(data, size_divisor=divisor)
    assert pad_size == pad
    assert _labels(padded) == list(rows)
    first_col = {"a": 1, "b": 3, "c": 5}
    assert padded.batch["obs"][:, 0].tolist() == [first_col[r] for r in rows]
    assert padded.meta_info == {"info": "test"}
    restored = unpad_dataproto(padded, pad_size=pad_size)
    assert restored.batch["obs"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert _labels(restored) == ["a", "b", "c"]


def test_pad_rejects_bad_input():
    with pytest.raises(ValueError, match="size_divisor must be positive"):
        pad_dataproto_to_divisor(_abc(), 0)
    with pytest.raises(TypeError, match="expects a DataProto"):
        pad_dataproto_to_divisor({"obs": 1}, 2)
    assert _padding_size_key == "_padding_size_key_x123d"


def test_padding_appends_copies_of_first_or_last_row():
    data = _abc()
    data.padding(2)
    assert _labels(data) == ["a", "b", "c", "c", "c"]
    data = _abc()
    data.padding(1, padding_candidate="first")
    assert data.batch["obs"].tolist() == [[1, 2], [3, 4], [5, 6], [1, 2]]


# ---- fold / unfold, iterate, collate ---------------------------------------------------------------------------


def test_fold_and_unfold_batch_dim_round_trip_through_reorder():
    data = _abc().repeat(2, interleave=True)  # a a b b c c
    folded = fold_batch_dim(data, new_batch_size=3)
    assert folded.batch.batch_size == torch.Size([3])
    assert folded.batch["obs"].tolist() == [[[1, 2], [1, 2]], [[3, 4], [3, 4]], [[5, 6], [5, 6]]]
    assert folded.non_tensor_batch["labels"].tolist() == [["a", "a"], ["b", "b"], ["c", "c"]]
    folded.reorder(torch.tensor([1, 2, 0]))
    flat = unfold_batch_dim(folded, batch_dims=2)
    assert flat.batch["obs"][:, 0].tolist() == [3, 3, 5, 5, 1, 1]
    assert _labels(flat) == ["b", "b", "c", "c", "a", "a"]
    with pytest.raises(AssertionError, match="cannot fold 6 rows into a batch of 4"):
        fold_batch_dim(data, 4)


def test_make_iterator_yields_mini_batches_in_order_by_default():
    data = _six()
    batches = list(data.make_iterator(mini_batch_size=2, epochs=2))
    # 6 rows / 2 per batch = 3 batches per epoch, 2 epochs -> 6 batches, in order each epoch.
    assert [b.batch["obs"].tolist() for b in batches] == [[1, 2], [3, 4], [5, 6]] * 2
    assert all(isinstance(b, DataProto) and b.meta_info == {"name": "six"} for b in batches)
    assert _labels(batches[1]) == ["c", "d"]


def test_make_iterator_with_seed_is_deterministic_when_shuffling():
    data = DataProto.from_dict({"obs": torch.arange(100)}, {"labels": [str(i) for i in range(100)]})
    kwargs = {"shuffle": True}
    run1 = [b.batch["obs"].tolist() for b in data.make_iterator(10, epochs=2, seed=1, dataloader_kwargs=kwargs)]
    run2 = [b.batch["obs"].tolist() for b in data.make_iterator(10, epochs=2, seed=1, dataloader_kwargs=kwargs)]
    run3 = [b.batch["obs"].tolist() for b in data.make_iterator(10, epochs=2, seed=2, dataloader_kwargs=kwargs)]
    assert run1 == run2 and run1 != run3
    assert len(run1) == 20 and sorted(sum(run1[:10], [])) == list(range(100))
    labels = [
        b.non_tensor_batch["labels"].tolist() for b in data.make_iterator(10, 1, seed=1, dataloader_kwargs=kwargs)
    ]
    assert [int(x) for x in labels[0]] == run1[0]


def test_make_iterator_requires_divisible_mini_batches():
    with pytest.raises(AssertionError, match="6 rows to divide evenly into mini-batches of 4"):
        _six().make_iterator(4, epochs=1)


def test_collate_fn_stacks_items():
    data = _abc()
    stacked = collate_fn([data[2], data[0]])
    assert stacked.batch["obs"].tolist() == [[5, 6], [1, 2]]
    assert _labels(stacked) == ["c", "a"]
    assert collate_fn(data) is data


# ---- TensorDict conversion -------------------------------------------------------------------------------------


def test_to_tensordict_and_back_keeps_nested_python_objects():
    data = DataProto.from_dict(
        {"obs": torch.tensor([1, 2, 3])},
        {
            "labels": ["a", "b", "c"],
            "turn_scores": [[], [0.5, 0.8], [0.9]],
            "info": [{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}],
            "prompt": [[{"role": "user"}], [{"role": "user"}, {"role": "assistant"}], []],
        },
        meta_info={"global_steps": 42},
    )
    td = data.to_tensordict()
    assert td["obs"].tolist() == [1, 2, 3]
    assert td["labels"] == ["a", "b", "c"]
    assert list(td["turn_scores"][1]) == [0.5, 0.8]
    assert dict(td["info"][0]) == {"acc": 1.0}
    assert td["global_steps"] == 42
    back = DataProto.from_tensordict(td)
    assert back.batch["obs"].tolist() == [1, 2, 3]
    assert back.non_tensor_batch["turn_scores"].tolist() == [[], [0.5, 0.8], [0.9]]
    assert back.non_tensor_batch["prompt"][1] == [{"role": "user"}, {"role": "assistant"}]
    assert back.meta_info == {"global_steps": 42}


def test_from_tensordict_reads_tu_built_dicts():
    from verl.utils import tensordict_utils as tu

    td = tu.get_tensordict({"obs": torch.arange(3), "labels": ["a", "b", "c"]}, {"name": "n"})
    data = DataProto.from_tensordict(td)
    assert _labels(data) == ["a", "b", "c"] and data.meta_info == {"name": "n"}
    assert data.batch["obs"].tolist() == [0, 1, 2]


# ---- pickling, disk, serialization -----------------------------------------------------------------------------


def test_pickle_round_trip_keeps_everything():
    data = DataProto.from_dict(
        {"f": torch.randn(4, 3), "b": torch.tensor([True, False, True, True]), "h": torch.randn(4, 2).bfloat16()},
        {"uid": ["a", "b", "c", "d"]},
        {"temperature": 1.0},
    )
    back = pickle.loads(pickle.dumps(data))
    for key in ("f", "b", "h"):
        assert torch.equal(back.batch[key], data.batch[key]) and back.batch[key].dtype == data.batch[key].dtype
    assert _labels_of(back, "uid") == ["a", "b", "c", "d"] and back.meta_info == {"temperature": 1.0}
    back.batch["f"][0, 0] = 123.0  # the restored tensors own writable memory
    assert data.batch["f"][0, 0] != 123.0


@pytest.mark.parametrize("method", ["numpy", "torch"])
def test_pickle_round_trip_with_each_serialization_method(method):
    data = _abc()
    with temp_env_var("VERL_DATAPROTO_SERIALIZATION_METHOD", method):
        blob = pickle.dumps(data)
    back = pickle.loads(blob)
    assert back.batch["obs"].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert _labels(back) == ["a", "b", "c"]


def test_pickle_of_empty_batch_and_of_no_batch():
    back = pickle.loads(pickle.dumps(DataProto(batch=TensorDict({}, batch_size=[10]))))
    assert len(back.batch.keys()) == 0 and back.batch.batch_size == torch.Size([10])
    back = pickle.loads(pickle.dumps(DataProto.from_dict(non_tensors={"u": ["x"]})))
    assert back.batch is None and len(back) == 1


def test_copy_is_shallow_and_deepcopy_is_independent():
    data = _abc()
    shallow = copy.copy(data)
    assert shallow.batch is data.batch
    deep = copy.deepcopy(data)
    deep.batch["obs"][0, 0] = 100
    assert data.batch["obs"][0, 0] == 1


def test_save_and_load_from_disk(tmp_path):
    data = _abc({"info": "disk"})
    path = tmp_path / "data.pkl"
    data.save_to_disk(path)
    loaded = DataProto.load_from_disk(path)
    assert torch.equal(loaded.batch["obs"], data.batch["obs"])
    assert _labels(loaded) == ["a", "b", "c"] and loaded.meta_info == {"info": "disk"}


def test_serialize_single_tensor_round_trips_every_dtype():
    for tensor in (
        torch.randn(3, 4, 5),
        torch.randn(2, 3).double(),
        torch.randint(0, 10, (2, 3), dtype=torch.int32),
        torch.tensor([[True, False]]),
        torch.randn(2, 3).bfloat16(),
        torch.randn(2, 3).to(torch.float8_e4m3fn),
        torch.randn(5)[::2],  # non-contiguous
        torch.zeros(0, 3),
        torch.tensor(7),  # 0-d
    ):
        dtype, shape, raw = serialize_single_tensor(tensor)
        back = deserialize_single_tensor((dtype, shape, raw))
        assert back.dtype == tensor.dtype and back.shape == tensor.shape
        # compare raw bytes: NaN-safe and defined for fp8, which has no elementwise equality
        assert torch.equal(back.reshape(-1).view(torch.uint8), tensor.contiguous().reshape(-1).view(torch.uint8))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_serialize_tensordict_round_trips_regular_and_nested_tensors():
    jagged = torch.nested.as_nested_tensor([torch.arange(2), torch.arange(3)], layout=torch.jagged)
    strided = torch.nested.as_nested_tensor([torch.randn(2, 3), torch.randn(3, 4)])
    td = TensorDict({"x": torch.randn(2, 3), "j": jagged, "s": strided}, batch_size=(2,), device="cpu")
    back = deserialize_tensordict(serialize_tensordict(td))
    assert back.batch_size == td.batch_size and str(back.device) == "cpu"
    assert torch.equal(back["x"], td["x"])
    for key in ("j", "s"):
        assert back[key].is_nested and back[key].layout == td[key].layout
        assert all(torch.equal(a, b) for a, b in zip(back[key].unbind(), td[key].unbind()))
    two_dims = TensorDict({"y": torch.randn(5, 3, 4)}, batch_size=(5, 3))
    assert deserialize_tensordict(serialize_tensordict(two_dims)).batch_size == torch.Size([5, 3])


# ---- reporting, futures, distributed ---------------------------------------------------------------------------


def test_print_size_and_get_data_info(capsys):
    data = DataProto.from_dict({"obs": torch.zeros(2, 3, dtype=torch.float32)}, {"u": ["a", "b"]}, {"t": 1.0})
    data.print_size(prefix="rollout ")
    out = capsys.readouterr().out
    assert out.startswith("rollout size of tensordict:") and "non_tensor_batch" in out
    info = data.get_data_info()
    assert "obs: shape=(2, 3), dtype=torch.float32" in info
    assert "u: shape=(2,), dtype=object" in info and "t: float" in info


class _FakeRef:
    def __init__(self, value):
        self.value = value


def test_dataproto_future_chunk_and_get(monkeypatch):
    import types

    fake_ray = types.SimpleNamespace(get=lambda refs: [r.value for r in refs])
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    future = DataProtoFuture.concat([_FakeRef(_six()[:3]), _FakeRef(_six()[3:])])
    assert future.get().batch["obs"].tolist() == [1, 2, 3, 4, 5, 6]
    pieces = future.chunk(3)
    assert [p.get().batch["obs"].tolist() for p in pieces] == [[1, 2], [3, 4], [5, 6]]
    # chunking a chunk composes the selections: chunk 1 of 3 is [3, 4]; its second half is [4].
    assert pieces[1].chunk(2)[1].get().batch["obs"].tolist() == [4]
    assert pickle.loads(pickle.dumps(pieces[1])).dispatch_fn(_six()).batch["obs"].tolist() == [3, 4]


def test_importing_the_protocol_pulls_in_no_heavy_backends():
    code = textwrap.dedent(
        """
        import sys
        import verl, verl.protocol
        heavy = [m for m in ("ray", "vllm", "sglang", "megatron", "transformers") if m in sys.modules]
        assert not heavy, heavy
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _gather_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        data = DataProto.from_dict({"obs": torch.tensor([rank * 10, rank * 10 + 1])}, {"r": [f"{rank}a", f"{rank}b"]})
        from verl.protocol import all_gather_data_proto

        all_gather_data_proto(data)
        torch.save({"obs": data.batch["obs"], "r": data.non_tensor_batch["r"].tolist()}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ray
def test_dataproto_travels_through_ray_and_futures_resolve(ray_cluster):
    ray = ray_cluster

    @ray.remote
    def shift(data: DataProto, by: int) -> DataProto:
        data.batch["obs"] += by  # tensors arriving from the object store must be writable
        return data

    data = DataProto.from_dict({"obs": torch.arange(4), "big": torch.randn(4, 256, 256)}, {"u": list("abcd")})
    back = ray.get(ray.put(data))
    assert torch.equal(back.batch["big"], data.batch["big"]) and _labels_of(back, "u") == list("abcd")
    refs = [shift.remote(piece, 10 * i) for i, piece in enumerate(data.chunk(2))]
    future = DataProtoFuture.concat(refs)
    # chunk 0 (rows 0, 1) shifted by 0, chunk 1 (rows 2, 3) by 10: [0, 1, 12, 13]
    assert future.get().batch["obs"].tolist() == [0, 1, 12, 13]
    assert future.chunk(2)[1].get().batch["obs"].tolist() == [12, 13]
    assert data.batch["obs"].tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_all_gather_data_proto_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        out = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        # rank 0 holds [0, 1], rank 1 holds [10, 11]; both end with rank-ordered concatenation.
        assert out["obs"].tolist() == [0, 1, 10, 11]
        assert out["r"] == ["0a", "0b", "1a", "1b"]
