"""Tests for verl.utils.tensordict_utils: a plain TensorDict used as the batch container."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tensordict import NonTensorData, NonTensorStack, TensorDict

from verl.utils import tensordict_utils as tu


def _jagged(*rows: list[int]) -> torch.Tensor:
    return torch.nested.as_nested_tensor([torch.tensor(r) for r in rows], layout=torch.jagged)


def _rows(nt: torch.Tensor) -> list:
    return [row.tolist() for row in tu.unbind_nested(nt)]


def _abc() -> TensorDict:
    return tu.get_tensordict({"obs": torch.tensor([[1, 2], [3, 4], [5, 6]]), "labels": ["a", "b", "c"]}, {"info": "i"})


# ---- construction ----------------------------------------------------------------------------------------------


def test_get_tensordict_wraps_lists_per_row_and_settings_per_batch():
    td = tu.get_tensordict(
        {"obs": torch.ones(4, 2), "source": ["gsm8k"] * 4, "scores": [[], [0.5, 0.8], [0.9], [1.0]]},
        non_tensor_dict={"name": "run", "kwargs": {"top_p": 1.0}},
    )
    assert td.batch_size == torch.Size([4])
    assert isinstance(td.get("source"), NonTensorStack) and isinstance(td.get("name"), NonTensorData)
    assert td[0]["source"] == "gsm8k" and td[0:2]["source"] == ["gsm8k", "gsm8k"]
    assert list(td["scores"][1]) == [0.5, 0.8]  # inner lists stay whole rows
    assert td["name"] == "run" and td["kwargs"] == {"top_p": 1.0}


def test_get_tensordict_keeps_nested_dicts_and_numpy_rows():
    prompts = [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}, {"role": "assistant"}]]
    images = [[np.zeros((3, 4, 4), np.uint8)], [np.ones((3, 2, 2), np.uint8), np.ones((3, 1, 1), np.uint8)]]
    td = tu.get_tensordict({"ids": _jagged([1, 2], [3]), "prompt": prompts, "images": images})
    assert dict(td["prompt"][1][0]) == {"role": "user", "content": "q2"}
    assert np.array_equal(td[1]["images"][0], np.ones((3, 2, 2)))
    assert td[0]["ids"].tolist() == [1, 2]


def test_get_tensordict_without_rows_has_no_batch_dim():
    td = tu.get_tensordict({}, non_tensor_dict={"info": "x"})
    assert td.batch_size == torch.Size([]) and len(td) == 0
    assert len(tu.get_tensordict({"labels": ["a", "b", "c"]})) == 3


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_get_tensordict_validates_its_input():
    with pytest.raises(AssertionError, match="'b' has 2 rows but 'a' has 3"):
        tu.get_tensordict({"a": torch.zeros(3), "b": ["x", "y"]})
    with pytest.raises(ValueError, match="list holding tensors"):
        tu.get_tensordict({"a": [torch.zeros(2)]})
    with pytest.raises(ValueError, match="layout=torch.jagged"):
        tu.get_tensordict({"a": torch.nested.as_nested_tensor([torch.zeros(2), torch.zeros(3)])})
    with pytest.raises(ValueError, match="in both tensor_dict and non_tensor_dict"):
        tu.get_tensordict({"a": torch.zeros(2)}, {"a": 1})


def test_list_of_dict_to_tensordict_nests_tensors_and_stacks_objects():
    rows = [
        {"ids": torch.tensor([1, 2, 3]), "score": torch.tensor(1.0), "tag": "x"},
        {"ids": torch.tensor([4, 5, 6]), "score": torch.tensor(0.0), "tag": "y"},
    ]
    td = tu.list_of_dict_to_tensordict(rows)
    # equal lengths still give a nested tensor, so readers can rely on offsets(): [0, 3, 6]
    assert td["ids"].is_nested and td["ids"].offsets().tolist() == [0, 3, 6]
    assert td["score"].tolist() == [1.0, 0.0] and td["tag"] == ["x", "y"]


# ---- non-tensor wrappers and key access ------------------------------------------------------------------------


def test_assign_non_tensor_routes_each_value_by_type():
    td = tu.get_tensordict({"obs": torch.zeros(3, 4)})
    tu.assign_non_tensor(
        td,
        note="exp",
        turns=[[], [0.5], [0.9]],
        info=[{"acc": 1.0}, {"acc": 0.0}, {"acc": 1.0}],
        wrapped=NonTensorData(0.3),
        stack=NonTensorStack.from_list([NonTensorData(1.0), NonTensorData(2.0), NonTensorData(3.0)]),
    )
    assert td["note"] == "exp" and td["wrapped"] == 0.3
    assert list(td["turns"][1]) == [0.5] and dict(td["info"][0]) == {"acc": 1.0}
    assert td["stack"] == [1.0, 2.0, 3.0]


def test_assign_non_tensor_checks_the_row_count():
    td = tu.get_tensordict({"obs": torch.zeros(3, 4)})
    with pytest.raises(RuntimeError):
        tu.assign_non_tensor(td, stack=NonTensorStack.from_list([NonTensorData(1.0), NonTensorData(2.0)]))
    with pytest.raises(RuntimeError, match="'rows' has 2 rows but the TensorDict has batch_size"):
        tu.assign_non_tensor_stack(td, "rows", ["a", "b"])
    with pytest.raises(AssertionError, match="expected a TensorDict"):
        tu.assign_non_tensor_data({"a": 1}, "k", 1)


def test_unwrap_and_get_non_tensor_data():
    td = tu.get_tensordict({"obs": torch.zeros(2)}, {"cfg": {"lr": 0.1}})
    assert tu.unwrap_non_tensor_data(NonTensorData("hi")) == "hi"
    assert tu.unwrap_non_tensor_data(42) == 42
    assert tu.get_non_tensor_data(td, "cfg", None) == {"lr": 0.1}
    assert tu.get_non_tensor_data(td, "missing", "dflt") == "dflt"


def test_get_and_pop_return_native_values():
    obs = torch.randn(3, 2)
    td = tu.get_tensordict({"obs": obs, "labels": ["a", ["b"], []]}, {"2": 2})
    assert tu.get(td, "2") == 2 and tu.get(td, "labels") == ["a", ["b"], []]
    assert torch.equal(tu.get(td, "obs"), obs) and tu.get(td, "3", default=3) == 3
    assert tu.pop(td, "labels") == ["a", ["b"], []] and "labels" not in td.keys()
    assert tu.pop(td, "labels", default="gone") == "gone"


def test_get_keys_and_pop_keys():
    obs, act = torch.randn(3, 2), torch.randn(3, 1)
    td = tu.get_tensordict({"obs": obs, "act": act, "labels": ["a", "b", "c"]}, {"2": 2, "1": 1})
    sub = tu.get_keys(td, ["obs", "2"])
    assert set(sub.keys()) == {"obs", "2"} and sub.batch_size[0] == 3 and sub["2"] == 2
    with pytest.raises(KeyError, match="key '3' not in tensordict"):
        tu.get_keys(td, ["obs", "3"])
    popped = tu.pop_keys(td, ["obs", "2", "labels"])
    assert set(popped.keys()) == {"obs", "2", "labels"} and torch.equal(popped["obs"], obs)
    assert set(td.keys()) == {"act", "1"}
    with pytest.raises(KeyError):
        tu.pop_keys(td, ["act", "obs"])  # obs is gone; act must stay because the check runs first
    assert "act" in td.keys()


# ---- nested tensors --------------------------------------------------------------------------------------------


def test_nested_tensor_from_tensor_list_defaults_to_the_last_dim():
    rows = [torch.arange(2).expand(4, 2), torch.arange(5).expand(4, 5)]
    nt = tu.nested_tensor_from_tensor_list(rows)
    # rows (4, 2) and (4, 5): ragged along dim 2 of the (B, 4, j) result; values (4, 2 + 5) = (4, 7).
    assert nt._ragged_idx == 2 and nt.values().shape == torch.Size([4, 7])
    assert [r.shape for r in tu.unbind_nested(nt)] == [torch.Size([4, 2]), torch.Size([4, 5])]
    first_dim = tu.nested_tensor_from_tensor_list([torch.zeros(5, 3), torch.zeros(2, 3)], ragged_idx=1)
    assert first_dim._ragged_idx == 1 and first_dim.values().shape == torch.Size([7, 3])
    with pytest.raises(ValueError, match=r"ragged_idx must be in \[1, 2\]"):
        tu.nested_tensor_from_tensor_list(rows, ragged_idx=3)


def test_concat_nested_tensors_for_2d_3d_and_4d_rows():
    assert _rows(tu.concat_nested_tensors([_jagged([1, 2], [3]), _jagged([4], [5, 6, 7])])) == [
        [1, 2],
        [3],
        [4],
        [5, 6, 7],
    ]
    for shape in ((4,), (2, 3)):
        parts = [torch.randint(0, 9, (*shape, n)) for n in (4, 5, 3, 6)]
        left = torch.nested.as_nested_tensor(parts[:2], layout=torch.jagged)
        right = torch.nested.as_nested_tensor(parts[2:], layout=torch.jagged)
        joined = tu.concat_nested_tensors([left, right])
        assert joined.shape[0] == 4
        assert all(torch.equal(a, b) for a, b in zip(joined.unbind(0), parts))


def test_maybe_fix_3d_position_ids_restores_ragged_idx():
    pos = tu.nested_tensor_from_tensor_list([torch.arange(2).expand(4, 2), torch.arange(3).expand(4, 3)])
    pos._ragged_idx = 1  # what a pickle round trip can leave behind
    td = tu.get_tensordict({"position_ids": pos})
    tu.maybe_fix_3d_position_ids(td)
    assert td["position_ids"]._ragged_idx == 2


# ---- row operations --------------------------------------------------------------------------------------------


def test_index_select_handles_tensors_nested_tensors_and_wrappers():
    td = tu.get_tensordict(
        {"ids": _jagged([1], [2, 2], [3, 3, 3], [4]), "dense": torch.arange(4), "labels": list("abcd")}, {"g": "4"}
    )
    for index in (torch.tensor([1, 3]), [1, 3], np.array([False, True, False, True])):
        picked = tu.index_select_tensor_dict(td, index)
        assert picked.batch_size == torch.Size([2]) and all(type(d) is int for d in picked.batch_size)
        assert _rows(picked["ids"]) == [[2, 2], [4]]
        assert picked["dense"].tolist() == [1, 3] and picked["labels"] == ["b", "d"] and picked["g"] == "4"
    assert tu.index_select_tensor_dict(None, [0]) is None


def test_index_select_keeps_3d_nested_layouts():
    rows = [torch.arange(2).expand(4, 2), torch.arange(5).expand(4, 5), (torch.arange(5) + 10).expand(4, 5)]
    pos = tu.nested_tensor_from_tensor_list(rows)
    picked = tu.index_select_tensor_dict(tu.get_tensordict({"position_ids": pos}), torch.tensor([1, 2]))
    # two rows of (4, 5) -> values (4, 10), still ragged along dim 2
    assert picked["position_ids"]._ragged_idx == 2 and picked["position_ids"].values().shape == torch.Size([4, 10])
    expected = tu.nested_tensor_from_tensor_list(rows[1:], ragged_idx=2)
    tu.assert_tensordict_eq(picked, tu.get_tensordict({"position_ids": expected}))
    pos._ragged_idx = 1  # a broken layout is repaired before slicing
    picked = tu.index_select_tensor_dict(tu.get_tensordict({"position_ids": pos}), torch.tensor([1, 2]))
    assert picked["position_ids"]._ragged_idx == 2
    rows = [torch.randn(5, 8), torch.randn(8, 8), torch.randn(3, 8)]
    first_dim = tu.nested_tensor_from_tensor_list(rows, ragged_idx=1)
    picked = tu.index_select_tensor_dict(tu.get_tensordict({"t": first_dim}), [2, 0])
    assert picked["t"]._ragged_idx == 1 and torch.equal(picked["t"].unbind(0)[0], rows[2])


def test_chunk_tensordict_splits_every_kind_of_value():
    images = torch.stack([NonTensorData({"px": torch.full((2,), float(i))}) for i in range(3)] + [NonTensorData(None)])
    pos = tu.nested_tensor_from_tensor_list([torch.arange(n).expand(4, n) for n in (4, 5, 6, 7)])
    td = tu.get_tensordict({"ids": _jagged([0], [1, 1], [2], [3, 3]), "position_ids": pos, "images": images})
    first, second = tu.chunk_tensordict(td, chunks=2)
    assert _rows(first["ids"]) == [[0], [1, 1]] and _rows(second["ids"]) == [[2], [3, 3]]
    assert second["position_ids"]._ragged_idx == 2
    assert [r.shape[1] for r in tu.unbind_nested(second["position_ids"])] == [6, 7]
    assert second["images"][0]["px"].tolist() == [2.0, 2.0] and second["images"][1] is None
    with pytest.raises(AssertionError, match="cannot split 4 rows into 3 equal chunks"):
        tu.chunk_tensordict(td, 3)


def test_concat_tensordict_joins_rows_keeps_first_settings_and_leaves_inputs_alone():
    one = tu.get_tensordict({"ids": _jagged([1], [2, 2]), "labels": ["a", "b"]}, {"temp": 1.0})
    two = tu.get_tensordict({"ids": _jagged([3, 3, 3], [4]), "labels": ["c", "d"]}, {"temp": 2.0})
    one_copy, two_copy = copy.deepcopy(one), copy.deepcopy(two)
    out = tu.concat_tensordict([one, two])
    assert out["ids"].values().tolist() == [1, 2, 2, 3, 3, 3, 4]
    assert out["labels"] == ["a", "b", "c", "d"] and out["temp"] == 1.0
    tu.assert_tensordict_eq(one, one_copy)
    tu.assert_tensordict_eq(two, two_copy)
    only_rows = tu.concat_tensordict([tu.get_tensordict({"labels": ["a"]}), tu.get_tensordict({"labels": ["b"]})])
    assert only_rows.batch_size[0] == 2
    only_settings = tu.concat_tensordict([tu.get_tensordict({}, {"temp": 1.0}), tu.get_tensordict({}, {"temp": 2.0})])
    assert len(only_settings.batch_size) == 0 and only_settings["temp"] == 1.0
    with pytest.raises(AssertionError, match="keys of item 1"):
        tu.concat_tensordict([one, tu.get_tensordict({"labels": ["x", "y"]})])


def test_union_tensor_dict_checks_tensors_stacks_and_settings():
    obs = torch.randn(4, 2)
    left = tu.get_tensordict({"obs": obs, "src": ["g"] * 4})
    right = tu.get_tensordict({"obs": obs, "rew": torch.zeros(4), "src": ["g"] * 4})
    tu.union_tensor_dict(left, right)
    assert set(left.keys()) == {"obs", "src", "rew"}
    with pytest.raises(AssertionError, match="`obs` in tensor_dict1"):
        tu.union_tensor_dict(left, tu.get_tensordict({"obs": obs.clone() + 1}))
    tu.assign_non_tensor(left, top_p=0.8)
    tu.union_tensor_dict(left, right)  # keys only on one side are fine
    tu.assign_non_tensor(right, top_p=0.9)
    with pytest.raises(AssertionError, match="`top_p`"):
        tu.union_tensor_dict(left, right)
    left.pop("top_p"), right.pop("top_p")
    right["src"][0] = "math"
    with pytest.raises(AssertionError, match="`src`"):
        tu.union_tensor_dict(left, right)


@pytest.mark.parametrize(("divisor", "pad", "rows"), [(2, 1, "abca"), (3, 0, "abc"), (7, 4, "abcabca")])
def test_pad_to_divisor_cycles_rows_and_unpad_restores(divisor, pad, rows):
    # 3 rows: divisor 2 -> 4 rows (+1), divisor 3 -> unchanged, divisor 7 -> 7 rows (+4, cycling a b c a)
    padded, pad_size = tu.pad_to_divisor(_abc(), size_divisor=divisor)
    assert pad_size == pad and padded["labels"] == list(rows) and padded["info"] == "i"
    assert padded["obs"][:, 0].tolist() == [{"a": 1, "b": 3, "c": 5}[r] for r in rows]
    restored = tu.unpad(padded, pad_size)
    assert restored["labels"] == ["a", "b", "c"] and restored["obs"].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_pad_to_divisor_pads_nested_tensors_too():
    padded, pad_size = tu.pad_to_divisor(tu.get_tensordict({"ids": _jagged([1], [2, 2], [3])}), 4)
    assert pad_size == 1 and _rows(padded["ids"]) == [[1], [2, 2], [3], [1]]


def test_make_iterator_in_order_and_seeded_shuffle():
    td = tu.get_tensordict(
        {"obs": torch.arange(1, 7), "labels": list("abcdef"), "ids": _jagged([0], [1], [2], [3], [4], [5])},
        {"kw": {"top_p": 1.0}},
    )
    batches = list(tu.make_iterator(td, mini_batch_size=2, epochs=2, seed=0, dataloader_kwargs={"shuffle": False}))
    # 6 rows / 2 = 3 mini-batches per epoch, two epochs, in order
    assert [b["obs"].tolist() for b in batches] == [[1, 2], [3, 4], [5, 6]] * 2
    expected = tu.index_select_tensor_dict(td, [2, 3])
    tu.assert_tensordict_eq(batches[1], expected)
    kwargs = {"shuffle": True}
    run1 = [b["obs"].tolist() for b in tu.make_iterator(td, 3, 1, seed=1, dataloader_kwargs=kwargs)]
    run2 = [b["obs"].tolist() for b in tu.make_iterator(td, 3, 1, seed=1, dataloader_kwargs=kwargs)]
    assert run1 == run2 and sorted(run1[0] + run1[1]) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(AssertionError, match="cannot cut 6 rows into mini-batches of 4"):
        tu.make_iterator(td, 4, 1)


def test_assert_tensordict_eq_spots_each_kind_of_difference():
    def build(ids=None):
        ids = _jagged([1, 2], [3], [4], [5], [6], [7]) if ids is None else ids
        return tu.get_tensordict({"obs": torch.arange(6), "src": list("abcdef"), "ids": ids}, {"kw": {"top_p": 1.0}})

    base = build()
    tu.assert_tensordict_eq(base, build())
    changed = copy.deepcopy(base)
    changed["obs"][0] += 1
    with pytest.raises(AssertionError, match="'obs' differs"):
        tu.assert_tensordict_eq(base, changed)
    changed = copy.deepcopy(base)
    changed["src"][0] = "math"
    with pytest.raises(AssertionError, match="'src' differs"):
        tu.assert_tensordict_eq(base, changed)
    changed = copy.deepcopy(base)
    changed["kw"]["top_p"] = 0.9
    with pytest.raises(AssertionError, match="'kw' differs"):
        tu.assert_tensordict_eq(base, changed)
    for other_ids in (_jagged([1, 2, 4], [3], [4], [5], [6], [7]), _jagged([3], [1, 2], [4], [5], [6], [7])):
        with pytest.raises(AssertionError, match="'ids' differs"):
            tu.assert_tensordict_eq(base, build(other_ids))
    with pytest.raises(AssertionError, match="key sets differ"):
        tu.assert_tensordict_eq(base, tu.get_tensordict({"obs": torch.arange(6)}))


def test_contiguous_makes_consolidate_safe_and_keeps_values():
    base = torch.randn(3, 4)
    td = tu.get_tensordict(
        {"a": base, "b": torch.randn(3, 4)[:, :-1], "c": _jagged([1.0], [2.0, 3.0], [4.0]), "nt": [{"px": base}] * 3},
        {"ntd": base.clone()},
    )
    out = tu.contiguous(copy.deepcopy(td))
    assert out is not td and out["b"].is_contiguous()
    tu.assert_tensordict_eq(out, td)
    out.consolidate()
    tu.assert_tensordict_eq(out, td)


# ---- shared helpers --------------------------------------------------------------------------------------------


def test_deep_equal_semantics():
    assert tu.deep_equal(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert not tu.deep_equal(np.array([1.0, np.nan]), np.array([np.nan, 1.0]))
    assert tu.deep_equal({"a": [1, float("nan")]}, {"a": [1, float("nan")]})
    assert not tu.deep_equal({"a": 1}, {"a": 1, "b": 2})
    assert tu.deep_equal(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, float("nan")]))
    assert not tu.deep_equal(torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))  # dtypes differ
    assert not tu.deep_equal(np.array([1, 2]), [1, 2])
    assert not tu.deep_equal(float("nan"), "nan")


def test_as_index_array_and_rows_to_object_array():
    assert tu.as_index_array([True, False, True], 3).tolist() == [0, 2]
    assert tu.as_index_array(torch.tensor([2, 0]), 3).tolist() == [2, 0]
    assert tu.as_index_array(range(2), 3).tolist() == [0, 1]
    with pytest.raises(IndexError, match="1-D integer array"):
        tu.as_index_array(np.array([[0]]), 3)
    with pytest.raises(TypeError):
        tu.as_index_array("0", 3)
    ragged = tu.rows_to_object_array([[1], [2, 3]])
    assert ragged.shape == (2,) and ragged[1] == [2, 3]
    stacked = tu.rows_to_object_array([np.array(["a", "b"], dtype=object), np.array(["c", "d"], dtype=object)])
    assert stacked.shape == (2, 2) and stacked.dtype == object
    assert tu.rows_to_object_array([np.int32(1), np.int32(2)]).dtype == np.int32
