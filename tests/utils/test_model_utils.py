"""verl.utils.model: position ids, config overrides, generation config, model size."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from verl.utils.model import (
    compute_position_id_with_mask,
    get_generation_config,
    get_model_size,
    update_model_config,
)


def test_position_ids_literal_left_and_right_padding():
    # cumsum - 1 clipped at 0: [0,0,1,1,1] -> cumsum [0,0,1,2,3] -> [0,0,0,1,2]; [1,1,1,0] -> [0,1,2,2]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert compute_position_id_with_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]


def test_position_ids_equal_arange_on_real_tokens_whatever_the_padding():
    # Invariance: the real tokens of a row get 0..n-1 however much left padding precedes them.
    for pad in range(4):
        mask = torch.tensor([[0] * pad + [1] * 5])
        pos = compute_position_id_with_mask(mask)
        assert pos[0, pad:].tolist() == list(range(5))


def test_update_model_config_recurses_into_sub_configs_and_dict_fields():
    cfg = SimpleNamespace(
        hidden_size=8, text_config=SimpleNamespace(vocab_size=10, dropout=0.1), rope_scaling={"type": "linear"}
    )
    update_model_config(
        cfg, {"hidden_size": 16, "text_config": {"vocab_size": 32}, "rope_scaling": {"factor": 2.0}, "new_key": 1}
    )
    assert cfg.hidden_size == 16 and cfg.new_key == 1
    assert cfg.text_config.vocab_size == 32 and cfg.text_config.dropout == 0.1
    assert cfg.rope_scaling == {"type": "linear", "factor": 2.0}


def test_update_model_config_on_a_transformers_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64)
    update_model_config(cfg, {"attention_dropout": 0.25, "pad_token_id": 3})
    assert cfg.attention_dropout == 0.25 and cfg.pad_token_id == 3


def test_get_generation_config_reads_saved_file_and_returns_none_when_absent(tmp_path):
    from transformers import GenerationConfig

    GenerationConfig(temperature=0.7, do_sample=True, eos_token_id=5).save_pretrained(tmp_path / "with")
    loaded = get_generation_config(str(tmp_path / "with"))
    assert loaded.temperature == 0.7 and loaded.eos_token_id == 5
    (tmp_path / "without").mkdir()
    assert get_generation_config(str(tmp_path / "without")) is None


def test_get_model_size_literal():
    # Linear(10, 100): 10*100 weights + 100 biases = 1100 -> 1.1K
    model = torch.nn.Linear(10, 100)
    assert get_model_size(model) == (pytest.approx(1.1), "K")
    assert get_model_size(model, scale="") == (1100.0, "")
    with pytest.raises(ValueError):
        get_model_size(model, scale="T")
