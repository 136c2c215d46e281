"""Prompt loading, the append-only progress log, and the final parquet of ``main_generation_server``.

The progress log (``<output_path>.progress.jsonl``) makes a run resumable after any kill, SIGKILL included:

* line 1 is a header describing the run (input files, row count, model, sampling); a restart with a different
  header is refused instead of mixing two runs' answers;
* every other line is one finished row ``{"row": i, "status": "ok"|"failed", "responses": [...], ...}``, written
  with a single ``write`` + ``flush`` + ``fsync`` as soon as the row finishes;
* a torn last line (the process died mid-write) is dropped on load; for a row written twice the last line wins,
  so a failed row that succeeds on a later run replaces its failure.

At the end the rows are merged, in input order, into the input dataframe and written to ``data.output_path``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["RESULT_COLUMNS", "ProgressLog", "load_prompts", "write_output"]

RESULT_COLUMNS = (
    "responses",
    "status",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "response_tokens",
    "response_latency_s",
    "attempts",
)
"""Columns added to the input rows: the n response strings (``[]`` for a failed row), ``ok``/``failed``, the error
(None when ok), the prompt's tokens, the completion tokens of all n responses (the request's ``usage``), their
mean per response (``completion_tokens / n``: what ``main_eval`` repeats over the n responses), seconds from the
first try to the answer, and the tries used."""


def load_prompts(train_files: str | list[str], prompt_key: str) -> tuple[pd.DataFrame, list[list[dict]]]:
    """Read every parquet of ``data.train_files`` and the chat message list of each row.

    Returns:
        The concatenated dataframe (index 0..N-1) and one ``[{"role", "content"}, ...]`` list per row.

    Raises:
        ValueError: a missing file, an unreadable parquet, a missing ``prompt_key`` column or a row that is not a
            chat message list; each message names the file, key or row.
    """
    import pyarrow.parquet as pq

    files = [train_files] if isinstance(train_files, str) else list(train_files)
    if not files:
        raise ValueError("data.train_files is empty; give a parquet path or a list of them")
    frames = []
    for file in files:
        path = os.path.expanduser(str(file))
        if not os.path.isfile(path):
            raise ValueError(f"data.train_files: {path} does not exist")
        try:
            frame = pq.read_table(path).to_pandas()
        except Exception as e:  # pyarrow raises several types for a damaged or non-parquet file
            raise ValueError(
                f"data.train_files: {path} is not a readable parquet file ({type(e).__name__}: {e})"
            ) from e
        if prompt_key not in frame.columns:
            raise ValueError(
                f"data.prompt_key={prompt_key!r} is not a column of {path}; its columns are {list(frame.columns)}. "
                "Set data.prompt_key to the column holding the chat message lists"
            )
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    prompts = [_as_messages(value, i, prompt_key) for i, value in enumerate(df[prompt_key])]
    return df, prompts


def _as_messages(value: Any, row: int, prompt_key: str) -> list[dict]:
    """A parquet chat list (numpy array of dicts) as plain ``[{"role": str, "content": str}]``."""
    messages = list(value) if hasattr(value, "__len__") and not isinstance(value, (str, bytes, dict)) else None
    ok = bool(messages) and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    if not ok:
        raise ValueError(
            f"row {row} of column data.prompt_key={prompt_key!r} is not a chat message list "
            f"([{{'role': ..., 'content': ...}}, ...]); got {str(value)[:200]!r}"
        )
    return [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in m.items()} for m in messages]


class ProgressLog:
    """The append-only JSONL record of finished rows (see the module docstring).

    Args:
        path: the ``.progress.jsonl`` file.
        header: what identifies the run; must equal the stored header when the file exists.
        resume: read existing rows; False starts afresh (the old file is replaced).
    """

    def __init__(self, path: str, header: dict[str, Any], resume: bool = True) -> None:
        self.path = path
        self.rows: dict[int, dict[str, Any]] = {}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if resume and os.path.exists(path) and os.path.getsize(path) > 0:
            self._load(header)
        else:
            self._write_header(header)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the whole run)

    def _write_header(self, header: dict[str, Any]) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"header": header}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _load(self, header: dict[str, Any]) -> None:
        with open(path := self.path, encoding="utf-8") as f:
            *lines, _torn = f.read().split("\n")  # text after the last newline: a write cut short by a kill
        if not lines:  # killed before the header was complete: nothing was finished yet
            self._write_header(header)
            return
        good_bytes, stored = 0, None
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {i + 1} is not JSON; the progress log is damaged") from None
            good_bytes += len(line.encode("utf-8")) + 1
            if i == 0:
                stored = record.get("header")
            else:
                self.rows[int(record["row"])] = record
        if stored != json.loads(json.dumps(header)):
            raise ValueError(
                f"{path} belongs to a different run (its header is {stored}, this run's is {header}); "
                "delete it or set generation.resume=false to start afresh"
            )
        with open(path, "r+b") as f:  # cut the torn tail so the next append starts on a fresh line
            f.truncate(good_bytes)

    def finished(self, retry_failed: bool) -> set[int]:
        """Rows that need no new request (failed rows count as finished unless ``retry_failed``)."""
        return {row for row, rec in self.rows.items() if rec["status"] == "ok" or not retry_failed}

    def append(self, record: dict[str, Any]) -> None:
        """Make one finished row durable before returning (one line, flushed and fsynced)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows[int(record["row"])] = record

    def close(self) -> None:
        self._file.close()


def write_output(df: pd.DataFrame, rows: dict[int, dict[str, Any]], output_path: str) -> pd.DataFrame:
    """Add :data:`RESULT_COLUMNS` to ``df`` from the finished ``rows`` and write the parquet atomically.

    Rows with no record (none when the run completed) get status ``"missing"``.
    """
    out = df.copy()
    missing = {"responses": [], "status": "missing", "error": "no result recorded", "prompt_tokens": 0}
    missing.update({"completion_tokens": 0, "response_tokens": 0.0, "response_latency_s": 0.0, "attempts": 0})
    for column in RESULT_COLUMNS:
        out[column] = [rows.get(i, missing).get(column, missing[column]) for i in range(len(df))]
    path = os.path.expanduser(output_path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    out.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return out
