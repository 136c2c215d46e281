"""Build the Search-R1 example's task offline: a corpus, questions whose answers are only in it, and the tool YAML.

Every entity is a made-up pair of words ("blue apple"); its passage in the corpus gives its code, a digit drawn at
random, so a model cannot know it without searching. Questions ask for the code ("code of blue apple ?"); the
reward is exact match on the last ``<answer>...</answer>`` (``search_r1_like_qa_em``). Entities are split:
training questions use one set, validation questions (held out) another; the corpus holds every passage.

Usage: python examples/search_r1/make_data.py --out DIR [--retrieval_url URL]
Writes DIR/corpus.jsonl, DIR/train.parquet, DIR/test.parquet, DIR/search_tool.yaml and DIR/warm_start.jsonl (the
dialogues the tiny model is warm-started on, from training entities only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

import pandas as pd

WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "apple",
    "banana",
    "cat",
    "dog",
    "paper",
    "class",
    "label",
    "author",
    "list",
]
DATA_SOURCE = "search_r1/synthetic_codes"
TOOL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches the corpus.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def entities(seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    pairs = [f"{a} {b}" for a, b in itertools.combinations(WORDS, 2)]  # unordered: BM25 ignores word order
    rng.shuffle(pairs)
    return [(name, rng.randint(0, 9)) for name in pairs]


def question(name: str) -> str:
    return f"code of {name} ?"


def passage(name: str, code: int) -> str:
    return f"{name}\nthe code of {name} is {code}"


def tool_call(name: str) -> str:
    return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": name}}) + "</tool_call>"


def tool_response(name: str, code: int) -> str:
    """What SearchTool (topk 1) answers for the entity: the format of ``verl.tools.search_tool.format_passages``."""
    return f"Doc 1 (Title: {name}) the code of {name} is {code}"


def rows(items: list[tuple[str, int]], split: str, agent_name: str = "tool_agent") -> list[dict]:
    return [
        {
            "data_source": DATA_SOURCE,
            "agent_name": agent_name,
            "prompt": [{"role": "user", "content": question(name)}],
            "ability": "search",
            "reward_model": {"style": "rule", "ground_truth": {"target": [str(code)]}},
            "extra_info": {"split": split, "index": i, "entity": name},
        }
        for i, (name, code) in enumerate(items)
    ]


def warm_start_dialogues(items: list[tuple[str, int]], n: int, search_share: float, seed: int) -> list[list[dict]]:
    """Dialogues a pretrained instruct model would already handle: sometimes it searches and answers from the
    passage, otherwise it guesses a digit. RL then has to find out that searching pays."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, code = rng.choice(items)
        user = {"role": "user", "content": question(name)}
        if rng.random() < search_share:
            out.append(
                [
                    user,
                    {"role": "assistant", "content": tool_call(name)},
                    {"role": "tool", "content": tool_response(name, code)},
                    {"role": "assistant", "content": f"<answer> {code} </answer>"},
                ]
            )
        else:
            out.append([user, {"role": "assistant", "content": f"<answer> {rng.randint(0, 9)} </answer>"}])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--retrieval_url", default="http://127.0.0.1:8001/retrieve")
    parser.add_argument("--heldout", type=int, default=24, help="entities kept out of training (validation)")
    parser.add_argument("--search_share", type=float, default=0.3, help="share of warm-start dialogues that search")
    parser.add_argument(
        "--agent_name", default="tool_agent", help="the rows' agent loop (tool_agent, or an OpenAI agent)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = entities()
    train, heldout = items[args.heldout :], items[: args.heldout]
    with open(out / "corpus.jsonl", "w") as f:
        for i, (name, code) in enumerate(items):
            f.write(json.dumps({"id": str(i), "contents": passage(name, code)}) + "\n")
    pd.DataFrame(rows(train, "train", args.agent_name)).to_parquet(out / "train.parquet")
    pd.DataFrame(rows(heldout, "test", args.agent_name)).to_parquet(out / "test.parquet")
    tool_yaml = {
        "tools": [
            {
                "class_name": "verl.tools.search_tool.SearchTool",
                "config": {"type": "native", "retrieval_service_url": args.retrieval_url, "topk": 1, "timeout": 30},
                "tool_schema": TOOL_SCHEMA,
            }
        ]
    }
    (out / "search_tool.yaml").write_text(json.dumps(tool_yaml, indent=2) + "\n")  # JSON is YAML
    with open(out / "warm_start.jsonl", "w") as f:
        for dialogue in warm_start_dialogues(train, 4000, args.search_share, seed=1):
            f.write(json.dumps(dialogue) + "\n")
    print(f"wrote {len(items)} passages, {len(train)} train and {len(heldout)} held-out questions to {out}")


if __name__ == "__main__":
    main()
