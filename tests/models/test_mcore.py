"""megatron-core on CPU: HF <-> megatron conversion, tensor-parallel slices, and logit parity with the HF model.

Needs the ``[megatron]`` extra (megatron-core); skipped without it. The tensor-parallel checks run the real
``torch.distributed`` launcher with two gloo ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core")

from verl.models.mcore import hf_to_mcore_state_dict, mcore_to_hf_state_dict, merge_tp_shards  # noqa: E402
from verl.models.mcore.weight_converter import tp_split_dim  # noqa: E402

WORKER = Path(__file__).with_name("mcore_tp_worker.py")


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _qwen2_like(hf_model):
    """The tiny Llama's weights with query/key/value biases added: the Qwen2 layout."""
    cfg = hf_model.config
    sd = dict(hf_model.state_dict())
    for i in range(cfg.num_hidden_layers):
        for p, rows in (("q", cfg.num_attention_heads), ("k", cfg.num_key_value_heads), ("v", cfg.num_key_value_heads)):
            sd[f"model.layers.{i}.self_attn.{p}_proj.bias"] = torch.randn(rows * cfg.head_dim)
    return sd


def _untied(hf_model):
    """The tiny model's config and weights with a separate output layer (``lm_head`` not tied to the embedding)."""
    cfg = hf_model.config.__class__.from_dict({**hf_model.config.to_dict(), "tie_word_embeddings": False})
    sd = dict(hf_model.state_dict())
    sd["lm_head.weight"] = torch.randn_like(sd["model.embed_tokens.weight"])
    return cfg, sd


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("variant", ["llama", "qkv_bias", "untied"])
def test_round_trip_is_exact_and_tp_slices_reassemble(hf_model, tp, variant):
    cfg = hf_model.config
    if variant == "untied":
        cfg, hf_sd = _untied(hf_model)
    else:
        hf_sd = _qwen2_like(hf_model) if variant == "qkv_bias" else dict(hf_model.state_dict())
    shards = [hf_to_mcore_state_dict(hf_sd, cfg, tp_rank=r, tp_size=tp) for r in range(tp)]
    for name, tensor in shards[0].items():
        dim = tp_split_dim(name)
        full = hf_to_mcore_state_dict(hf_sd, cfg)[name]
        expected = list(full.shape)
        if dim is not None:
            expected[dim] //= tp
        assert list(tensor.shape) == expected, name
    merged = merge_tp_shards(shards)
    back = mcore_to_hf_state_dict(merged, cfg)
    # a tied lm_head is the embedding (not repeated); an untied one is the vocabulary-split output layer
    reference = {k: v for k, v in hf_sd.items() if variant == "untied" or k != "lm_head.weight"}
    assert set(back) == set(reference)
    for name, tensor in reference.items():
        assert torch.equal(back[name], tensor), name


def test_fused_qkv_layout_groups_queries_with_their_key_value_head(hf_model):
    """Group g of linear_qkv holds that group's query heads, then its key head, then its value head."""
    cfg = hf_model.config
    hf_sd = dict(hf_model.state_dict())
    qkv = hf_to_mcore_state_dict(hf_sd, cfg)["decoder.layers.0.self_attention.linear_qkv.weight"]
    d, per = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads
    q, k = hf_sd["model.layers.0.self_attn.q_proj.weight"], hf_sd["model.layers.0.self_attn.k_proj.weight"]
    group1 = qkv[(per + 2) * d : 2 * (per + 2) * d]
    assert torch.equal(group1[: per * d], q[per * d : 2 * per * d])
    assert torch.equal(group1[per * d : (per + 1) * d], k[d : 2 * d])


def test_unsupported_models_are_refused_naming_the_field(hf_model):
    from verl.models.mcore import hf_to_mcore_config

    cfg = hf_model.config.__class__.from_dict(hf_model.config.to_dict())
    cfg.architectures = ["GPT2LMHeadModel"]
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        hf_to_mcore_config(cfg)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    with pytest.raises(ValueError, match="rope_type='llama3'"):
        hf_to_mcore_config(cfg)


@pytest.mark.parametrize("tp", [1, 2])
def test_megatron_logits_equal_hf_logits(tiny_model_dir, tp, tmp_path):
    """The GPTModel (TP=1 and TP=2 over two gloo ranks) gives the HF model's logits on padded batches, and its
    slices gathered from the ranks reassemble to the unsharded layout and the HF weights, exactly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp), "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(WORKER), tiny_model_dir, str(tp)]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line[len("REPORT ") :])
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["max_logit_diff"] < 1e-5, report["max_logit_diff"]
    assert report["reassembled"] and report["round_trip"]
    assert report["grad_sq_rank0"] > 0
    if tp == 2:
        assert report["local_shapes"]["embedding.word_embeddings.weight"][0] * 2 == 512


@pytest.mark.parametrize("tp, pp", [(1, 2), (2, 2), (2, 1)])
@pytest.mark.parametrize("variant", ["llama", "untied"])
def test_pipeline_stages_round_trip_exactly(hf_model, tp, pp, variant):
    """Each (TP slice, PP stage) of the converter: stages hold their layers renumbered from 0, the first the
    embedding, the last the final norm and the output layer (a copy of a tied embedding); merging the TP slices of
    each stage, then the stages, gives back the HF weights exactly."""
    from verl.models.mcore import merge_pp_stages

    cfg, hf_sd = _untied(hf_model) if variant == "untied" else (hf_model.config, dict(hf_model.state_dict()))
    layers, tied = int(cfg.num_hidden_layers), bool(cfg.tie_word_embeddings)
    stages = []
    for stage in range(pp):
        shards = [
            hf_to_mcore_state_dict(hf_sd, cfg, tp_rank=r, tp_size=tp, pp_rank=stage, pp_size=pp) for r in range(tp)
        ]
        local = sorted({int(k.split(".")[2]) for k in shards[0] if k.startswith("decoder.layers.")})
        assert local == list(range(layers // pp))
        assert ("embedding.word_embeddings.weight" in shards[0]) == (stage == 0)
        assert ("output_layer.weight" in shards[0]) == (stage == pp - 1 and (pp > 1 or not tied))
        stages.append(merge_tp_shards(shards))
    back = mcore_to_hf_state_dict(merge_pp_stages(stages, layers, tied), cfg)
    reference = {k: v for k, v in hf_sd.items() if variant == "untied" or k != "lm_head.weight"}
    assert set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="do not divide over pipeline_model_parallel_size=3"):
        hf_to_mcore_state_dict(hf_sd, cfg, pp_rank=0, pp_size=3)


def test_pipeline_stages_load_into_megatron_and_give_hf_logits(tiny_model_dir, tmp_path):
    """Two gloo ranks, one pipeline stage each: every stage's converted state dict loads into megatron-core's
    GPTModel stage with no missing or unexpected key, and one pipelined forward gives the HF model's logits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    worker = Path(__file__).with_name("mcore_pp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(worker), tiny_model_dir]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads(x[len("REPORT ") :]) for x in result.stdout.splitlines() if x.startswith("REPORT ")]
    by_stage = {r["stage"]: r for r in reports}
    assert set(by_stage) == {0, 1}
    for report in reports:
        assert report["missing"] == [] and report["unexpected"] == [] and report["round_trip"], report
    assert by_stage[0]["keys"] == ["embedding.word_embeddings.weight"]
    assert by_stage[1]["keys"] == ["decoder.final_layernorm.weight", "output_layer.weight"]
    assert by_stage[1]["max_logit_diff"] < 1e-5, by_stage[1]["max_logit_diff"]
