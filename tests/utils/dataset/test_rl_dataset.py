"""RLHFDataset on real parquet files written in tmp_path, with the tiny tokenizer."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn, get_dataset_class
from verl.utils.tokenizer import hf_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return hf_tokenizer(tiny_model_dir)


def make_rows(questions: list[str]) -> list[dict]:
    return [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(i)},
            "extra_info": {"split": "train", "index": 100 + i, "interaction_kwargs": {"name": "gsm8k"}},
        }
        for i, q in enumerate(questions)
    ]


def write_parquet(path, rows) -> str:
    pd.DataFrame(rows).to_parquet(path)
    return str(path)


def data_config(**overrides):
    base = {"prompt_key": "prompt", "max_prompt_length": 32, "truncation": "error", "return_raw_chat": False}
    base.update(overrides)
    return OmegaConf.create(base)


def prompt_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


SHORT = "what is 3 + 4"
LONG = " ".join(["one two three four five"] * 12)


def test_item_is_left_padded_with_positions_and_keeps_parquet_columns(tokenizer, tmp_path):
    path = write_parquet(tmp_path / "train.parquet", make_rows([SHORT]))
    item = RLHFDataset(path, tokenizer, data_config(return_raw_chat=True, return_full_prompt=True))[0]
    ids = prompt_ids(tokenizer, SHORT)
    n_pad = 32 - len(ids)
    assert item["input_ids"].shape == item["attention_mask"].shape == item["position_ids"].shape == (32,)
    assert item["input_ids"][:n_pad].eq(tokenizer.pad_token_id).all()
    assert item["input_ids"][n_pad:].tolist() == ids == item["raw_prompt_ids"]
    assert item["attention_mask"].tolist() == [0] * n_pad + [1] * len(ids)
    assert item["position_ids"].tolist() == [0] * n_pad + list(range(len(ids)))
    assert item["raw_prompt"] == [{"role": "user", "content": SHORT}]  # plain list of dicts
    assert item["full_prompts"].startswith("<|im_start|>user\n")
    assert "prompt" not in item
    assert item["data_source"] == "openai/gsm8k" and item["ability"] == "math"
    assert item["reward_model"] == {"style": "rule", "ground_truth": "0"}
    assert item["index"] == 100
    assert item["tools_kwargs"] == {} and item["interaction_kwargs"] == {"name": "gsm8k"}


def test_raw_chat_and_full_prompt_are_off_by_default(tokenizer, tmp_path):
    item = RLHFDataset(write_parquet(tmp_path / "t.parquet", make_rows([SHORT])), tokenizer, data_config())[0]
    assert "raw_prompt" not in item and "full_prompts" not in item


def test_several_files_and_max_samples(tokenizer, tmp_path):
    a = write_parquet(tmp_path / "a.parquet", make_rows(["q a one", "q a two"]))
    b = write_parquet(tmp_path / "b.parquet", make_rows(["q b one", "q b two", "q b three"]))
    assert len(RLHFDataset([a, b], tokenizer, data_config())) == 5
    first = RLHFDataset([a, b], tokenizer, data_config(shuffle=False), max_samples=3)
    assert [row["prompt"][0]["content"] for row in first.rows] == ["q a one", "q a two", "q b one"]
    sampled = RLHFDataset([a, b], tokenizer, data_config(shuffle=True, seed=1), max_samples=3)
    again = RLHFDataset([a, b], tokenizer, data_config(shuffle=True, seed=1), max_samples=3)
    assert len(sampled) == 3 and sampled.rows == again.rows  # seeded subset


def test_overlong_prompt_with_truncation_error_names_row_length_and_key(tokenizer, tmp_path):
    path = write_parquet(tmp_path / "t.parquet", make_rows([SHORT, LONG]))
    dataset = RLHFDataset(path, tokenizer, data_config())
    n = len(prompt_ids(tokenizer, LONG))
    with pytest.raises(ValueError, match=rf"Row 1 .*t\.parquet.*{n}-token prompt.*data\.max_prompt_length=32"):
        dataset[1]


@pytest.mark.parametrize("mode", ["left", "right", "middle"])
def test_truncation_modes(tokenizer, tmp_path, mode):
    path = write_parquet(tmp_path / "t.parquet", make_rows([LONG]))
    item = RLHFDataset(path, tokenizer, data_config(truncation=mode))[0]
    ids = prompt_ids(tokenizer, LONG)
    expected = {"left": ids[-32:], "right": ids[:32], "middle": ids[:16] + ids[-16:]}[mode]
    assert item["input_ids"].tolist() == expected == item["raw_prompt_ids"]
    assert item["attention_mask"].all()


def test_filter_overlong_prompts_drops_and_reports(tokenizer, tmp_path, capsys):
    path = write_parquet(tmp_path / "t.parquet", make_rows([SHORT, LONG, SHORT]))
    dataset = RLHFDataset(path, tokenizer, data_config(filter_overlong_prompts=True))
    assert len(dataset) == 2
    assert "dropped 1 of 3 prompts" in capsys.readouterr().out


def test_apply_chat_template_kwargs_reach_the_template(tokenizer, tmp_path):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ suffix }}"
    path = write_parquet(tmp_path / "t.parquet", make_rows([SHORT]))
    config = data_config(return_full_prompt=True, apply_chat_template_kwargs={"suffix": " answer"})
    assert RLHFDataset(path, tok, config)[0]["full_prompts"] == SHORT + " answer"


def test_plain_string_prompt_column(tokenizer, tmp_path):
    path = write_parquet(tmp_path / "t.parquet", [{"question": SHORT, "data_source": "x"}])
    item = RLHFDataset(path, tokenizer, data_config(prompt_key="question"))[0]
    assert item["raw_prompt_ids"] == prompt_ids(tokenizer, SHORT)


def test_collate_fn_stacks_tensors_and_keeps_dicts_per_row(tokenizer, tmp_path):
    path = write_parquet(tmp_path / "t.parquet", make_rows([SHORT, "what is 1 + 1"]))
    dataset = RLHFDataset(path, tokenizer, data_config(return_raw_chat=True))
    batch = collate_fn([dataset[0], dataset[1]])
    assert batch["input_ids"].shape == (2, 32) and batch["input_ids"].dtype == torch.long
    assert batch["reward_model"].dtype == object and batch["reward_model"].shape == (2,)
    assert batch["reward_model"][1] == {"style": "rule", "ground_truth": "1"}
    assert batch["raw_prompt"].shape == (2,) and batch["raw_prompt"][0] == [{"role": "user", "content": SHORT}]
    assert batch["raw_prompt_ids"].shape == (2,) and isinstance(batch["raw_prompt_ids"][0], list)
    assert batch["index"].tolist() == [100, 101]


def test_collate_fn_keeps_equal_length_lists_one_per_row():
    batch = collate_fn([{"tags": [1, 2]}, {"tags": [3, 4]}])
    assert batch["tags"].shape == (2,) and batch["tags"][1] == [3, 4]


def test_missing_file_names_path_and_config_key(tokenizer, tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet.*data\.train_files / data\.val_files"):
        RLHFDataset(str(missing), tokenizer, data_config())


def test_malformed_parquet_names_the_file(tokenizer, tmp_path):
    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.parquet.*as parquet"):
        RLHFDataset(str(bad), tokenizer, data_config())


def test_missing_prompt_column_names_column_file_and_columns(tokenizer, tmp_path):
    path = write_parquet(tmp_path / "t.parquet", [{"question": SHORT, "data_source": "x"}])
    with pytest.raises(ValueError) as info:
        RLHFDataset(path, tokenizer, data_config())
    message = str(info.value)
    assert "'prompt'" in message and "t.parquet" in message and "data.prompt_key" in message
    assert "['question', 'data_source']" in message


def test_remote_path_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="hdfs://.*not supported"):
        RLHFDataset("hdfs://cluster/data/train.parquet", tokenizer, data_config())


def test_get_dataset_class_default_and_custom(tmp_path):
    assert get_dataset_class(OmegaConf.create({"custom_cls": {"path": None, "name": None}})) is RLHFDataset
    module = tmp_path / "my_dataset.py"
    module.write_text(
        "from torch.utils.data import Dataset\nclass MyDataset(Dataset):\n    pass\nclass NotADataset:\n    pass\n"
    )
    cls = get_dataset_class(OmegaConf.create({"custom_cls": {"path": str(module), "name": "MyDataset"}}))
    assert cls.__name__ == "MyDataset"
    with pytest.raises(TypeError, match="NotADataset"):
        get_dataset_class(OmegaConf.create({"custom_cls": {"path": str(module), "name": "NotADataset"}}))


MAIN_PPO_VALID = [
    "actor_rollout_ref.rollout.name=hf",
    "algorithm.adv_estimator=grpo",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=2",
]


def _run_main_ppo(*overrides: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "1"}
    env.pop("RAY_ADDRESS", None)
    import tempfile

    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]
    cwd = tempfile.mkdtemp(prefix="rl_dataset_")  # Hydra's outputs/ folder goes there, not into the checkout
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# ---- multi-modal rows ----------------------------------------------------------------------------------------------
def test_rows_with_images_are_refused_naming_column_and_file(tmp_path):
    import pandas as pd

    from verl.utils.dataset.rl_dataset import RLHFDataset

    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "images": [], "data_source": "x"},
        {"prompt": [{"role": "user", "content": "see"}], "images": [{"bytes": b"\x89PNG"}], "data_source": "x"},
    ]
    path = tmp_path / "mm.parquet"
    pd.DataFrame(rows).to_parquet(path)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 16})
    with pytest.raises(ValueError) as info:
        RLHFDataset(str(path), tokenizer=None, config=config)
    assert "images" in str(info.value) and "mm.parquet" in str(info.value)


def test_empty_multi_modal_columns_are_fine(tmp_path):
    import pandas as pd

    from verl.utils.dataset.rl_dataset import RLHFDataset

    rows = [{"prompt": [{"role": "user", "content": "hi"}], "images": [], "videos": None, "data_source": "x"}]
    path = tmp_path / "text.parquet"
    pd.DataFrame(rows).to_parquet(path)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 16})
    assert len(RLHFDataset(str(path), tokenizer=None, config=config)) == 1


def test_main_ppo_refuses_multi_modal_rows_before_ray_starts(tiny_model_dir, tmp_path):
    import pandas as pd

    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "videos": [{"video": "clip.mp4"}] if i == 3 else [],
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "video.parquet")
    overrides = [
        *MAIN_PPO_VALID,
        "trainer.device=cpu",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.train_files={tmp_path}/video.parquet",
        f"data.val_files={tmp_path}/video.parquet",
    ]
    result = _run_main_ppo(*overrides)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "'videos'" in result.stderr and "video.parquet" in result.stderr, output[-2000:]
    assert "Started a local Ray instance" not in output
