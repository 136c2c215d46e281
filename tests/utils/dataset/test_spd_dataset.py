"""The SPD dataset builder on two tiny CPU models (same tokenizer, different weights, so mismatches exist):
draft tokens are the draft's step-by-step greedy tokens, target tokens the target's, batched == one row at a time,
and the CLI writes verl's schema or fails with a clear message."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from verl.utils.dataset.spd_dataset import build_spd_dataset, greedy_drafts, main, render_context, target_greedy_tokens

CHATS = [
    [{"role": "user", "content": "what is two plus three"}],
    [{"role": "user", "content": "count the apples"}],
    [{"role": "system", "content": "be short"}, {"role": "user", "content": "say yes"}],
]


@pytest.fixture(scope="module")
def draft_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's tokenizer and architecture with weights re-drawn from seed 1."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny_draft")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)  # matrices and embeddings; norm weights stay 1
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def prompts_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("spd_prompts") / "prompts.parquet"
    pd.DataFrame(
        {
            "data_source": ["toy"] * 3,
            "prompt": CHATS,
            "ability": ["math"] * 3,
            "reward_model": [{"style": "rule", "ground_truth": g} for g in ("5", "3", "yes")],
            "extra_info": [{"index": i, "split": "train"} for i in range(3)],
        }
    ).to_parquet(path)
    return str(path)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def _step_by_step_argmax(model, ids: list[int]) -> int:
    with torch.no_grad():
        return int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())


def test_draft_and_target_tokens_match_unbatched_greedy_steps(tiny_model_dir, draft_model_dir):
    tokenizer, target = _load(tiny_model_dir)
    _, draft = _load(draft_model_dir)
    contexts = [render_context(tokenizer, chat)[1] for chat in CHATS]  # different lengths -> left padding
    drafts = greedy_drafts(draft, contexts, 6, tokenizer.pad_token_id, tokenizer.eos_token_id)
    targets = target_greedy_tokens(target, contexts, drafts, tokenizer.pad_token_id)
    for context, d, t in zip(contexts, drafts, targets):
        assert len(d) == len(t) and 1 <= len(d) <= 6
        for i in range(len(d)):
            assert d[i] == _step_by_step_argmax(draft, context + d[:i])  # draft greedy, one row, no cache
            assert t[i] == _step_by_step_argmax(target, context + d[:i])  # target's token at draft position i
    assert sum(a != b for d, t in zip(drafts, targets) for a, b in zip(d, t)) > 0  # different weights disagree


def test_same_model_as_draft_and_target_has_no_mismatch(tiny_model_dir):
    tokenizer, model = _load(tiny_model_dir)
    contexts = [render_context(tokenizer, chat)[1] for chat in CHATS]
    drafts = greedy_drafts(model, contexts, 5, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert target_greedy_tokens(model, contexts, drafts, tokenizer.pad_token_id) == drafts


def test_build_writes_verl_schema_and_batching_does_not_change_tokens(
    tiny_model_dir, draft_model_dir, prompts_parquet, tmp_path
):
    one = build_spd_dataset(
        draft_model_dir, tiny_model_dir, prompts_parquet, str(tmp_path / "a.parquet"), 6, batch_size=1
    )
    batched = build_spd_dataset(
        draft_model_dir, tiny_model_dir, prompts_parquet, str(tmp_path / "b" / "b.parquet"), 6, batch_size=3,
        target_model_url="http://127.0.0.1:8000",
    )  # fmt: skip
    assert one["spd_draft_ids"].tolist() == batched["spd_draft_ids"].tolist()
    assert one["spd_target_ids"].tolist() == batched["spd_target_ids"].tolist()
    back = pd.read_parquet(tmp_path / "b" / "b.parquet")
    assert set(back.columns) >= {"data_source", "prompt", "ability", "reward_model", "extra_info", "spd_draft_ids"}
    assert (back["data_source"] == "spd_scorer").all() and back["ability"].tolist() == ["math"] * 3
    assert [r["ground_truth"] for r in back["reward_model"]] == ["5", "3", "yes"]
    assert [dict(m) for m in back["prompt"][2]] == CHATS[2]
    tokenizer, _ = _load(tiny_model_dir)
    for row in back.itertuples():
        extra = row.extra_info
        assert extra["index"] == row.Index and extra["split"] == "train"  # input extra_info kept
        assert list(extra["spd_draft_ids"]) == list(row.spd_draft_ids)
        assert list(extra["spd_target_ids"]) == list(row.spd_target_ids)
        assert extra["num_mismatches"] == sum(a != b for a, b in zip(row.spd_draft_ids, row.spd_target_ids))
        assert list(extra["context_ids"]) == tokenizer(extra["context_text"], add_special_tokens=False)["input_ids"]
        assert extra["context_text"].endswith("<|im_start|>assistant\n")
        assert extra["model_path"] == tiny_model_dir and extra["target_model_url"] == "http://127.0.0.1:8000"
    assert set(one["extra_info"].map(lambda e: e["target_model_url"])) == {""}


def test_cli_module_runs(tiny_model_dir, draft_model_dir, prompts_parquet, tmp_path):
    out = tmp_path / "spd.parquet"
    cmd = [sys.executable, "-m", "verl.utils.dataset.spd_dataset", "--draft_model_path", draft_model_dir]
    cmd += ["--target_model_path", tiny_model_dir, "--prompts", prompts_parquet, "--output", str(out)]
    cmd += ["--max_draft_tokens", "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 3 rows" in done.stdout
    assert pd.read_parquet(out)["spd_draft_ids"].map(len).max() <= 4


def test_cli_errors_name_the_problem(tiny_model_dir, prompts_parquet, tmp_path, capsys):
    base = [
        "--draft_model_path",
        tiny_model_dir,
        "--target_model_path",
        tiny_model_dir,
        "--output",
        str(tmp_path / "o"),
    ]
    with pytest.raises(SystemExit):
        main(base + ["--prompts", str(tmp_path / "missing.parquet")])
    assert "cannot read the prompts parquet" in capsys.readouterr().err
    no_truth = tmp_path / "no_truth.parquet"
    pd.DataFrame({"prompt": CHATS}).to_parquet(no_truth)
    with pytest.raises(SystemExit):
        main(base + ["--prompts", str(no_truth)])
    assert "no column 'reward_model'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--prompts", prompts_parquet, "--prompt_key", "question"])
    assert "no column 'question'" in capsys.readouterr().err


def test_different_vocabularies_are_refused(tiny_model_dir, prompts_parquet, tmp_path):
    from verl.utils.testing.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=3)  # its BPE is trained on another corpus
    with pytest.raises(ValueError, match="shared vocabulary"):
        build_spd_dataset(str(other), tiny_model_dir, prompts_parquet, str(tmp_path / "o.parquet"))
