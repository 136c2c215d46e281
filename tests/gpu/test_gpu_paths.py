"""CUDA paths of the engine contract and the padding-free forward (``gpu`` marker; skipped without a CUDA device).

Run by ``tests/gpu/run.sh`` on a GPU machine; each test prints its figures.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(vocab: int, bs: int = 8, prompt_len: int = 48, response_len: int = 32):
    from verl.protocol import DataProto

    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, vocab, (bs, prompt_len), generator=g)
    responses = torch.randint(4, vocab, (bs, response_len), generator=g)
    prompt_mask = torch.ones(bs, prompt_len, dtype=torch.long)
    response_mask = torch.ones(bs, response_len, dtype=torch.long)
    for row in range(bs):
        prompt_mask[row, : (5 * row) % prompt_len] = 0
        response_mask[row, max(1, response_len - 3 * row) :] = 0
    attention_mask = torch.cat([prompt_mask, response_mask], dim=-1)
    return DataProto.from_dict(
        tensors={
            "prompts": prompts.masked_fill(prompt_mask == 0, 3),
            "responses": responses.masked_fill(response_mask == 0, 3),
            "input_ids": torch.cat([prompts, responses], -1).masked_fill(attention_mask == 0, 3),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
        },
        meta_info={"temperature": 1.0, "micro_batch_size": 4, "use_dynamic_bsz": False, "max_token_len": 4096},
    ).to("cuda")


@pytest.mark.parametrize(
    "dtype, attn",
    [
        (torch.float32, "sdpa"),
        (torch.bfloat16, "sdpa"),
        pytest.param(
            torch.bfloat16,
            "flash_attention_2",
            marks=pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed"),
        ),
    ],
)
def test_packed_log_probs_equal_padded_on_cuda(tiny_model_dir, dtype, attn):
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from verl.workers.actor import DataParallelPPOActor

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation=attn).cuda()
    data = _batch(model.config.vocab_size)
    out = {}
    for packed in (False, True):
        cfg = OmegaConf.create(
            {"ppo_mini_batch_size": 8, "ppo_micro_batch_size_per_gpu": 4, "use_remove_padding": packed}
        )
        out[packed] = DataParallelPPOActor(cfg, model).compute_log_prob(data)["log_probs"]
    mask = data.batch["response_mask"].bool()
    diff = (out[True] - out[False])[mask].abs().max().item()
    print(f"packed vs padded log-probs on CUDA ({dtype}, {attn}): max |diff| {diff:.2e}")
    assert diff < (1e-5 if dtype == torch.float32 else 5e-2)


def test_hf_engine_samples_what_generate_samples_on_cuda(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from verl.workers.rollout.engine import SamplingParams
    from verl.workers.rollout.hf_engine import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).cuda().eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tok("count one two")["input_ids"], tok("say yes please")["input_ids"]]
    engine = HFEngine(model, eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(5)
    ours = engine.generate(prompts, [SamplingParams(16, 0.8, top_k=20, stop_token_ids=(tok.eos_token_id,))] * 2)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts]).cuda()
    mask = (ids != tok.pad_token_id).long()
    config = GenerationConfig(
        do_sample=True, temperature=0.8, top_k=20, top_p=1.0, max_new_tokens=16, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    saved, model.generation_config = model.generation_config, GenerationConfig()
    torch.manual_seed(5)
    ref = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:]
    model.generation_config = saved
    for row, out in zip(ref.tolist(), ours):
        n = len(out.token_ids)
        assert row[:n] == out.token_ids


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed")
def test_ulysses_flash_varlen_attention_equals_sdpa_with_the_packed_mask():
    """Ulysses' attention on a flash-attn model (verl.utils.ulysses.flash_varlen_attention: the varlen kernel over
    the packed row's sequences) against sdpa with the dense block-diagonal causal mask the CPU path uses."""
    from verl.utils.ulysses import SequenceParallelContext, flash_varlen_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [7, 30, 1, 18]
    positions = torch.cat([torch.arange(n) for n in lengths]).view(1, -1).cuda()
    q, k, v = (torch.randn(1, 4, sum(lengths), 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    ctx = SequenceParallelContext(group=None, position_ids=positions)
    got = flash_varlen_attention(q, k, v, ctx, 0.0, None)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask)
    gap = (got.float() - want.float()).abs().max().item()
    print(f"ulysses flash varlen vs sdpa: max |diff| {gap:.2e} (bf16)")
    assert got.shape == want.shape and gap < 2e-2
