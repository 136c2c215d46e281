"""A resumable training data loader.

The trainer checkpoints ``state_dict()`` as ``global_step_N/data.pt``; after a restart ``load_state_dict`` makes the
loader continue from the batch after the last one consumed, with the same shuffle order, so "4 steps straight" and
"2 steps + resume + 2 steps" see identical batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from verl.utils.dataset.config import DataConfig


class ResumableDataLoader:
    """Batches of a dataset, reshuffled per epoch from ``seed + epoch``, with a position that can be saved.

    Args:
        dataset: a map-style dataset.
        batch_size: rows per batch (prompts per step).
        collate_fn: turns a list of items into a batch dict.
        shuffle: reshuffle every epoch (deterministically) or keep file order (``data.shuffle``).
        seed: base seed of the shuffle (``data.seed``; null in the config means :attr:`DEFAULT_SEED`).
        drop_last: drop the final short batch (the trainer needs full batches).
        num_workers: DataLoader worker processes.
        sampler: optional user sampler; when given, its order is used as-is (no resume of its internal state).
    """

    DEFAULT_SEED = 1
    """The shuffle's seed when ``data.seed`` is null."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        collate_fn: Callable[[list], Any],
        shuffle: bool = DataConfig.shuffle,
        seed: int = DEFAULT_SEED,
        drop_last: bool = True,
        num_workers: int = 0,
        sampler=None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} rows but data.train_batch_size={batch_size}: not even one batch; "
                "lower data.train_batch_size or add rows"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.sampler = sampler
        self.epoch = 0
        self.batches_done = 0  # batches consumed in the current epoch

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> list[int]:
        if self.sampler is not None:
            return list(iter(self.sampler))
        if not self.shuffle:
            return list(range(len(self.dataset)))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=gen).tolist()

    def __iter__(self) -> Iterator[Any]:
        order = self._order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        remaining = batches[self.batches_done :]
        loader = DataLoader(
            self.dataset,
            batch_sampler=remaining,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
        )
        for batch in loader:
            self.batches_done += 1
            yield batch
        self.epoch += 1
        self.batches_done = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self.seed = int(state.get("seed", self.seed))
