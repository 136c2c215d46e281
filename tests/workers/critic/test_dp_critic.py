"""Tests for verl/workers/critic/dp_critic.py with a one-output value head on the tiny backbone."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from verl.protocol import DataProto
from verl.workers.critic import DataParallelPPOCritic

PROMPT_LEN, RESPONSE_LEN, PAD = 5, 4, 3


@pytest.fixture()
def value_model(tiny_model_dir):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)
    return AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1, dtype=torch.float32)


def _critic_config(**overrides):
    cfg = {
        "ppo_mini_batch_size": 4,
        "ppo_micro_batch_size_per_gpu": 2,
        "use_dynamic_bsz": False,
        "ppo_max_token_len_per_gpu": 64,
        "ppo_epochs": 1,
        "cliprange_value": 0.5,
        "loss_agg_mode": "token-mean",
        "grad_clip": 1.0,
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _make_batch(vocab: int, bs: int = 4) -> DataProto:
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(4, vocab, (bs, PROMPT_LEN), generator=g)
    responses = torch.randint(4, vocab, (bs, RESPONSE_LEN), generator=g)
    response_mask = torch.ones(bs, RESPONSE_LEN, dtype=torch.long)
    for row in range(bs):
        response_mask[row, RESPONSE_LEN - row % 3 :] = 0
    responses = responses.masked_fill(response_mask == 0, PAD)
    attention_mask = torch.cat([torch.ones(bs, PROMPT_LEN, dtype=torch.long), response_mask], dim=-1)
    return DataProto.from_dict(
        tensors={
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=-1),
            "attention_mask": attention_mask,
            "position_ids": torch.clamp(attention_mask.cumsum(-1) - 1, min=0),
            "response_mask": response_mask,
            "returns": torch.randn(bs, RESPONSE_LEN, generator=g) * response_mask,
        },
        meta_info={"micro_batch_size": 3, "use_dynamic_bsz": False, "max_token_len": 64},
    )


def test_compute_values_slices_the_response_positions_and_masks_padding(value_model):
    critic = DataParallelPPOCritic(_critic_config(), value_model, critic_optimizer=None)
    data = _make_batch(value_model.config.vocab_size)
    values = critic.compute_values(data)
    assert values.shape == (4, RESPONSE_LEN)
    with torch.no_grad():
        full = value_model(
            input_ids=data.batch["input_ids"],
            attention_mask=data.batch["attention_mask"],
            position_ids=data.batch["position_ids"],
        ).logits.squeeze(-1)  # (bs, T)
    expected = full[:, PROMPT_LEN - 1 : -1] * data.batch["response_mask"]
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    assert torch.all(values[data.batch["response_mask"] == 0] == 0)


def test_compute_values_with_dynamic_bsz_keeps_row_order(value_model):
    critic = DataParallelPPOCritic(_critic_config(), value_model, critic_optimizer=None)
    data = _make_batch(value_model.config.vocab_size)
    fixed = critic.compute_values(data)
    data.meta_info.update(use_dynamic_bsz=True, max_token_len=PROMPT_LEN + RESPONSE_LEN)
    torch.testing.assert_close(critic.compute_values(data), fixed, atol=1e-5, rtol=0)


def test_update_critic_reduces_the_value_loss_and_reports_metrics(value_model):
    # A wide clip range so the regression is not held back by the trust region around the old values.
    critic = DataParallelPPOCritic(
        _critic_config(cliprange_value=100.0), value_model, torch.optim.Adam(value_model.parameters(), lr=3e-3)
    )
    data = _make_batch(value_model.config.vocab_size)
    data.batch["values"] = critic.compute_values(data)
    losses = []
    for _ in range(8):
        metrics = critic.update_critic(data)
        losses.append(metrics["critic/vf_loss"][0])
    assert losses[-1] < 0.5 * losses[0]
    assert set(metrics) >= {"critic/vf_loss", "critic/vf_clipfrac", "critic/vpred_mean", "critic/grad_norm"}
    assert len(metrics["critic/vf_clipfrac"]) == 2  # two micro-batches of 2
    assert len(metrics["critic/grad_norm"]) == 1


def test_critic_rejects_a_multi_channel_head(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    critic = DataParallelPPOCritic(_critic_config(), lm, critic_optimizer=None)
    with pytest.raises(ValueError, match="value head"):
        critic.compute_values(_make_batch(lm.config.vocab_size))
