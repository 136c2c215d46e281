"""Which trajectories a step trains on: DAPO dynamic sampling and PF-PPO resampling, on ``DataProto`` batches.

The maths behind them is pure and lives elsewhere (``core_algos.pf_ppo_resample_indices``); these functions only
pick rows of a batch and carry every column along, so the controller's ``fit`` stays a list of stages.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from verl.protocol import DataProto
from verl.trainer.config.algorithm import PFPPOConfig
from verl.trainer.ppo import core_algos

__all__ = ["GroupFilter", "compute_pf_ppo_reweight_data", "varied_group_indices"]


def varied_group_indices(uids: np.ndarray, values: np.ndarray) -> tuple[list[int], int]:
    """Rows of the groups (same uid) whose metric is not constant, as DAPO's dynamic sampling keeps them.

    A group is kept when the population std of its values is > 0, or when it has a single member.

    Example: uids [a, a, b, b, c], values [1, 0, 1, 1, 0] -> rows [0, 1, 4] (a varies, b does not, c is alone), 2
    groups kept.

    Returns:
        ``(row indices in batch order, number of kept groups)``.
    """
    rows: dict = defaultdict(list)
    for i, uid in enumerate(uids):
        rows[uid].append(i)
    kept = {uid for uid, idx in rows.items() if len(idx) == 1 or np.std(values[idx].astype(np.float64)) > 0}
    return [i for i, uid in enumerate(uids) if uid in kept], len(kept)


class GroupFilter:
    """DAPO dynamic sampling (``algorithm.filter_groups``): accumulate prompt groups with a varied metric until a
    whole training batch of prompts is collected.

    Args:
        metric: ``seq_final_reward`` (row sum of ``token_level_rewards``), ``seq_reward`` (row sum of
            ``token_level_scores``), or the name of a per-row non-tensor column (e.g. ``acc`` or ``score`` from the
            reward function's extra info).
        train_batch_size: prompts per training step (``data.train_batch_size``).
        n: responses per prompt.
        max_num_gen_batches: generation batches allowed per step; <= 0 means unlimited.
    """

    def __init__(self, metric: str, train_batch_size: int, n: int, max_num_gen_batches: int):
        self.metric, self.train_batch_size, self.n = metric, train_batch_size, n
        self.max_num_gen_batches = max_num_gen_batches
        self._kept: list[DataProto] = []
        self._prompts = 0
        self.num_gen_batches = 0

    def _values(self, batch: DataProto) -> np.ndarray:
        if self.metric == "seq_final_reward":  # groups are filtered before any KL penalty, so rewards == scores
            key = "token_level_rewards" if "token_level_rewards" in batch.batch.keys() else "token_level_scores"
            return batch.batch[key].sum(-1).numpy()
        if self.metric == "seq_reward":
            return batch.batch["token_level_scores"].sum(-1).numpy()
        if self.metric not in batch.non_tensor_batch:
            raise ValueError(
                f"algorithm.filter_groups.metric={self.metric!r} is neither seq_reward, seq_final_reward nor a column "
                f"the reward function returned (columns: {sorted(batch.non_tensor_batch)})"
            )
        return np.asarray(batch.non_tensor_batch[self.metric], dtype=np.float64)

    def add(self, batch: DataProto) -> DataProto | None:
        """Keep the varied groups of one scored generation batch; returns the training batch once complete.

        Raises:
            RuntimeError: when ``max_num_gen_batches`` batches did not yield ``train_batch_size`` varied prompts.
        """
        self.num_gen_batches += 1
        rows, groups = varied_group_indices(batch.non_tensor_batch["uid"], self._values(batch))
        if rows:
            kept = batch.select_idxs(rows)
            # per-row meta lists describe the unfiltered batch; the trainer recomputes them for the final batch
            kept.meta_info = {k: v for k, v in batch.meta_info.items() if not _per_row(v, len(batch))}
            self._kept.append(kept)
        self._prompts += groups
        if self._prompts < self.train_batch_size:
            if self.max_num_gen_batches <= 0 or self.num_gen_batches < self.max_num_gen_batches:
                return None
            raise RuntimeError(
                f"algorithm.filter_groups: {self.num_gen_batches} generation batches (max_num_gen_batches="
                f"{self.max_num_gen_batches}) gave only {self._prompts} prompts whose {self.metric} varies, fewer than "
                f"data.train_batch_size={self.train_batch_size}; raise max_num_gen_batches (0 = unlimited) or "
                "data.gen_batch_size, or check that the reward is not constant"
            )
        full = DataProto.concat(self._kept)
        return full.slice(0, self.train_batch_size * self.n)

    def reset(self) -> None:
        """Start collecting the next step's batch."""
        self._kept, self._prompts, self.num_gen_batches = [], 0, 0


def compute_pf_ppo_reweight_data(
    data: DataProto,
    reweight_method: str = PFPPOConfig.reweight_method,
    weight_pow: float = PFPPOConfig.weight_pow,
) -> DataProto:
    """PF-PPO: resample the batch's rows with replacement, weighted by their scores (batch size unchanged).

    Scores are the row sums of ``token_level_scores``; every tensor, non-tensor column and per-row ``meta_info``
    list (e.g. ``global_token_num``) follows the drawn rows, so rows (and uids) can repeat.
    """
    scores = data.batch["token_level_scores"].sum(dim=-1)
    idx = core_algos.pf_ppo_resample_indices(scores, reweight_method, weight_pow)
    out = data.select_idxs(idx)
    out.meta_info = dict(data.meta_info)
    order = idx.tolist()
    for key, value in data.meta_info.items():
        if _per_row(value, len(data)):
            out.meta_info[key] = [value[i] for i in order]
    return out


def _per_row(value: object, rows: int) -> bool:
    return isinstance(value, list) and len(value) == rows
