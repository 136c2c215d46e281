"""DAPO dynamic sampling and PF-PPO resampling on DataProto batches (verl/trainer/ppo/batch_selection.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl.protocol import DataProto
from verl.trainer.ppo.batch_selection import GroupFilter, compute_pf_ppo_reweight_data, varied_group_indices


def _scored(uids: list[str], scores: list[float], acc: list[float] | None = None) -> DataProto:
    token_scores = torch.zeros(len(uids), 3)
    token_scores[:, -1] = torch.tensor(scores)
    non_tensors = {"uid": np.array(uids, dtype=object), "row": np.arange(len(uids))}
    if acc is not None:
        non_tensors["acc"] = np.array(acc, dtype=object)
    return DataProto.from_dict(
        tensors={"token_level_scores": token_scores}, non_tensors=non_tensors, meta_info={"global_token_num": uids}
    )


def test_varied_groups_are_kept_and_singletons_too():
    # a varies (1, 0), b is constant (1, 1), c is alone -> rows 0, 1, 4 and 2 groups
    rows, groups = varied_group_indices(np.array(["a", "a", "b", "b", "c"]), np.array([1.0, 0.0, 1.0, 1.0, 0.0]))
    assert rows == [0, 1, 4] and groups == 2


def test_group_filter_accumulates_until_a_full_batch_then_truncates():
    f = GroupFilter("seq_reward", train_batch_size=2, n=2, max_num_gen_batches=0)
    # first generation batch: only group a varies -> 1 prompt, not enough
    assert f.add(_scored(["a", "a", "b", "b"], [1, 0, 1, 1])) is None
    # second: c and d vary -> 3 prompts kept in all, truncated to 2 prompts x 2 responses = rows of a and c
    out = f.add(_scored(["c", "c", "d", "d"], [0, 1, 0.5, 0]))
    assert out is not None and list(out.non_tensor_batch["uid"]) == ["a", "a", "c", "c"]
    assert f.num_gen_batches == 2
    f.reset()
    assert f.num_gen_batches == 0


def test_group_filter_reads_a_reward_extra_column_and_stops_after_max_batches():
    f = GroupFilter("acc", train_batch_size=2, n=2, max_num_gen_batches=2)
    batch = _scored(["a", "a", "b", "b"], [1, 0, 1, 0], acc=[1, 1, 0, 0])  # acc never varies within a group
    assert f.add(batch) is None
    with pytest.raises(RuntimeError, match="max_num_gen_batches=2"):
        f.add(batch)


def test_group_filter_names_an_unknown_metric():
    with pytest.raises(ValueError, match="algorithm.filter_groups.metric='nope'"):
        GroupFilter("nope", 2, 2, 0).add(_scored(["a", "a"], [1, 0]))


def test_pf_ppo_resampling_follows_the_rows_and_per_row_meta():
    torch.manual_seed(0)
    batch = _scored(["a", "b", "c", "d"], [0.0, 0.0, 0.0, 3.0])
    out = compute_pf_ppo_reweight_data(batch, "pow", 2.0)  # weights 1e-8, 1e-8, 1e-8, 9: row 3 every time
    assert len(out) == 4
    assert list(out.non_tensor_batch["row"]) == [3, 3, 3, 3]
    assert out.meta_info["global_token_num"] == ["d", "d", "d", "d"]
    assert batch.meta_info["global_token_num"] == ["a", "b", "c", "d"]  # the input batch is left as it was
    torch.testing.assert_close(out.batch["token_level_scores"][:, -1], torch.full((4,), 3.0))
