"""examples/data_preprocess/gsm8k.py on a small synthetic local copy of GSM8K (no download)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from verl.utils.reward_score import default_compute_score

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "data_preprocess" / "gsm8k.py"


@pytest.fixture(scope="module")
def gsm8k_script():
    spec = importlib.util.spec_from_file_location("gsm8k_preprocess_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            answer = f"{i} + 1000 = {i + 1000}\n#### {i + 1000:,}"
            f.write(json.dumps({"question": f"What is {i} + 1000?", "answer": answer}) + "\n")


def test_directory_of_jsonl_becomes_verl_parquet(gsm8k_script, tmp_path):
    src = tmp_path / "grade_school_math" / "data"
    src.mkdir(parents=True)
    write_jsonl(src / "train.jsonl", 3)
    write_jsonl(src / "test.jsonl", 2)
    out = tmp_path / "out"
    written = gsm8k_script.main(
        ["--local_dataset_path", str(tmp_path / "grade_school_math"), "--local_save_dir", str(out)]
    )
    assert set(written) == {"train", "test"}
    train = pd.read_parquet(out / "train.parquet")
    assert len(train) == 3 and len(pd.read_parquet(out / "test.parquet")) == 2
    row = train.iloc[2]
    assert row["data_source"] == "openai/gsm8k" and row["ability"] == "math"
    assert row["prompt"][0]["role"] == "user"
    assert row["prompt"][0]["content"] == (
        'What is 2 + 1000? Let\'s think step by step and output the final answer after "####".'
    )
    assert row["reward_model"] == {"style": "rule", "ground_truth": "1002"}  # separator removed
    assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 2
    assert row["extra_info"]["question"] == "What is 2 + 1000?"
    assert default_compute_score(row["data_source"], "so #### 1002", row["reward_model"]["ground_truth"]) == 1.0


def test_single_parquet_file_in_hf_layout(gsm8k_script, tmp_path):
    src = tmp_path / "test-00000-of-00001.parquet"
    pd.DataFrame({"question": ["q?"], "answer": ["x\n#### 5"]}).to_parquet(src)
    written = gsm8k_script.main(["--local_dataset_path", str(src), "--local_save_dir", str(tmp_path / "o")])
    assert list(written) == ["test"]
    assert pd.read_parquet(written["test"]).iloc[0]["extra_info"]["split"] == "test"


def test_without_local_path_it_says_where_to_get_the_data(gsm8k_script, tmp_path):
    with pytest.raises(SystemExit) as info:
        gsm8k_script.main(["--local_save_dir", str(tmp_path)])
    assert "huggingface.co/datasets/openai/gsm8k" in str(info.value)


def test_missing_columns_are_named(gsm8k_script, tmp_path):
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"problem": "q", "solution": "#### 1"}) + "\n")
    with pytest.raises(SystemExit, match=r"missing column\(s\) \['question', 'answer'\].*problem"):
        gsm8k_script.main(["--local_dataset_path", str(src), "--local_save_dir", str(tmp_path / "o")])
