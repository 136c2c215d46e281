"""Prompt dataset for RL training, read from verl-format parquet files.

Each parquet row is one prompt (schema written by ``examples/data_preprocess/*.py``)::

    data_source   str             selects the reward function (data.reward_fn_key)
    prompt        list[dict]      chat messages [{"role": "user", "content": ...}] (data.prompt_key)
    ability       str
    reward_model  dict            {"style": "rule", "ground_truth": ...}
    extra_info    dict            {"split", "index", ...; optional tools_kwargs, interaction_kwargs}

``__getitem__`` applies the chat template and tokenizes (verl <= 0.6 behaviour: the synchronous rollouts
consume ``input_ids``). An item holds::

    input_ids, attention_mask, position_ids   (max_prompt_length,) tensors, left padded
    raw_prompt_ids                            list[int], the un-padded prompt tokens
    raw_prompt                                the messages (data.return_raw_chat)
    full_prompts                              the templated prompt text (data.return_full_prompt)
    index, tools_kwargs, interaction_kwargs   from extra_info
    every other parquet column, unchanged

Files are read with pyarrow (no Hugging Face ``datasets`` cache), and nested columns come back as plain Python
lists and dicts, which chat templates need. Multi-modal inputs (images, videos) are not supported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from verl.utils.config import as_config
from verl.utils.dataset.config import DataConfig

__all__ = ["RLHFDataset", "collate_fn", "get_dataset_class"]

logger = logging.getLogger(__name__)

_FILES_KEY = "data.train_files / data.val_files"


def _to_container(value: Any) -> dict[str, Any]:
    """A plain dict from a dict or an OmegaConf node (chat templates want plain values)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


def _to_plain(value: Any) -> Any:
    """numpy arrays (as pandas returns nested parquet columns) -> lists, recursively; dicts keep their keys."""
    if isinstance(value, np.ndarray):
        return [_to_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def read_parquet_rows(path: str, prompt_key: str) -> list[dict[str, Any]]:
    """Read one parquet file into row dicts, checking that it exists, parses and has the prompt column.

    Raises:
        ValueError: a remote URL, an unreadable file or a missing ``prompt_key`` column (the message names the
            file, the column and the columns present).
        FileNotFoundError: the file does not exist.
    """
    import pyarrow.parquet as pq

    from verl.utils.fs import local_path

    path = local_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Data file {path!r} not found; check {_FILES_KEY}.")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for truncated or non-parquet files
        raise ValueError(f"Could not read {path!r} as parquet ({type(exc).__name__}: {exc}).") from exc
    columns = [name for name in table.column_names if not name.startswith("__index_level_")]
    if prompt_key not in columns:
        raise ValueError(
            f"Column {prompt_key!r} (data.prompt_key) not found in {path!r}; columns present: {columns}. "
            "Set data.prompt_key to the column that holds the chat messages."
        )
    return table.select(columns).to_pylist()


def _refuse_multi_modal(rows: list[dict[str, Any]], path: str, columns: Sequence[str]) -> None:
    """Stop at load time (before Ray starts) on a row with images or videos: multi-modal prompts are not supported.

    Raises:
        ValueError: naming the column (data.image_key / data.video_key), the first such row and the file.
    """
    for column in columns:
        for index, row in enumerate(rows):
            value = row.get(column)
            if value is not None and (not hasattr(value, "__len__") or len(value) > 0):
                raise ValueError(
                    f"Row {index} of {path!r} has a non-empty {column!r} column (data.image_key / data.video_key): "
                    "multi-modal prompts are not supported. Drop the column or empty it for text-only training."
                )


class RLHFDataset(Dataset):
    """Chat prompts from parquet files, tokenized and left padded to ``data.max_prompt_length``.

    Args:
        data_files: one parquet path or a list of them (``data.train_files`` / ``data.val_files``).
        tokenizer: a Hugging Face tokenizer with a chat template and a pad token.
        config: the ``data`` config node (keys: ``prompt_key``, ``max_prompt_length``, ``truncation``,
            ``filter_overlong_prompts``, ``apply_chat_template_kwargs``, ``return_raw_chat``,
            ``return_full_prompt``, ``return_raw_input_ids``, ``shuffle``, ``seed``, ``need_tools_kwargs``).
        processor: multi-modal processor; only text prompts are supported, so rows with images or videos fail.
        max_samples: keep at most this many rows (random subset when ``shuffle``, seeded by ``seed``); -1 = all.
    """

    def __init__(
        self,
        data_files: str | Sequence[str],
        tokenizer: Any,
        config: Any,
        processor: Any = None,
        max_samples: int = -1,
    ) -> None:
        if isinstance(data_files, (str, os.PathLike)):
            data_files = [data_files]
        self.data_files = [os.fspath(f) for f in data_files]
        self.tokenizer = tokenizer
        self.processor = processor
        # A partial mapping (tests, recipes) gets the data node's defaults; the trainer hands the typed node.
        cfg = as_config(config, DataConfig)
        self.config = cfg
        self.max_samples = max_samples
        self.prompt_key = cfg.prompt_key
        self.image_key = cfg.image_key
        self.video_key = cfg.video_key
        self.max_prompt_length = cfg.max_prompt_length
        self.truncation = cfg.truncation
        self.filter_overlong_prompts = cfg.filter_overlong_prompts
        self.apply_chat_template_kwargs = _to_container(cfg.apply_chat_template_kwargs)
        self.return_raw_chat = cfg.return_raw_chat
        self.return_full_prompt = cfg.return_full_prompt
        self.return_raw_input_ids = cfg.return_raw_input_ids
        self.need_tools_kwargs = cfg.need_tools_kwargs
        self.shuffle = cfg.shuffle
        self.seed = 0 if cfg.seed is None else cfg.seed  # the subset drawn with max_samples (null data.seed: 0)
        self._load()

    # ---- loading -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        rows, sources = [], []
        for path in self.data_files:
            file_rows = read_parquet_rows(path, self.prompt_key)
            _refuse_multi_modal(file_rows, path, (self.image_key, self.video_key))
            rows.extend(file_rows)
            sources.extend([path] * len(file_rows))
        if 0 < self.max_samples < len(rows):
            if self.shuffle:
                keep = np.random.default_rng(self.seed).choice(len(rows), size=self.max_samples, replace=False)
            else:
                keep = np.arange(self.max_samples)
            rows, sources = [rows[i] for i in keep], [sources[i] for i in keep]
        self.rows, self.row_files = rows, sources
        print(f"RLHFDataset: {len(self.rows)} prompts from {len(self.data_files)} file(s)")
        if self.filter_overlong_prompts:
            self._filter_overlong()

    def _filter_overlong(self) -> None:
        lengths = [len(self._encode(self._prompt_text(self._messages(row)))) for row in self.rows]
        keep = [i for i, n in enumerate(lengths) if n <= self.max_prompt_length]
        dropped = len(self.rows) - len(keep)
        message = (
            f"filter_overlong_prompts: dropped {dropped} of {len(self.rows)} prompts longer than "
            f"data.max_prompt_length={self.max_prompt_length} tokens"
        )
        print(message)
        self.rows = [self.rows[i] for i in keep]
        self.row_files = [self.row_files[i] for i in keep]

    def resume_dataset_state(self) -> None:
        """Re-read the files (used after a checkpoint resume when the dataset was not serialised)."""
        self._load()

    # ---- per item ------------------------------------------------------------------------------------------

    def _messages(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        prompt = _to_plain(row[self.prompt_key])
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return prompt

    def _prompt_text(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **self.apply_chat_template_kwargs
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _check_length(self, index: int, length: int) -> None:
        if length > self.max_prompt_length and self.truncation == "error":
            raise ValueError(
                f"Row {index} (from {self.row_files[index]!r}) has a {length}-token prompt, longer than "
                f"data.max_prompt_length={self.max_prompt_length}. Raise data.max_prompt_length, set "
                "data.filter_overlong_prompts=True, or set data.truncation to left, right or middle."
            )

    def _tokenize(self, index: int, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        from verl.utils.torch_functional import postprocess_data

        ids = self._encode(text)
        self._check_length(index, len(ids))
        input_ids = torch.tensor([ids], dtype=torch.long).reshape(1, -1)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, attention_mask = postprocess_data(
            input_ids,
            torch.ones_like(input_ids),
            max_length=self.max_prompt_length,
            pad_token_id=pad_id,
            left_pad=True,
            truncation=self.truncation,
        )
        return input_ids[0], attention_mask[0]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from verl.utils.model import compute_position_id_with_mask

        row = {key: _to_plain(value) for key, value in self.rows[index].items()}  # fresh containers
        messages = self._messages(row)
        row.pop(self.prompt_key)
        if self.processor is not None and (row.get(self.image_key) or row.get(self.video_key)):
            raise NotImplementedError(
                f"Row {index} of {self.row_files[index]!r} has images/videos; multi-modal prompts are not supported."
            )
        text = self._prompt_text(messages)
        input_ids, attention_mask = self._tokenize(index, text)
        row["input_ids"] = input_ids
        row["attention_mask"] = attention_mask
        row["position_ids"] = compute_position_id_with_mask(attention_mask)
        row["raw_prompt_ids"] = input_ids[attention_mask.bool()].tolist()
        if self.return_raw_input_ids:
            row["raw_input_ids"] = list(row["raw_prompt_ids"])
        if self.return_raw_chat:
            row["raw_prompt"] = messages
        if self.return_full_prompt:
            row["full_prompts"] = text
        extra_info = row.get("extra_info") or {}
        row["index"] = extra_info.get("index", 0)
        row["tools_kwargs"] = extra_info.get("tools_kwargs") or {}
        row["interaction_kwargs"] = extra_info.get("interaction_kwargs") or {}
        if extra_info.get("need_tools_kwargs", self.need_tools_kwargs) and not row["tools_kwargs"]:
            logger.warning("row %d: tools_kwargs is empty although need_tools_kwargs is set", index)
        return row


def collate_fn(data_list: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch dataset items: tensors are stacked on dim 0, everything else becomes a 1-D object array.

    Lists and dicts stay one object per row (``np.array`` would turn equal-length lists into a 2-D array).
    A key missing from some rows is filled with None.

    Example:
        >>> batch = collate_fn([{"x": torch.zeros(2), "meta": {"a": 1}}, {"x": torch.ones(2), "meta": {"a": 2}}])
        >>> batch["x"].shape, batch["meta"].shape, batch["meta"][1]
        (torch.Size([2, 2]), (2,), {'a': 2})
    """
    keys: list[str] = []
    for item in data_list:
        keys.extend(key for key in item if key not in keys)
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item.get(key) for item in data_list]
        if all(isinstance(value, torch.Tensor) for value in values):
            batch[key] = torch.stack(values, dim=0)
        else:
            column = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                column[i] = value
            batch[key] = column
    return batch


def get_dataset_class(data_config: Any) -> type:
    """``data.custom_cls.{path,name}`` when set (must subclass ``torch.utils.data.Dataset``), else RLHFDataset."""
    custom = as_config(data_config, DataConfig).custom_cls
    path = custom.path
    if not path:
        return RLHFDataset
    from verl.utils.import_utils import load_extern_object

    name = custom.name
    if not name:
        raise ValueError(f"data.custom_cls.path={path!r} is set but data.custom_cls.name is empty.")
    cls = load_extern_object(path, name)
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise TypeError(f"data.custom_cls {name!r} from {path!r} must be a torch.utils.data.Dataset subclass.")
    return cls
