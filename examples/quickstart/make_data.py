"""Write the quick start's synthetic task as verl-format parquet files (train + validation).

The task: every prompt asks the model to repeat one digit; the reward (``reward.py``) is the fraction of the
response's words that are that digit. A randomly initialised tiny model scores ~0 and learns it within a few dozen
GRPO steps, which makes it a good smoke test of the whole RL loop on a laptop.

Usage: python examples/quickstart/make_data.py --out DIR [--digit 7] [--train 256] [--val 32]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd

TEMPLATES = [
    "Repeat the digit {d} as many times as you can.",
    "Write {d} again and again.",
    "Say the number {d} over and over.",
    "Output only the digit {d}, many times.",
    "Please keep writing {d}.",
    "Count nothing, just print {d} repeatedly.",
]
DATA_SOURCE = "quickstart/repeat_digit"


def make_rows(n: int, digit: int, split: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = rng.choice(TEMPLATES).format(d=digit)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": text}],
                "ability": "toy",
                "reward_model": {"style": "rule", "ground_truth": str(digit)},
                "extra_info": {"split": split, "index": i},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory for train.parquet and test.parquet")
    parser.add_argument("--digit", type=int, default=7)
    parser.add_argument("--train", type=int, default=256, help="number of training prompts")
    parser.add_argument("--val", type=int, default=32, help="number of validation prompts")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(make_rows(args.train, args.digit, "train", seed=0)).to_parquet(out / "train.parquet")
    pd.DataFrame(make_rows(args.val, args.digit, "test", seed=1)).to_parquet(out / "test.parquet")
    print(f"wrote {args.train} train and {args.val} validation prompts to {out}")


if __name__ == "__main__":
    main()
