"""The offline tiny model builder: deterministic, loadable with Auto* classes, tokenizer faithful to its file."""

from __future__ import annotations

import filecmp

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl.utils.testing.tiny import build_tiny_model, synthetic_corpus


def test_same_seed_builds_identical_files(tmp_path, tiny_model_dir):
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert filecmp.cmp(again / name, f"{tiny_model_dir}/{name}", shallow=False), name


def test_auto_tokenizer_agrees_with_saved_tokenizer_json_and_round_trips(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = Tokenizer.from_file(f"{tiny_model_dir}/tokenizer.json")
    lines = synthetic_corpus(seed=123, n_lines=300) + ["Unseen wörds & symbols: 3.14 #### 42"]
    for line in lines:
        ids = tok(line, add_special_tokens=False).input_ids
        assert ids == raw.encode(line, add_special_tokens=False).ids, line
        assert tok.decode(ids) == line


def test_special_tokens_and_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.padding_side == "left"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_model_loads_generates_and_has_vllm_compatible_head_dim(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.config.head_dim >= 32
    # vocab equals tokenizer length, so every sampled id decodes to a real token
    assert model.config.vocab_size == len(tok)
    enc = tok(["hello there", "a"], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    prompt_len = enc.input_ids.shape[1]
    assert out.shape[0] == 2 and prompt_len < out.shape[1] <= prompt_len + 5
