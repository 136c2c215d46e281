"""peft LoRA on the tiny model (``verl.utils.lora``): which layers get adapters, the merged weights a rollout engine
loads, the adapter directory a checkpoint writes and ``lora_adapter_path`` reads back, and the reference view
(adapters disabled)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")

from transformers import AutoModelForCausalLM  # noqa: E402

from verl.utils.lora import (  # noqa: E402
    adapters_disabled,
    apply_lora,
    is_lora_model,
    lora_scalings,
    merged_state_dict,
    save_adapter,
)
from verl.workers.config import HFModelConfig  # noqa: E402

LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _cfg(**kw) -> HFModelConfig:
    return HFModelConfig(**{"path": "/unused", "lora_rank": 4, "lora_alpha": 8, **kw})


def _ids() -> torch.Tensor:
    return torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(0))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _perturb_adapters(model, seed: int = 1) -> None:
    """Non-zero B matrices (peft starts them at zero), as after some training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def test_all_linear_adapts_every_projection_freezes_the_base_and_starts_at_the_base(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _cfg())
    assert is_lora_model(model) and not is_lora_model(base)
    scalings = lora_scalings(model)
    assert {name.rsplit(".", 1)[-1] for name in scalings} == LINEAR  # lm_head is not adapted
    assert set(scalings.values()) == {2.0}  # lora_alpha / lora_rank
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    ids = _ids()
    assert torch.equal(_logits(model, ids), _logits(base, ids))  # B = 0: the adapted model starts as the base


def test_target_and_exclude_modules_choose_the_adapted_layers(tiny_model_dir):
    model = apply_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        _cfg(target_modules=["q_proj", "v_proj", "down_proj"], exclude_modules=["down_proj"]),
    )
    assert {name.rsplit(".", 1)[-1] for name in lora_scalings(model)} == {"q_proj", "v_proj"}


def test_merged_weights_reproduce_the_adapted_model_and_disabling_gives_the_base(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _cfg())
    _perturb_adapters(model)
    ids = _ids()
    adapted = _logits(model, ids)
    assert (adapted - _logits(base, ids)).abs().max() > 1e-2  # the adapters do change the outputs

    merged = merged_state_dict(model.state_dict(), lora_scalings(model))
    assert set(merged) == set(base.state_dict())  # plain Hugging Face names, no adapter tensors
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain.load_state_dict(merged)
    assert torch.allclose(_logits(plain, ids), adapted, atol=1e-5)

    with adapters_disabled(model):
        assert torch.equal(_logits(model, ids), _logits(base, ids))
    assert torch.equal(_logits(model, ids), adapted)  # enabled again after the block


def test_saved_adapter_loads_with_peft_and_as_lora_adapter_path(tiny_model_dir, tmp_path):
    from peft import PeftModel

    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _cfg())
    _perturb_adapters(model)
    save_adapter(model, model.state_dict(), str(tmp_path / "adapter"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (
        config["r"] == 4
        and config["lora_alpha"] == 8
        and (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    )
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == 2 * len(lora_scalings(model))  # an A and a B for every adapted layer
    ids = _ids()
    want = _logits(model, ids)

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    assert torch.allclose(_logits(peft_model, ids), want, atol=1e-6)

    resumed = apply_lora(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), _cfg(lora_adapter_path=str(tmp_path / "adapter"))
    )
    assert torch.allclose(_logits(resumed, ids), want, atol=1e-6)
    assert any(p.requires_grad for n, p in resumed.named_parameters() if "lora_B" in n)  # it keeps training


def test_lora_adapter_path_errors_name_the_key(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lora_adapter_path=.*no adapter_config.json"):
        apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), _cfg(lora_adapter_path=str(tmp_path)))
    with pytest.raises(ValueError, match=r"lora_adapter_path=.*lora_rank=0"):
        HFModelConfig(path="/unused", lora_adapter_path=str(tmp_path))


def test_v09_lora_block_maps_megatron_module_names_and_folds_into_the_flat_keys(tiny_model_dir):
    from verl.workers.config import LoraConfig

    block = LoraConfig(rank=4, alpha=8, dropout=0.1, target_modules=["linear_qkv", "linear_fc2"])
    cfg = HFModelConfig(path="/unused", lora=block)
    assert (cfg.lora_rank, cfg.lora_alpha) == (4, 8)
    assert cfg.target_modules == ["q_proj", "k_proj", "v_proj", "down_proj"]
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), cfg)
    assert {name.rsplit(".", 1)[-1] for name in lora_scalings(model)} == {"q_proj", "k_proj", "v_proj", "down_proj"}
    peft_config = model.peft_config["default"]
    assert peft_config.r == 4 and peft_config.lora_alpha == 8 and peft_config.lora_dropout == 0.1
    with pytest.raises(ValueError, match=r"lora_rank=8 and model.lora.rank=4 disagree"):
        HFModelConfig(path="/unused", lora_rank=8, lora=block)


def test_v09_lora_spelling_through_the_trainer_config():
    from verl.trainer.config.build import build_trainer_config
    from verl.utils.config import compose_config

    overrides = [
        "actor_rollout_ref.model.path=/m",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.model.lora.rank=16",
        "actor_rollout_ref.model.lora.alpha=32",
    ]
    model = build_trainer_config(compose_config(overrides=overrides), check=False).actor_rollout_ref.model
    assert (model.lora_rank, model.lora_alpha) == (16, 32)
    assert model.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
