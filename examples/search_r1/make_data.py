"""Build the Search-R1 example's task offline: a corpus, questions whose answers are only in it, and the tool YAML.

Every entity is a made-up pair of words ("blue apple"); its passage in the corpus gives its code, a digit drawn at
random, so a model cannot know it without searching. One-hop questions ask for the code ("code of blue apple ?").
With ``--two_hop S`` the passages also name each entity's friend (another entity) and a share S of the questions ask
for the friend's code ("code of the friend of blue apple ?": search the entity, read the friend's name, search the
friend). The reward is exact match on the last
``<answer>...</answer>`` (``search_r1_like_qa_em``). Entities are split: training questions use one set, validation
questions (held out) another; the corpus holds every passage.

Usage: python examples/search_r1/make_data.py --out DIR [--retrieval_url URL] [--two_hop 0.5]
Writes DIR/corpus.jsonl, DIR/train.parquet, DIR/test.parquet, DIR/search_tool.yaml and DIR/warm_start.jsonl (the
dialogues the tiny model is warm-started on, from training entities only).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Entity:
    name: str
    code: int
    friend: str  # another entity: the second hop of a two-hop question


def entities(seed: int = 0) -> list[Entity]:
    rng = random.Random(seed)
    names = [f"{a} {b}" for a, b in itertools.combinations(WORDS, 2)]  # unordered: BM25 ignores word order
    rng.shuffle(names)
    friends = names[1:] + names[:1]
    return [Entity(name, rng.randint(0, 9), friend) for name, friend in zip(names, friends)]


def question(entity: Entity, hops: int = 1) -> str:
    return f"code of {entity.name} ?" if hops == 1 else f"code of the friend of {entity.name} ?"


def passage(entity: Entity, friends: bool = True) -> str:
    """The entity's passage; ``friends``: also name its friend (the corpus of the two-hop task)."""
    text = f"{entity.name}\nthe code of {entity.name} is {entity.code}"
    return text + (f" . the friend of {entity.name} is {entity.friend}" if friends else "")


def tool_call(name: str) -> str:
    return "<tool_call>" + json.dumps({"name": "search", "arguments": {"query": name}}) + "</tool_call>"


def tool_response(entity: Entity, friends: bool = True) -> str:
    """What SearchTool (topk 1) answers for the entity: the format of ``verl.tools.search_tool.format_passages``."""
    title, _, text = passage(entity, friends).partition("\n")
    return f"Doc 1 (Title: {title}) {text}"


def answer(entity: Entity, hops: int, by_name: dict[str, Entity]) -> int:
    return entity.code if hops == 1 else by_name[entity.friend].code


def rows(
    items: list[Entity], by_name: dict[str, Entity], split: str, agent_name: str = "tool_agent", two_hop: float = 0.5
) -> list[dict]:
    """One question per entity; a ``two_hop`` share of them ask for the friend's code (two searches)."""
    rng = random.Random(f"{split}-hops")
    out = []
    for i, entity in enumerate(items):
        hops = 2 if rng.random() < two_hop else 1
        out.append(
            {
                "data_source": DATA_SOURCE,
                "agent_name": agent_name,
                "prompt": [{"role": "user", "content": question(entity, hops)}],
                "ability": "search",
                "reward_model": {"style": "rule", "ground_truth": {"target": [str(answer(entity, hops, by_name))]}},
                "extra_info": {"split": split, "index": i, "entity": entity.name, "hops": hops},
            }
        )
    return out


def warm_start_dialogues(
    items: list[Entity], by_name: dict[str, Entity], n: int, search_share: float, seed: int, two_hop: float = 0.5
) -> list[list[dict]]:
    """Dialogues a pretrained instruct model would already handle: sometimes it searches (twice for a friend's code)
    and answers from the passage, otherwise it guesses a digit. RL then has to find out that searching pays."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        entity = rng.choice(items)
        hops = 2 if rng.random() < two_hop else 1
        dialogue = [{"role": "user", "content": question(entity, hops)}]
        if rng.random() < search_share:
            chain = [entity] if hops == 1 else [entity, by_name[entity.friend]]
            for step in chain:
                dialogue += [
                    {"role": "assistant", "content": tool_call(step.name)},
                    {"role": "tool", "content": tool_response(step, friends=two_hop > 0)},
                ]
            dialogue.append({"role": "assistant", "content": f"<answer> {chain[-1].code} </answer>"})
        else:
            dialogue.append({"role": "assistant", "content": f"<answer> {rng.randint(0, 9)} </answer>"})
        out.append(dialogue)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--retrieval_url", default="http://127.0.0.1:8001/retrieve")
    parser.add_argument("--heldout", type=int, default=24, help="entities kept out of training (validation)")
    parser.add_argument("--search_share", type=float, default=0.3, help="share of warm-start dialogues that search")
    parser.add_argument(
        "--two_hop", type=float, default=0.0, help="share of questions that need two searches (0: one-hop only)"
    )
    parser.add_argument(
        "--agent_name", default="tool_agent", help="the rows' agent loop (tool_agent, or an OpenAI agent)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = entities()
    by_name = {e.name: e for e in items}
    train, heldout = items[args.heldout :], items[: args.heldout]
    with open(out / "corpus.jsonl", "w") as f:
        for i, entity in enumerate(items):
            f.write(json.dumps({"id": str(i), "contents": passage(entity, friends=args.two_hop > 0)}) + "\n")
    pd.DataFrame(rows(train, by_name, "train", args.agent_name, args.two_hop)).to_parquet(out / "train.parquet")
    pd.DataFrame(rows(heldout, by_name, "test", args.agent_name, args.two_hop)).to_parquet(out / "test.parquet")
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
        for dialogue in warm_start_dialogues(train, by_name, 4000, args.search_share, seed=1, two_hop=args.two_hop):
            f.write(json.dumps(dialogue) + "\n")
    print(f"wrote {len(items)} passages, {len(train)} train and {len(heldout)} held-out questions to {out}")


if __name__ == "__main__":
    main()
