"""A speculative-decoding task where acceptance matters: a tiny target and a weaker draft, trained offline on CPU.

The task is single-digit addition with a worded answer, checked by its number::

    user:      ... what is 7 + 5?
    assistant: The answer is 12. #### 12

Every answer mixes two kinds of tokens:

* **harmless** ones: the phrasing (``The answer is`` / ``The sum is`` / ``7 plus 5 equals`` / ...) and the
  separator before ``####`` (a space, or a newline). Any choice keeps the answer;
* **decisive** ones: the digits of the sum. A wrong digit, once committed, is copied into ``#### N``.

The target (4 layers) is trained on answers whose phrasing has one common form and a long tail, whose separator is
almost always a space, and whose sum is off by one in ``--label-noise`` of the examples. So where a draft disagrees
with it, the target's probability of the draft's token is low for harmless tail phrasings and newlines, and
moderate for an off-by-one digit: a threshold on the target's probability or entropy cannot tell the two kinds
apart, while a judge that reads the tokens can. The draft (2 layers, fewer steps) prefers other phrasings and the
newline, and gets some sums wrong: it disagrees with the target on both kinds.

Prompts carry a few random filler words, so there are many distinct contexts over the 100 sums; the train and
held-out prompt sets use disjoint ``(a, b)`` pairs. Ground truth is the sum (``reward_model.ground_truth``, and
``extra_info.answer``), checked by the SPD reward's number match.

CLI (builds once, then reuses the cached models; prints greedy accuracies)::

    python -m verl.utils.testing.spd_task outputs/spd_task
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["SPDTaskSpec", "answer_text", "build_spd_task", "make_rows", "prompt_text"]

_FILLER = "please say the following question number digit think step small large red blue green cat dog".split()

# (phrasing template, weight in the target's data, weight in the draft's data)
_PHRASINGS = [
    ("The answer is {s}.", 0.60, 0.15),
    ("The sum is {s}.", 0.08, 0.40),
    ("{a} plus {b} equals {s}.", 0.08, 0.25),
    ("The total is {s}.", 0.08, 0.10),
    ("It is {s}.", 0.08, 0.05),
    ("So the answer is {s}.", 0.08, 0.05),
]
# separator before "####": (text, weight for the target, weight for the draft)
_SEPARATORS = [(" ", 0.97, 0.30), ("\n", 0.03, 0.70)]


@dataclass(frozen=True)
class SPDTaskSpec:
    """What ``build_spd_task`` trains; the cache is reused only for an equal spec."""

    target_steps: int = 1500
    draft_steps: int = 120
    batch_size: int = 64
    lr: float = 3e-3
    label_noise: float = 0.15
    heldout_pairs: float = 0.3
    seed: int = 0


def prompt_text(a: int, b: int, rng: random.Random) -> str:
    """The user's question, with 2-4 random filler words in front (distinct contexts over the same sum)."""
    filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 4)))
    return f"{filler}: what is {a} + {b}?"


def answer_text(a: int, b: int, rng: random.Random, role: str, label_noise: float = 0.0) -> str:
    """One training answer for ``role`` (``target`` or ``draft``): a phrasing and a separator drawn from that
    role's weights, and the sum, off by one with probability ``label_noise``."""
    column = 1 if role == "target" else 2
    phrasing = rng.choices([p[0] for p in _PHRASINGS], weights=[p[column] for p in _PHRASINGS])[0]
    separator = rng.choices([s[0] for s in _SEPARATORS], weights=[s[column] for s in _SEPARATORS])[0]
    s = a + b
    if rng.random() < label_noise:
        s = s + 1 if (s == 0 or rng.random() < 0.5) else s - 1
    return phrasing.format(a=a, b=b, s=s) + separator + f"#### {s}"


def _pairs(spec: SPDTaskSpec) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pairs = [(a, b) for a in range(10) for b in range(10)]
    random.Random(spec.seed).shuffle(pairs)
    n_held = int(len(pairs) * spec.heldout_pairs)
    return pairs[n_held:], pairs[:n_held]


def make_rows(pairs: list[tuple[int, int]], n: int, seed: int, split: str) -> list[dict[str, Any]]:
    """``n`` prompts in verl's parquet schema over ``pairs`` (cycled), ground truth the sum."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = pairs[i % len(pairs)]
        rows.append(
            {
                "data_source": "spd_task",
                "prompt": [{"role": "user", "content": prompt_text(a, b, rng)}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"index": i, "split": split, "a": a, "b": b, "answer": str(a + b)},
            }
        )
    return rows


def _train(model_dir: Path, role: str, steps: int, spec: SPDTaskSpec, log: Any) -> None:
    """SFT of ``model_dir`` in place on freshly drawn (prompt, answer) pairs; loss on the answer and its EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(spec.seed + (1 if role == "target" else 2))
    all_pairs = [(a, b) for a in range(10) for b in range(10)]  # the LMs know every sum
    pad = tokenizer.pad_token_id
    start = time.perf_counter()
    for step in range(steps):
        ids, labels = [], []
        for _ in range(spec.batch_size):
            a, b = rng.choice(all_pairs)
            context = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt_text(a, b, rng)}], add_generation_prompt=True, tokenize=False
            )
            c_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            noise = spec.label_noise if role == "target" else 0.0
            r_ids = tokenizer(answer_text(a, b, rng, role, noise), add_special_tokens=False)["input_ids"]
            r_ids = r_ids + [tokenizer.eos_token_id]
            ids.append(c_ids + r_ids)
            labels.append([-100] * len(c_ids) + r_ids)
        width = max(len(r) for r in ids)
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
        label_ids = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
        mask = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in ids])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=mask, labels=label_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if (step + 1) % max(1, steps // 5) == 0 or step + 1 == steps:
            print(
                f"  {role}: step {step + 1}/{steps}, loss {loss.item():.3f}, {time.perf_counter() - start:.0f} s",
                file=log,
                flush=True,
            )
    model.save_pretrained(model_dir)


def greedy_accuracy(model_dir: Path, rows: list[dict[str, Any]], max_new_tokens: int = 20) -> float:
    """Share of ``rows`` whose greedy answer's number (``#### N``) is the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.utils.reward_score.spd_scorer_reward import verify_hybrid_correctness

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    texts = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return sum(verify_hybrid_correctness(t, r["reward_model"]["ground_truth"]) for t, r in zip(answers, rows)) / len(
        rows
    )


def build_spd_task(
    out_dir: str | Path, spec: SPDTaskSpec | None = None, n_train: int = 256, n_heldout: int = 128, log: Any = None
) -> dict[str, Path]:
    """Build (or reuse) the target, the draft and the two prompt sets under ``out_dir``.

    Returns:
        ``{"target", "draft", "train", "heldout"}``: the two model directories and the two prompt parquets.
    """
    import sys

    import pandas as pd
    import torch

    from verl.utils.testing.tiny import TinyModelSpec, build_tiny_model

    spec = spec or SPDTaskSpec()
    log = log or sys.stdout
    out = Path(out_dir)
    paths = {name: out / name for name in ("target", "draft")}
    paths.update(train=out / "train_prompts.parquet", heldout=out / "heldout_prompts.parquet")
    stamp = out / "spd_task.json"
    want = {**asdict(spec), "n_train": n_train, "n_heldout": n_heldout}
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in paths.values()):
        print(f"spd_task: reusing {out} (delete {stamp} to rebuild)", file=log, flush=True)
        return paths
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    build_tiny_model(paths["target"], seed=0, spec=TinyModelSpec(num_layers=4), weights_seed=spec.seed + 10)
    build_tiny_model(paths["draft"], seed=0, spec=TinyModelSpec(num_layers=2), weights_seed=spec.seed + 20)
    print(
        f"spd_task: training the target ({spec.target_steps} steps) and the draft ({spec.draft_steps})",
        file=log,
        flush=True,
    )
    _train(paths["target"], "target", spec.target_steps, spec, log)
    _train(paths["draft"], "draft", spec.draft_steps, spec, log)
    train_pairs, held_pairs = _pairs(spec)
    pd.DataFrame(make_rows(train_pairs, n_train, spec.seed + 100, "train")).to_parquet(paths["train"])
    pd.DataFrame(make_rows(held_pairs, n_heldout, spec.seed + 200, "heldout")).to_parquet(paths["heldout"])
    stamp.write_text(json.dumps(want))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where the target, the draft and the prompt sets go")
    defaults = SPDTaskSpec()
    parser.add_argument("--target-steps", type=int, default=defaults.target_steps)
    parser.add_argument("--draft-steps", type=int, default=defaults.draft_steps)
    parser.add_argument("--label-noise", type=float, default=defaults.label_noise)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    spec = SPDTaskSpec(
        target_steps=args.target_steps, draft_steps=args.draft_steps, label_noise=args.label_noise, seed=args.seed
    )
    start = time.perf_counter()
    paths = build_spd_task(args.out_dir, spec)
    import pandas as pd

    held = pd.read_parquet(paths["heldout"]).to_dict("records")[:64]
    for role in ("target", "draft"):
        print(f"{role}: greedy accuracy on 64 held-out prompts {greedy_accuracy(paths[role], held):.3f}")
    print(f"spd_task: ready in {args.out_dir} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
