"""Padding-free training (``use_remove_padding``): packed forwards against the padded ones, and token-budget packing.

The packed forward runs the real tokens of a micro-batch as one row with per-sequence positions (transformers keeps
the sequences apart: a block-diagonal causal mask with sdpa/eager on CPU, flash-attn varlen on CUDA).
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from verl.protocol import DataProto
from verl.utils.attention_utils import index_first_axis, pad_input, unpad_input
from verl.workers.actor import DataParallelPPOActor
from verl.workers.actor.dp_actor import forward_packed

PAD = 3


def _actor_config(remove_padding: bool, **overrides):
    cfg = {
        "ppo_mini_batch_size": 6,
        "ppo_micro_batch_size_per_gpu": 3,
        "use_dynamic_bsz": False,
        "ppo_max_token_len_per_gpu": 64,
        "policy_loss": {"loss_mode": "vanilla"},
        "loss_agg_mode": "token-mean",
        "entropy_coeff": 0.01,
        "use_kl_loss": False,
        "use_remove_padding": remove_padding,
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _batch(vocab: int, bs: int = 6, prompt_len: int = 9, response_len: int = 7, seed: int = 0) -> DataProto:
    """Left-padded prompts and right-padded responses of different lengths (one row with a 1-token response)."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, vocab, (bs, prompt_len), generator=g)
    responses = torch.randint(4, vocab, (bs, response_len), generator=g)
    prompt_mask = torch.ones(bs, prompt_len, dtype=torch.long)
    response_mask = torch.ones(bs, response_len, dtype=torch.long)
    for row in range(bs):
        prompt_mask[row, : (2 * row) % prompt_len] = 0
        response_mask[row, max(1, response_len - row) :] = 0
    prompts = prompts.masked_fill(prompt_mask == 0, PAD)
    responses = responses.masked_fill(response_mask == 0, PAD)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=-1)
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=-1),
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "response_mask": response_mask,
            "advantages": torch.randn(bs, response_len, generator=g) * response_mask,
        },
        meta_info={"temperature": 0.8, "micro_batch_size": 3, "use_dynamic_bsz": False, "max_token_len": 64},
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_unpad_and_pad_are_inverse_for_any_padding_layout():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]])
    hidden = torch.arange(18 * 2, dtype=torch.float32).view(3, 6, 2)
    packed, indices, cu_seqlens, longest = unpad_input(hidden, mask)
    assert packed.shape == (12, 2) and cu_seqlens.tolist() == [0, 3, 9, 12] and longest == 6
    assert cu_seqlens.dtype == torch.int32
    torch.testing.assert_close(packed, hidden[mask.bool()])
    torch.testing.assert_close(index_first_axis(hidden.view(18, 2), indices), packed)
    restored = pad_input(packed, indices, 3, 6)
    torch.testing.assert_close(restored, hidden * mask.unsqueeze(-1))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_log_probs_and_entropy_equal_the_padded_ones(model, temperature):
    data = _batch(model.config.vocab_size)
    data.meta_info["temperature"] = temperature
    padded = DataParallelPPOActor(_actor_config(False), model).compute_log_prob(data, calculate_entropy=True)
    packed = DataParallelPPOActor(_actor_config(True), model).compute_log_prob(data, calculate_entropy=True)
    mask = data.batch["response_mask"].bool()
    diff = (packed["log_probs"] - padded["log_probs"])[mask].abs().max().item()
    print(f"T={temperature}: packed vs padded log-probs max |diff| {diff:.2e}")
    assert diff < 1e-5
    torch.testing.assert_close(packed["entropys"][mask], padded["entropys"][mask], atol=1e-5, rtol=0)


def test_packed_forward_sees_only_real_tokens_within_the_token_budget(model, monkeypatch):
    """Dynamic batch size with the padding-free forward: every forward is one packed row of real tokens, at most
    ppo_max_token_len_per_gpu long, the micro-batches together cover every real token once, and the log-probs equal
    the padded forward's."""
    data = _batch(model.config.vocab_size, bs=8, seed=1)
    budget = 40
    data.meta_info.update(use_dynamic_bsz=True, max_token_len=budget)
    seen = []
    real_forward = type(model).forward

    def recording(self, *args, **kwargs):
        seen.append((tuple(kwargs["input_ids"].shape), kwargs.get("attention_mask")))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", recording)
    packed = DataParallelPPOActor(_actor_config(True), model).compute_log_prob(data)
    monkeypatch.undo()
    assert len(seen) > 1, "the budget should need several micro-batches"
    assert all(shape[0] == 1 and shape[1] <= budget and mask is None for shape, mask in seen), seen
    assert sum(shape[1] for shape, _ in seen) == int(data.batch["attention_mask"].sum())
    padded = DataParallelPPOActor(_actor_config(False), model).compute_log_prob(data)
    mask = data.batch["response_mask"].bool()
    torch.testing.assert_close(packed["log_probs"][mask], padded["log_probs"][mask], atol=1e-5, rtol=0)


def test_a_packed_update_equals_a_padded_update(model):
    """One PPO mini-batch on each path: the same loss and gradient norm, and the same parameters afterwards."""
    results = {}
    for remove_padding in (False, True):
        module = copy.deepcopy(model)
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        actor = DataParallelPPOActor(_actor_config(remove_padding), module, optimizer)
        data = _batch(model.config.vocab_size, seed=2)
        data.batch["old_log_probs"] = actor.compute_log_prob(data)["log_probs"]
        metrics = actor.update_policy(data)
        results[remove_padding] = (metrics, dict(module.named_parameters()))
    (m_pad, p_pad), (m_pack, p_pack) = results[False], results[True]
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        a, b = torch.tensor(m_pad[key], dtype=torch.float64), torch.tensor(m_pack[key], dtype=torch.float64)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=key)
    worst = max((p_pack[n] - p_pad[n]).abs().max().item() for n in p_pad)
    assert worst < 1e-5, worst


def test_packed_values_equal_the_padded_ones(tiny_model_dir):
    from verl.utils.hf_models import build_value_model
    from verl.workers.critic.dp_critic import DataParallelPPOCritic

    critic_model = build_value_model(tiny_model_dir, dtype="fp32")
    data = _batch(512, seed=3)
    cfg = {"ppo_mini_batch_size": 6, "ppo_micro_batch_size_per_gpu": 3, "model": {"path": tiny_model_dir}}
    values = {}
    for remove_padding in (False, True):
        cfg["model"]["use_remove_padding"] = remove_padding
        critic = DataParallelPPOCritic(OmegaConf.create(cfg), critic_model, None)
        values[remove_padding] = critic.compute_values(data)
    mask = data.batch["response_mask"].bool()
    torch.testing.assert_close(values[True][mask], values[False][mask], atol=1e-5, rtol=0)


def test_packed_forward_refuses_rope_variants_and_multi_modal_rows(model):
    data = _batch(model.config.vocab_size)
    data.batch["position_ids"] = data.batch["position_ids"].unsqueeze(1).expand(-1, 3, -1).contiguous()
    with pytest.raises(ValueError, match=r"needs \(b, T\) position_ids"):
        forward_packed(model, data, 7)
