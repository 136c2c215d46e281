"""Quick standalone smoke test (~15 s): the pieces of one GRPO step, in one process, on the tiny model.

Run with ``python tests/quick_test.py``; exits non-zero on the first failed check. The pytest suite covers each
piece in depth; this script is the fast "is anything fundamentally broken" signal and doubles as a reading guide
for how a batch flows through one step. The last three checks cover logit capture (``sglang_with_logit``): the
modules import, values are extracted from an SGLang-shaped response, and the rollout registry resolves.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl import DataProto
    from verl.trainer.ppo import core_algos
    from verl.utils.model import compute_position_id_with_mask
    from verl.utils.testing.tiny import build_tiny_model
    from verl.workers.actor.dp_actor import DataParallelPPOActor
    from verl.workers.rollout.hf_rollout import HFRollout

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_model(tmp, seed=0)
        tok = AutoTokenizer.from_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)

    # 1. prompts -> DataProto (left padded), repeated n=2 times per prompt
    chats = [[{"role": "user", "content": "Repeat 7"}], [{"role": "user", "content": "Say the digit 7 again"}]]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="pt", padding=True)
    prompts = DataProto.from_dict(
        {
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "position_ids": compute_position_id_with_mask(enc.attention_mask),
        },
        meta_info={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "do_sample": True},
    ).repeat(2, interleave=True)

    # 2. generate
    rollout_cfg = OmegaConf.create(
        {
            "response_length": 8,
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": -1,
            "micro_batch_size": 4,
            "do_sample": True,
            "calculate_log_probs": True,
            "val_kwargs": {"temperature": 0, "top_p": 1.0, "top_k": -1, "do_sample": False},
        }
    )
    out = HFRollout(model, rollout_cfg).generate_sequences(prompts)
    assert out.batch["responses"].shape == (4, 8), out.batch["responses"].shape
    assert out.batch["input_ids"].shape[1] == enc.input_ids.shape[1] + 8
    print("ok  generate: responses", tuple(out.batch["responses"].shape))

    # 3. old log-probs recomputed by the actor equal the rollout's own log-probs
    actor_cfg = OmegaConf.create(
        {
            "ppo_mini_batch_size": 4,
            "ppo_micro_batch_size_per_gpu": 4,
            "ppo_epochs": 1,
            "clip_ratio": 0.2,
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.2,
            "clip_ratio_c": 3.0,
            "loss_agg_mode": "token-mean",
            "entropy_coeff": 0.0,
            "use_kl_loss": False,
            "kl_loss_coef": 0.0,
            "kl_loss_type": "low_var_kl",
            "grad_clip": 1.0,
            "use_dynamic_bsz": False,
            "ppo_max_token_len_per_gpu": 4096,
            "shuffle": False,
            "policy_loss": {"loss_mode": "vanilla"},
        }
    )
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    actor = DataParallelPPOActor(actor_cfg, model, optim)
    out.meta_info.update({"micro_batch_size": 4, "temperature": 1.0, "use_dynamic_bsz": False, "max_token_len": 4096})
    logp = actor.compute_log_prob(out, calculate_entropy=True)["log_probs"]
    mask = out.batch["response_mask"].bool()
    err = (logp - out.batch["rollout_log_probs"])[mask].abs().max().item()
    assert err < 1e-4, err
    print(f"ok  old_log_prob: max |actor - rollout| = {err:.2e}")

    # 4. rewards -> GRPO advantages -> one PPO update
    scores = torch.tensor([1.0, 0.0, 0.5, 0.5])
    token_rewards = torch.zeros_like(logp)
    last = out.batch["response_mask"].sum(-1) - 1
    token_rewards[torch.arange(4), last] = scores
    uid = np.array(["a", "a", "b", "b"], dtype=object)
    adv, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, out.batch["response_mask"], uid)
    # group a: scores (1, 0) -> mean 0.5, unbiased std 0.7071 -> advantages (+0.7071, -0.7071); group b: all zero
    assert torch.allclose(adv[0][mask[0]], torch.tensor(0.70710), atol=1e-3)
    assert torch.all(adv[2:] == 0)
    out.batch["old_log_probs"] = logp
    out.batch["advantages"] = adv
    metrics = actor.update_policy(out)
    assert np.isfinite(np.mean(metrics["actor/pg_loss"]))
    print(f"ok  update_policy: pg_loss={np.mean(metrics['actor/pg_loss']):.4f}")

    check_logit_imports()
    check_sglang_extraction()
    check_rollout_registry()
    print("quick test passed")
    return 0


def check_logit_imports() -> None:
    """5. Every logit-capture module imports on CPU (none of them needs SGLang or vLLM at import time)."""
    import importlib

    modules = {
        "verl.workers.rollout.logit_capture": ["CaptureSpec", "TokenCapture", "capture_from_sglang", "bytes_per_token"],
        "verl.workers.rollout.schemas": ["AsyncRolloutRequest"],
        "verl.workers.rollout.multiturn": ["run_multiturn", "requests_to_batch", "turn_sampling"],
        "verl.workers.rollout.engine": ["InferenceEngine", "SteppableEngine", "SamplingParams", "GenerationOutput"],
        "verl.workers.rollout.hf_engine": ["HFEngine"],
        "verl.workers.rollout.sglang_rollout.adapter": ["SGLangAdapter", "parse_generate_output"],
        "verl.interactions.base": ["BaseInteraction"],
        "verl.interactions.multiturn_dialog_interaction": ["MultiTurnDialogInteraction"],
        "verl.interactions.utils.interaction_registry": ["initialize_interactions_from_config"],
    }
    for name, symbols in modules.items():
        module = importlib.import_module(name)
        missing = [s for s in symbols if not hasattr(module, s)]
        assert not missing, f"{name} lacks {missing}"
    print(f"ok  logit imports: {len(modules)} modules")


def check_sglang_extraction() -> None:
    """6. Values come out of a response shaped exactly as SGLang 0.5.2 returns it (top_logprobs_num=2)."""
    import torch

    from verl.workers.rollout.logit_capture import CaptureSpec, capture_from_sglang

    response = {
        "output_ids": [40, 41, 2],
        "meta_info": {
            "id": "r0",
            "finish_reason": {"type": "stop", "matched": 2},
            "prompt_tokens": 3,
            "completion_tokens": 3,
            "input_token_logprobs": [(None, 12, None)],  # the first input position never has a logprob
            "output_token_logprobs": [(-1.5, 40, None), (-0.25, 41, None), (-0.75, 2, None)],
            "input_top_logprobs": [None],
            "output_top_logprobs": [
                [(-0.5, 7, None), (-1.5, 40, None)],
                [(-0.25, 41, None), (-2.0, 9, None)],
                [(-0.75, 2, None), (-1.0, 8, None)],
            ],
        },
    }
    sampled = capture_from_sglang(response, CaptureSpec("logprob"))
    assert sampled.token_ids.tolist() == [40, 41, 2] and sampled.logprobs.tolist() == [-1.5, -0.25, -0.75]
    top = capture_from_sglang(response, CaptureSpec("topk", k=2))
    assert top.topk_logprobs.tolist() == [[-0.5, -1.5], [-0.25, -2.0], [-0.75, -1.0]]
    assert top.topk_ids.tolist() == [[7, 40], [41, 9], [2, 8]]
    assert torch.isfinite(top.topk_logprobs).all()
    print("ok  sglang extraction: logprob (3,) and topk (3, 2) from output_token/top_logprobs")


def check_rollout_registry() -> None:
    """7. ``sglang_with_logit`` resolves where SGLang is installed, else names the pip extra; ``hf`` is HFRollout."""
    import importlib.util

    from verl.workers.rollout.base import BaseRollout, get_rollout_class
    from verl.workers.rollout.hf_rollout import HFRollout

    assert get_rollout_class("hf", "sync") is HFRollout and get_rollout_class("hf", "async") is HFRollout
    try:
        cls = get_rollout_class("sglang_with_logit", "async")
    except ImportError as err:
        assert importlib.util.find_spec("sglang") is None, f"SGLang is installed but the import failed: {err}"
        assert "verl[sglang]" in str(err), f"the ImportError should name the pip extra verl[sglang]: {err}"
        print("ok  registry: hf -> HFRollout; sglang_with_logit -> ImportError naming verl[sglang] (not installed)")
        return
    assert issubclass(cls, BaseRollout) and cls.__name__ == "SGLangRolloutWithLogit", cls
    print("ok  registry: hf -> HFRollout; sglang_with_logit -> SGLangRolloutWithLogit")


if __name__ == "__main__":
    sys.exit(main())
