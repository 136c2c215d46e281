"""Build the multi-turn classification dialogue of ``examples/grpo_trainer/run_multiturn_nd_grpo.sh``, locally.

Task ("does this paper belong to this author?"): the prompt lists an author's papers and asks about one title; the
interaction (``verl.interactions.multiturn_dialog_interaction.MultiTurnDialogInteraction``) then asks about further
titles, one per turn. Each answer is scored by exact match of yes/no blended with the probability the policy gave
the correct label token, read from the rollout's captured logits. Everything is synthetic and made here: no
download.

Usage:
    python examples/data_preprocess/multiturn_nd.py --out DIR [--train 256] [--val 32] [--turns 2] [--seed 0]
        [--tokenizer MODEL_DIR]   # also writes DIR/interaction.yaml and prints the label token ids

Rows follow verl's parquet schema: ``data_source``, ``prompt`` (chat list), ``reward_model.ground_truth``
(the labels, comma-separated), ``extra_info.interaction_kwargs`` = ``{"name": "dialog", "questions": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pandas as pd

DATA_SOURCE = "multiturn_nd"
AUTHORS = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Leslie", "Radia"]
WORDS = ["graphs", "proofs", "types", "caches", "queues", "codes", "trees", "games", "nets", "logic", "sets", "maps"]
FIRST = ["On", "Towards", "Notes on", "A theory of", "Fast", "Simple", "Robust"]


def _title(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(WORDS)} and {rng.choice(WORDS)}"


def make_rows(n: int, turns: int, split: str, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        author = rng.choice(AUTHORS)
        papers = sorted({_title(rng) for _ in range(3)})
        questions = []
        for _ in range(turns):
            label = rng.random() < 0.5
            title = rng.choice(papers) if label else _title(rng)
            label = title in papers
            questions.append(
                {
                    "question": f"Does the paper '{title}' belong to {author}? Answer yes or no.",
                    "label": "yes" if label else "no",
                }
            )
        context = f"{author}'s papers: " + "; ".join(papers) + "."
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{context} {questions[0]['question']}"}],
                "ability": "classification",
                "reward_model": {"style": "interaction", "ground_truth": ",".join(q["label"] for q in questions)},
                "extra_info": {
                    "split": split,
                    "index": i,
                    "interaction_kwargs": {"name": "dialog", "questions": questions},
                },
            }
        )
    return rows


def label_token_ids(tokenizer_dir: str) -> dict[str, list[int]]:
    """First token of each label, with and without a leading space (how the model may start its answer)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return {
        label: sorted({tok.encode(text, add_special_tokens=False)[0] for text in (label, " " + label)})
        for label in ("yes", "no")
    }


def write_interaction_yaml(out: Path, labels: dict[str, list[int]], prob_weight: float) -> Path:
    path = out / "interaction.yaml"
    # labels are quoted: YAML 1.1 would read a bare yes/no key as a boolean
    label_lines = "\n".join(f"        '{label}': {ids}" for label, ids in labels.items())
    path.write_text(
        "interaction:\n"
        "  - name: dialog\n"
        "    class_name: verl.interactions.multiturn_dialog_interaction.MultiTurnDialogInteraction\n"
        "    config:\n"
        f"      prob_weight: {prob_weight}\n"
        "      label_token_ids:\n"
        f"{label_lines}\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (train.parquet, test.parquet)")
    parser.add_argument("--train", type=int, default=256, help="training dialogues")
    parser.add_argument("--val", type=int, default=32, help="validation dialogues")
    parser.add_argument("--turns", type=int, default=2, help="questions (assistant turns) per dialogue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="model dir: also write interaction.yaml with the label token ids")
    parser.add_argument("--prob_weight", type=float, default=0.5, help="weight of P(correct label) in the score")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(make_rows(args.train, args.turns, "train", args.seed)).to_parquet(out / "train.parquet")
    pd.DataFrame(make_rows(args.val, args.turns, "test", args.seed + 1)).to_parquet(out / "test.parquet")
    print(f"wrote {args.train} train / {args.val} test dialogues to {out}")
    if args.tokenizer:
        labels = label_token_ids(args.tokenizer)
        print(f"wrote {write_interaction_yaml(out, labels, args.prob_weight)}")
        print("LABEL_TOKEN_IDS=" + json.dumps(sorted({i for ids in labels.values() for i in ids})))


if __name__ == "__main__":
    main()
