"""Warm-start the tiny model into a stand-in for a small instruct model that knows the tool format.

Search-R1 starts RL from an instruct model that can already emit a tool call and read a passage. The tiny
random model cannot, so this script gives it that much offline, in about a minute and a half on 2 CPU cores: supervised
fine-tuning on ``warm_start.jsonl`` (from ``make_data.py``; training entities only), with the loss on the
assistant's tokens. In those dialogues the assistant searches in only a minority of cases and otherwise guesses, so
the warm-started model rarely searches; RL has to learn that searching pays.

The tokenizer gets the tool-call and answer tags and the JSON keys of a call as whole tokens, as Qwen's tokenizer
has them (``<tool_call>`` is an added token there too).

Usage: python examples/search_r1/warm_start.py --data DIR/warm_start.jsonl --out DIR/model [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

ADDED_TOKENS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    '{"name": ',
    '"search"',
    ', "arguments": ',
    '{"query": ',
]


def encode_dialogue(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids of the rendered dialogue and a mask that is 1 on the assistant's tokens (its content and end of turn),
    tokenised piece by piece as the rollout does."""
    ids: list[int] = []
    mask: list[int] = []
    rendered = ""
    for k, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:k], add_generation_prompt=True, tokenize=False)
            piece = prompt[len(rendered) :]
            ids += tokenizer.encode(piece, add_special_tokens=False)
            mask += [0] * (len(ids) - len(mask))
            answer = message["content"] + tokenizer.eos_token
            ids += tokenizer.encode(answer, add_special_tokens=False)
            mask += [1] * (len(ids) - len(mask))
            rendered = prompt + answer
    return ids, mask


def warm_start(
    dialogues: list[list[dict]],
    out: str | Path,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Build the tiny model, add the tags, fine-tune it on ``dialogues``; returns ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.utils.testing.tiny import build_tiny_model

    torch.manual_seed(seed)
    out = Path(out)
    base = out.parent / (out.name + "_base")
    build_tiny_model(base, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.add_tokens(ADDED_TOKENS)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.vocab_size = len(tokenizer)
    encoded = [encode_dialogue(tokenizer, d) for d in dialogues]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 50) * max(0.05, 1 - s / steps))
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = rng.sample(encoded, min(batch_size, len(encoded)))
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, mask) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.where(torch.tensor(mask) == 1, torch.tensor(ids), torch.tensor(-100))
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps:
            print(
                f"warm start: step {step}/{steps}  loss {loss.item():.3f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="warm_start.jsonl from make_data.py")
    parser.add_argument("--out", required=True, help="where to save the warm-started model and tokenizer")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dialogues = [json.loads(line) for line in open(args.data)]
    out = warm_start(dialogues, args.out, args.steps, args.batch_size, args.lr, args.seed)
    print(f"warm-started model written to {out}")


if __name__ == "__main__":
    main()
