"""Datasets that feed the trainers (resolved on first use: the ``data`` config node imports without torch)."""

from __future__ import annotations

from verl.utils.dataset.config import DataConfig

_LAZY = ("RLHFDataset", "collate_fn", "get_dataset_class")


def __getattr__(name: str):
    if name in _LAZY:
        from verl.utils.dataset import rl_dataset

        return getattr(rl_dataset, name)
    raise AttributeError(f"module 'verl.utils.dataset' has no attribute {name!r}")


__all__ = ["DataConfig", *_LAZY]
