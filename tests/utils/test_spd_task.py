"""The SPD quality task (``verl.utils.testing.spd_task``): answers, prompt sets, the trained models and the cache.

The models are trained for a handful of steps here (the real build is ``python -m verl.utils.testing.spd_task``):
what is checked is the task's structure, not the models' skill.
"""

from __future__ import annotations

import random
import re

import pandas as pd
import pytest

from verl.utils.testing.spd_task import SPDTaskSpec, answer_text, build_spd_task


def test_answers_vary_in_phrasing_and_separator_and_end_with_the_sum():
    rng = random.Random(0)
    for role in ("target", "draft"):
        texts = [answer_text(a, b, rng, role) for a in range(10) for b in range(10) for _ in range(3)]
        for text, (a, b) in zip(texts, [(a, b) for a in range(10) for b in range(10) for _ in range(3)]):
            assert text.endswith(f"#### {a + b}") and str(a + b) in text.split("####")[0]
        phrasings = {re.sub(r"\d+", "N", t.split("####")[0].strip()) for t in texts}
        assert len(phrasings) >= 4  # harmless variation
    # the two roles prefer different phrasings and separators: the draft disagrees on harmless tokens
    rng = random.Random(1)
    target = [answer_text(3, 4, rng, "target") for _ in range(400)]
    draft = [answer_text(3, 4, rng, "draft") for _ in range(400)]
    assert sum(t.startswith("The answer is") for t in target) > 200 > sum(d.startswith("The answer is") for d in draft)
    assert sum("\n" in t for t in target) < 40 and sum("\n" in d for d in draft) > 200


def test_label_noise_moves_the_sum_by_one_only():
    rng = random.Random(2)
    sums = [int(answer_text(4, 4, rng, "target", label_noise=0.5).rsplit("#### ", 1)[1]) for _ in range(400)]
    assert set(sums) == {7, 8, 9} and 100 < sums.count(8) < 300


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("spd_task")
    spec = SPDTaskSpec(target_steps=2, draft_steps=2, batch_size=4)
    return out, spec, build_spd_task(out, spec, n_train=24, n_heldout=12)


def test_build_writes_two_models_over_one_tokenizer_and_disjoint_prompt_sets(task):
    from transformers import AutoConfig, AutoTokenizer

    out, spec, paths = task
    target, draft = AutoConfig.from_pretrained(paths["target"]), AutoConfig.from_pretrained(paths["draft"])
    assert (target.num_hidden_layers, draft.num_hidden_layers) == (4, 2)  # the draft is the weaker model
    vocab = AutoTokenizer.from_pretrained(paths["target"]).get_vocab()
    assert vocab == AutoTokenizer.from_pretrained(paths["draft"]).get_vocab()
    train, held = pd.read_parquet(paths["train"]), pd.read_parquet(paths["heldout"])
    assert (len(train), len(held)) == (24, 12)
    for frame in (train, held):
        for rm, info in zip(frame["reward_model"], frame["extra_info"]):
            assert rm["ground_truth"] == info["answer"] == str(info["a"] + info["b"])
    pairs = {split: {(i["a"], i["b"]) for i in f["extra_info"]} for split, f in (("t", train), ("h", held))}
    assert pairs["t"] and pairs["h"] and not pairs["t"] & pairs["h"]
    assert len(set(train["prompt"].map(lambda p: p[0]["content"]))) == 24  # distinct contexts


def test_a_second_build_reuses_the_cache_and_another_spec_rebuilds(task, capsys):
    out, spec, paths = task
    weights = (paths["target"] / "model.safetensors").stat().st_mtime_ns
    build_spd_task(out, spec, n_train=24, n_heldout=12)
    assert "reusing" in capsys.readouterr().out
    assert (paths["target"] / "model.safetensors").stat().st_mtime_ns == weights
    build_spd_task(out, SPDTaskSpec(target_steps=1, draft_steps=1, batch_size=4), n_train=24, n_heldout=12)
    assert "reusing" not in capsys.readouterr().out


def test_the_prompt_sets_feed_the_spd_dataset_builder(task, tmp_path):
    from verl.utils.dataset.spd_dataset import build_spd_dataset

    _, _, paths = task
    frame = build_spd_dataset(
        str(paths["draft"]),
        str(paths["target"]),
        str(paths["heldout"]),
        str(tmp_path / "h.parquet"),
        max_draft_tokens=4,
    )
    assert len(frame) == 12 and all(len(d) == 4 for d in frame["spd_draft_ids"])
    assert all(info["eos_token_id"] is not None for info in frame["extra_info"])
