"""Build the SPD dataset: draft continuations and the target's greedy token at every draft position.

For each prompt (verl's parquet schema: a chat list in ``prompt``, ``reward_model.ground_truth``):

1. render the chat with the draft model's tokenizer (chat template, generation prompt) -> context ``c``;
2. the draft model continues ``c`` greedily for up to ``K`` tokens -> ``d_1..d_K`` (shorter when it emits EOS,
   which is kept as the last draft token);
3. the target model reads ``c + d`` once, teacher-forced: ``t_i`` is the argmax of its logits at the position that
   predicts ``d_i``, i.e. the token the target would have produced there (DESIGN section 6).

Rows are batched with left padding (explicit position ids), so a batch gives the same tokens as one row at a time.
The output parquet has verl's columns (``data_source="spd_scorer"``, ``prompt``, ``ability``, ``reward_model``,
``extra_info``) plus ``spd_draft_ids`` / ``spd_target_ids`` at the top level for ``SPDRollout``. ``extra_info``
keeps the input's keys and adds ``context_text``, ``context_ids``, ``spd_draft_ids``, ``spd_target_ids``,
``num_mismatches``, ``model_path`` (the target's tokenizer) and ``target_model_url`` (empty unless given), which is
what ``verl.utils.reward_score.spd_scorer_reward`` reads.

Draft and target must share a vocabulary (speculative decoding compares token ids); a mismatch is an error.

CLI::

    python -m verl.utils.dataset.spd_dataset --draft_model_path D --target_model_path T \\
        --prompts IN.parquet [--output data/spd/train.parquet] [--max_draft_tokens 16] [--prompt_key prompt]

``--output`` defaults to :data:`DEFAULT_SPD_DATA` (relative to the working directory), which is also where
``train_spd_scorer.py`` looks when ``--train_files`` is not given.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "DEFAULT_SPD_DATA",
    "build_command",
    "build_spd_dataset",
    "greedy_drafts",
    "main",
    "render_context",
    "target_greedy_tokens",
]

DATA_SOURCE = "spd_scorer"
DEFAULT_SPD_DATA = "data/spd/train.parquet"
"""Where the CLI writes the SPD dataset and where ``train_spd_scorer.py`` reads it by default (relative to the cwd)."""


def build_command(
    draft_model_path: str = "DRAFT_MODEL_DIR",
    target_model_path: str = "TARGET_MODEL_DIR",
    prompts: str = "PROMPTS.parquet",
    output: str = DEFAULT_SPD_DATA,
) -> str:
    """The shell command that writes the SPD dataset to ``output`` (``--output`` left out when it is the default)."""
    cmd = f"python -m verl.utils.dataset.spd_dataset --draft_model_path {draft_model_path} "
    cmd += f"--target_model_path {target_model_path} --prompts {prompts}"
    return cmd if output == DEFAULT_SPD_DATA else f"{cmd} --output {output}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help unless the help states its default already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def _as_chat(prompt: Any) -> list[dict] | str:
    if isinstance(prompt, str):
        return prompt
    return [dict(message) for message in prompt]  # parquet gives a numpy array of dicts


def render_context(tokenizer: Any, prompt: Any) -> tuple[str, list[int]]:
    """``(text, ids)`` of the context: a chat list through the chat template (generation prompt added, as
    ``RLHFDataset`` does), a plain string as it is."""
    chat = _as_chat(prompt)
    text = (
        chat
        if isinstance(chat, str)
        else tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    )
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    """``(input_ids, attention_mask, position_ids)``, each ``(B, W)``, for left-padded ``rows``."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..len-1 whatever the padding
    return ids.to(device), mask.to(device), positions.to(device)


def greedy_drafts(model: Any, contexts: Sequence[Sequence[int]], k: int, pad_id: int, eos_id: int | None) -> list:
    """The draft model's greedy continuation of each context, at most ``k`` tokens, cut after the first EOS.

    A plain loop over the KV cache (``model.generate`` would apply the checkpoint's sampling config).

    Returns:
        One list of token ids per context.
    """
    import torch

    from verl.utils.hf_models import kv_cache_arg

    cache_arg = kv_cache_arg(model) or "past_key_values"  # ``cache`` on transformers after 5.19
    device = next(model.parameters()).device
    ids, mask, positions = _left_pad(contexts, pad_id, device)
    drafts = [[] for _ in contexts]
    done = [False] * len(contexts)
    past, step_ids = None, ids
    with torch.no_grad():
        for _ in range(k):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, **{cache_arg: past})
            past = getattr(out, cache_arg)
            next_ids = out.logits[:, -1].argmax(dim=-1)  # (B,)
            for i, token in enumerate(next_ids.tolist()):
                if not done[i]:
                    drafts[i].append(token)
                    done[i] = token == eos_id
            if all(done):
                break
            step_ids = next_ids[:, None]
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    return drafts


def target_greedy_tokens(
    model: Any, contexts: Sequence[Sequence[int]], drafts: Sequence[Sequence[int]], pad_id: int
) -> list[list[int]]:
    """``t_i = argmax`` of the target's logits at the position predicting ``d_i``, from one teacher-forced pass.

    With left padding every sequence ends at the last column, so the logits needed are the last ``max_k + 1``
    positions (``logits_to_keep``, which keeps memory at ``(B, K + 1, V)`` for large vocabularies).

    Returns:
        One list per row, as long as its draft.
    """
    import torch

    device = next(model.parameters()).device
    ids, mask, positions = _left_pad([list(c) + list(d) for c, d in zip(contexts, drafts)], pad_id, device)
    max_k = max(len(d) for d in drafts)
    if max_k == 0:
        return [[] for _ in drafts]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=max_k + 1).logits
    greedy = logits[:, -(max_k + 1) :].argmax(dim=-1).tolist()  # (B, max_k + 1); column n predicts token n + 1
    # a draft of length k occupies the last k columns; the logits predicting its token n sit at column max_k - k + n
    return [greedy[i][max_k - len(d) : max_k] for i, d in enumerate(drafts)]


def _read_prompts(path: str, prompt_key: str) -> Any:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for missing or corrupt files
        raise ValueError(f"cannot read the prompts parquet {path!r}: {type(exc).__name__}: {exc}") from exc
    for column in (prompt_key, "reward_model"):
        if column not in frame.columns:
            raise ValueError(
                f"{path!r} has no column {column!r} (columns: {list(frame.columns)}); expected verl's schema with a "
                f"chat list in {prompt_key!r} (--prompt_key) and reward_model.ground_truth."
            )
    return frame


def _ground_truth(reward_model: Any, index: int) -> Any:
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if truth is None:
        raise ValueError(f"row {index}: reward_model has no ground_truth ({reward_model!r}).")
    return truth.tolist() if hasattr(truth, "tolist") else truth


def _load(path: str, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    return AutoTokenizer.from_pretrained(path), model


def build_spd_dataset(
    draft_model_path: str,
    target_model_path: str,
    prompts_path: str,
    output_path: str,
    max_draft_tokens: int = 16,
    prompt_key: str = "prompt",
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 8,
    target_model_url: str = "",
) -> Any:
    """Write the SPD parquet for ``prompts_path`` to ``output_path`` (see the module docstring) and return it.

    Args:
        draft_model_path, target_model_path: HF model directories or hub names (same vocabulary).
        prompts_path: verl-schema parquet.
        output_path: where to write (parent directories are created).
        max_draft_tokens: ``K``, draft tokens per prompt.
        prompt_key: the column holding the chat.
        device: ``cpu`` or ``cuda[:i]``.
        dtype: ``auto`` (float32 on CPU, bfloat16 on CUDA), or a torch dtype name.
        batch_size: prompts per forward pass.
        target_model_url: stored in ``extra_info`` for the reward (empty: the trainer passes it).

    Returns:
        The written ``pandas.DataFrame``.
    """
    import pandas as pd
    from tqdm import tqdm

    if max_draft_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_draft_tokens and batch_size must be >= 1, got {max_draft_tokens} and {batch_size}.")
    frame = _read_prompts(prompts_path, prompt_key)
    tokenizer, draft_model = _load(draft_model_path, device, dtype)
    target_tokenizer, target_model = _load(target_model_path, device, dtype)
    if tokenizer.get_vocab() != target_tokenizer.get_vocab():
        raise ValueError(
            f"the draft ({draft_model_path}, {len(tokenizer)} tokens) and target ({target_model_path}, "
            f"{len(target_tokenizer)} tokens) tokenizers differ; speculative decoding needs a shared vocabulary."
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = []
    with tqdm(total=len(frame), desc="spd_dataset", unit="prompt") as bar:
        for start in range(0, len(frame), batch_size):
            chunk = frame.iloc[start : start + batch_size]
            contexts = [render_context(tokenizer, prompt) for prompt in chunk[prompt_key]]
            ids = [c_ids for _, c_ids in contexts]
            drafts = greedy_drafts(draft_model, ids, max_draft_tokens, pad_id, tokenizer.eos_token_id)
            targets = target_greedy_tokens(target_model, ids, drafts, pad_id)
            for offset, ((text, c_ids), draft, target) in enumerate(zip(contexts, drafts, targets)):
                record = chunk.iloc[offset]
                extra = dict(record["extra_info"] or {}) if "extra_info" in chunk.columns else {}
                extra.update(
                    context_text=text,
                    context_ids=c_ids,
                    spd_draft_ids=draft,
                    spd_target_ids=target,
                    num_mismatches=sum(int(d != t) for d, t in zip(draft, target)),
                    model_path=target_model_path,
                    target_model_url=target_model_url,
                    eos_token_id=target_tokenizer.eos_token_id,
                )
                rows.append(
                    {
                        "data_source": DATA_SOURCE,
                        "prompt": _as_chat(record[prompt_key]),
                        "ability": record["ability"] if "ability" in chunk.columns else "spd",
                        "reward_model": {
                            "style": "rule",
                            "ground_truth": _ground_truth(record["reward_model"], start + offset),
                        },
                        "extra_info": extra,
                        "spd_draft_ids": draft,
                        "spd_target_ids": target,
                    }
                )
            bar.update(len(chunk))
    out = pd.DataFrame(rows)
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    out.to_parquet(output_path)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m verl.utils.dataset.spd_dataset",
        description="Build the SPD dataset: greedy draft continuations and the target's greedy token at each position.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--draft_model_path", required=True, help="required: draft causal LM (HF directory or hub name)"
    )
    parser.add_argument(
        "--target_model_path", required=True, help="required: target causal LM, same vocabulary as the draft"
    )
    parser.add_argument(
        "--prompts",
        required=True,
        help="required: input parquet in verl's schema (a chat list per row, reward_model.ground_truth)",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_SPD_DATA,
        help=f"output parquet, parent directories created (default: {DEFAULT_SPD_DATA}, where train_spd_scorer.py "
        "reads by default)",
    )
    parser.add_argument("--max_draft_tokens", type=int, default=16, help="K, draft tokens per prompt")
    parser.add_argument("--prompt_key", default="prompt", help="column holding the chat list")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on CUDA) or a torch dtype")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per forward pass")
    parser.add_argument(
        "--target_model_url", default="", help="stored in extra_info for the reward (default: empty, the trainer's)"
    )
    args = parser.parse_args(argv)
    try:
        out = build_spd_dataset(
            args.draft_model_path,
            args.target_model_path,
            args.prompts,
            args.output,
            max_draft_tokens=args.max_draft_tokens,
            prompt_key=args.prompt_key,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            target_model_url=args.target_model_url,
        )
    except ValueError as exc:
        parser.error(str(exc))
    lengths = out["spd_draft_ids"].map(len)
    mismatches = out["extra_info"].map(lambda e: e["num_mismatches"])
    print(
        f"wrote {len(out)} rows to {args.output}: {lengths.mean():.1f} draft tokens and "
        f"{mismatches.mean():.1f} mismatches per row on average"
    )


if __name__ == "__main__":
    main()
