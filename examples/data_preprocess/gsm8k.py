"""Convert a local copy of GSM8K into verl's parquet format (``train.parquet`` and ``test.parquet``).

Nothing is downloaded. Get the data first, either of:

* https://huggingface.co/datasets/openai/gsm8k  (``main/train-00000-of-00001.parquet``, ``main/test-...parquet``)
* https://github.com/openai/grade-school-math  (``grade_school_math/data/train.jsonl``, ``test.jsonl``)

Usage::

    python examples/data_preprocess/gsm8k.py --local_dataset_path ~/gsm8k --local_save_dir ~/data/gsm8k

``--local_dataset_path`` is a directory (searched recursively for ``train*`` / ``test*`` files in .parquet,
.jsonl or .json) or a single file (its split is ``test`` when the name contains "test", else ``train``). Input
rows need ``question`` and ``answer`` columns; the answer ends with ``#### <number>``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
SOURCES_HINT = (
    "Download GSM8K yourself first, e.g. https://huggingface.co/datasets/openai/gsm8k (main/*.parquet) or "
    "https://github.com/openai/grade-school-math (grade_school_math/data/*.jsonl), then pass "
    "--local_dataset_path <file or directory>."
)
_EXTENSIONS = (".parquet", ".jsonl", ".json")
_FINAL_ANSWER = re.compile(r"#### (-?[0-9.,]+)")


def extract_solution(answer: str) -> str:
    """The number after ``####`` in a GSM8K reference answer, without thousands separators.

    Example:
        >>> extract_solution("48 / 2 = 24 clips\\n#### 1,024")
        '1024'
    """
    match = _FINAL_ANSWER.search(answer)
    if match is None:
        raise ValueError(f"answer has no '#### <number>' line: {answer[-80:]!r}")
    return match.group(1).replace(",", "")


def read_table(path: Path) -> pd.DataFrame:
    """Read a parquet / jsonl / json file and check that it has ``question`` and ``answer`` columns."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_json(path, lines=path.suffix == ".jsonl")
    missing = [col for col in ("question", "answer") if col not in frame.columns]
    if missing:
        raise SystemExit(f"{path}: missing column(s) {missing}; columns present: {list(frame.columns)}")
    return frame


def find_split_files(dataset_path: Path) -> dict[str, Path]:
    """Map ``train`` / ``test`` to input files, from a single file or a directory tree."""
    if dataset_path.is_file():
        return {"test" if "test" in dataset_path.name else "train": dataset_path}
    found: dict[str, Path] = {}
    for path in sorted(dataset_path.rglob("*")):
        if path.suffix not in _EXTENSIONS or not path.is_file():
            continue
        for split in ("train", "test"):
            if path.name.startswith(split) and split not in found:
                found[split] = path
    if not found:
        raise SystemExit(f"no train*/test* files ({', '.join(_EXTENSIONS)}) under {dataset_path}. {SOURCES_HINT}")
    return found


def to_verl_rows(frame: pd.DataFrame, split: str) -> list[dict]:
    """One verl row per GSM8K example (prompt as a chat list, rule-based reward on the final number)."""
    rows = []
    for index, (question, answer) in enumerate(zip(frame["question"], frame["answer"])):
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": extract_solution(answer)},
                "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description="Convert a local GSM8K copy into verl parquet files.")
    parser.add_argument("--local_dataset_path", default=None, help="local GSM8K file or directory (required)")
    parser.add_argument("--local_save_dir", default="~/data/gsm8k", help="output directory")
    parser.add_argument("--local_dir", default=None, help="deprecated alias of --local_save_dir")
    parser.add_argument("--hdfs_dir", default=None, help="not supported in this build")
    args = parser.parse_args(argv)
    if args.hdfs_dir:
        raise SystemExit("--hdfs_dir is not supported here; copy the output directory yourself.")
    if not args.local_dataset_path:
        raise SystemExit(f"--local_dataset_path is required (this script never downloads). {SOURCES_HINT}")
    dataset_path = Path(os.path.expanduser(args.local_dataset_path))
    if not dataset_path.exists():
        raise SystemExit(f"{dataset_path} does not exist. {SOURCES_HINT}")
    if args.local_dir is not None:
        print("warning: --local_dir is deprecated; use --local_save_dir", file=sys.stderr)
    save_dir = Path(os.path.expanduser(args.local_dir or args.local_save_dir))
    save_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, path in find_split_files(dataset_path).items():
        rows = to_verl_rows(read_table(path), split)
        out = save_dir / f"{split}.parquet"
        pd.DataFrame(rows).to_parquet(out, index=False)
        written[split] = out
        print(f"{split}: {len(rows)} rows from {path} -> {out}")
    return written


if __name__ == "__main__":
    main()
