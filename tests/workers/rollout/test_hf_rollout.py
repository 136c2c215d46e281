"""Tests for verl/workers/rollout/hf_rollout.py on the tiny offline model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from verl.protocol import DataProto
from verl.workers.rollout.hf_rollout import HFRollout

RESPONSE_LENGTH = 8


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tokenizer


def _rollout_config(**overrides):
    cfg = {
        "name": "hf",
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "do_sample": True,
        "response_length": RESPONSE_LENGTH,
        "calculate_log_probs": False,
        "micro_batch_size": None,
        "val_kwargs": {"temperature": 0, "top_p": 1.0, "top_k": -1, "do_sample": False, "n": 1},
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _prompts(tokenizer, texts=("count one two", "say yes", "what is 3 + 4?", "red blue")) -> DataProto:
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True)  # left padding (tokenizer default)
    mask = enc["attention_mask"]
    position_ids = torch.clamp(mask.cumsum(-1) - 1, min=0)
    return DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids},
        non_tensors={"uid": np.array([f"u{i}" for i in range(len(texts))], dtype=object)},
        meta_info={"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
    )


def _teacher_forced_log_probs(model, out: DataProto, temperature: float, top_k: int = -1) -> torch.Tensor:
    with torch.no_grad():
        logits = model(
            input_ids=out.batch["input_ids"],
            attention_mask=out.batch["attention_mask"],
            position_ids=out.batch["position_ids"],
            use_cache=False,
        ).logits
    logits = logits[:, -RESPONSE_LENGTH - 1 : -1] / temperature
    if top_k > 0:  # the distribution actually sampled from: tokens below the k-th largest logit are removed
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    log_probs = F.log_softmax(logits.float(), dim=-1).gather(-1, out.batch["responses"].unsqueeze(-1)).squeeze(-1)
    return log_probs * out.batch["response_mask"]


def test_output_contract_shapes_padding_and_positions(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    prompts.meta_info["seed"] = 0
    out = HFRollout(model, _rollout_config()).generate_sequences(prompts)
    bs, p = prompts.batch["input_ids"].shape
    r = RESPONSE_LENGTH
    assert out.batch["prompts"].shape == (bs, p) and torch.equal(out.batch["prompts"], prompts.batch["input_ids"])
    assert out.batch["responses"].shape == (bs, r)
    assert out.batch["input_ids"].shape == (bs, p + r)
    assert out.batch["attention_mask"].shape == (bs, p + r)
    assert out.batch["position_ids"].shape == (bs, p + r)
    assert out.batch["response_mask"].shape == (bs, r)
    assert "rollout_log_probs" not in out.batch.keys()
    assert torch.equal(out.batch["input_ids"][:, p:], out.batch["responses"])
    assert torch.equal(out.batch["attention_mask"][:, p:], out.batch["response_mask"])
    # Positions continue from the last prompt position by one per response token.
    last = prompts.batch["position_ids"][:, -1:]
    assert torch.equal(out.batch["position_ids"][:, p:], last + torch.arange(1, r + 1))
    assert out.non_tensor_batch["uid"].tolist() == ["u0", "u1", "u2", "u3"]
    assert out.meta_info["timing"]["generate_sequences"] > 0


def test_response_mask_stops_at_first_eos_and_pads_after(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    # Half the vocabulary counts as EOS so most rows finish early; the contract must hold row by row.
    eos_ids = list(range(4, len(tokenizer) // 2))
    prompts.meta_info.update(eos_token_id=eos_ids, seed=1)
    out = HFRollout(model, _rollout_config()).generate_sequences(prompts)
    pad = tokenizer.pad_token_id
    finished_early = 0
    for row, mask in zip(out.batch["responses"].tolist(), out.batch["response_mask"].tolist()):
        eos_pos = next((i for i, t in enumerate(row) if t in eos_ids), None)
        if eos_pos is None:
            assert mask == [1] * RESPONSE_LENGTH
            continue
        finished_early += eos_pos < RESPONSE_LENGTH - 1
        assert mask == [1] * (eos_pos + 1) + [0] * (RESPONSE_LENGTH - eos_pos - 1)
        assert row[eos_pos + 1 :] == [pad] * (RESPONSE_LENGTH - eos_pos - 1)
    assert finished_early >= 1


def test_validate_is_greedy_and_deterministic(tiny):
    model, tokenizer = tiny
    rollout = HFRollout(model, _rollout_config(temperature=1.0))
    outs = []
    for seed in (0, 123):
        prompts = _prompts(tokenizer)
        prompts.meta_info.update(validate=True, seed=seed)
        outs.append(rollout.generate_sequences(prompts))
    assert torch.equal(outs[0].batch["responses"], outs[1].batch["responses"])
    # Greedy == argmax of the teacher-forced logits at every generated position.
    out = outs[0]
    with torch.no_grad():
        logits = model(
            input_ids=out.batch["input_ids"],
            attention_mask=out.batch["attention_mask"],
            position_ids=out.batch["position_ids"],
        ).logits[:, -RESPONSE_LENGTH - 1 : -1]
    argmax = logits.argmax(-1)
    mask = out.batch["response_mask"].bool()
    assert torch.equal(argmax[mask], out.batch["responses"][mask])


def test_seed_makes_sampling_reproducible(tiny):
    model, tokenizer = tiny
    rollout = HFRollout(model, _rollout_config())
    runs = []
    for _ in range(2):
        prompts = _prompts(tokenizer)
        prompts.meta_info["seed"] = 7
        runs.append(rollout.generate_sequences(prompts).batch["responses"])
    assert torch.equal(runs[0], runs[1])


def test_micro_batch_size_chunks_without_changing_greedy_output(tiny):
    model, tokenizer = tiny
    full = _prompts(tokenizer)
    full.meta_info["do_sample"] = False
    chunked = _prompts(tokenizer)
    chunked.meta_info["do_sample"] = False
    a = HFRollout(model, _rollout_config()).generate_sequences(full)
    b = HFRollout(model, _rollout_config(micro_batch_size=3)).generate_sequences(chunked)
    assert torch.equal(a.batch["input_ids"], b.batch["input_ids"])
    assert torch.equal(a.batch["attention_mask"], b.batch["attention_mask"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_log_probs_match_a_teacher_forced_forward(tiny, temperature):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    # As vLLM's processed_logprobs (verl's default logprobs_mode): the log-prob under the distribution sampled from,
    # i.e. raw logits / T, then top-k, renormalised over the surviving tokens.
    prompts.meta_info.update(seed=3, temperature=temperature, top_k=5, calculate_log_probs=True)
    out = HFRollout(model, _rollout_config()).generate_sequences(prompts)
    rollout_lp = out.batch["rollout_log_probs"]
    assert rollout_lp.shape == (4, RESPONSE_LENGTH)
    assert torch.all(rollout_lp[out.batch["response_mask"] == 0] == 0)
    expected = _teacher_forced_log_probs(model, out, temperature, top_k=5)
    torch.testing.assert_close(rollout_lp, expected, atol=1e-4, rtol=0)
    # raw_logprobs: log_softmax of the raw logits, no temperature, no filtering
    raw = HFRollout(model, _rollout_config(logprobs_mode="raw_logprobs")).generate_sequences(prompts)
    torch.testing.assert_close(
        raw.batch["rollout_log_probs"], _teacher_forced_log_probs(model, raw, 1.0), atol=1e-4, rtol=0
    )


def test_checkpoint_generation_defaults_do_not_change_sampling(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    clean = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    quirky = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    # A checkpoint shipping its own sampling defaults (as many chat models do) must not override the rollout config.
    quirky.generation_config.no_repeat_ngram_size = 1  # greedy on a random model repeats tokens: this would bite
    quirky.generation_config.repetition_penalty = 5.0
    quirky.generation_config.top_k = 1
    quirky.generation_config.top_p = 0.1
    for meta in ({"seed": 11}, {"validate": True}):
        outs = []
        for model in (clean, quirky):
            prompts = _prompts(tokenizer)
            prompts.meta_info.update(meta)
            outs.append(HFRollout(model, _rollout_config()).generate_sequences(prompts).batch["responses"])
        assert torch.equal(outs[0], outs[1]), meta
    assert quirky.generation_config.no_repeat_ngram_size == 1  # restored after generation


def test_missing_response_length_is_a_clear_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="response_length"):
        HFRollout(model, _rollout_config(response_length=None)).generate_sequences(_prompts(tokenizer))


def test_model_mode_is_restored_after_generation(tiny):
    model, tokenizer = tiny
    model.train()
    HFRollout(model, _rollout_config()).generate_sequences(_prompts(tokenizer))
    assert model.training
    model.eval()


def test_update_weights_copies_named_tensors_into_the_module(tiny_model_dir):
    import asyncio

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    rollout = HFRollout(model, _rollout_config())
    name, param = next(iter(model.named_parameters()))
    asyncio.run(rollout.update_weights(iter([(name, torch.zeros_like(param))])))
    assert torch.count_nonzero(dict(model.named_parameters())[name]) == 0
    with pytest.raises(KeyError):
        asyncio.run(rollout.update_weights(iter([("no.such.weight", torch.zeros(1))])))


@pytest.mark.parametrize(
    "sampling",
    [
        {},
        {"temperature": 0.7, "top_k": 20, "top_p": 0.9},
        {"temperature": 1.3, "top_p": 0.5},
        {"do_sample": False},
        {"calculate_log_probs": True, "logprobs_mode": "raw_logprobs"},
    ],
)
@pytest.mark.parametrize("early_stop", [False, True])
def test_hf_engine_samples_exactly_what_generate_samples(tiny, sampling, early_stop):
    """The one hf decode loop (HFEngine) draws the same tokens as transformers' generate from the same RNG state,
    tensor for tensor; its raw logprobs equal log_softmax of generate's output logits."""
    from transformers import GenerationConfig

    from verl.utils.torch_functional import get_response_mask

    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    eos = list(range(4, len(tokenizer) // 3)) if early_stop else tokenizer.eos_token_id
    prompts.meta_info["eos_token_id"] = eos  # early_stop: a third of the vocabulary ends a row
    torch.manual_seed(11)
    out = HFRollout(model, _rollout_config(**sampling)).generate_sequences(prompts).batch

    cfg = {"temperature": 1.0, "top_k": -1, "top_p": 1.0, "do_sample": True, **sampling}
    pad = tokenizer.pad_token_id
    gen_config = GenerationConfig(
        do_sample=cfg["do_sample"],
        temperature=cfg["temperature"] if cfg["do_sample"] else 1.0,
        top_k=max(cfg["top_k"], 0) if cfg["do_sample"] else 0,
        top_p=cfg["top_p"] if cfg["do_sample"] else 1.0,
        max_new_tokens=RESPONSE_LENGTH,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
        output_logits=True,
    )
    saved, model.generation_config = model.generation_config, GenerationConfig()  # no checkpoint defaults
    try:
        torch.manual_seed(11)
        ref = model.generate(
            input_ids=prompts.batch["input_ids"],
            attention_mask=prompts.batch["attention_mask"],
            generation_config=gen_config,
        )
    finally:
        model.generation_config = saved
    width = prompts.batch["input_ids"].size(1)
    tokens = torch.full((len(prompts), RESPONSE_LENGTH), pad)
    tokens[:, : ref.sequences.size(1) - width] = ref.sequences[:, width:]
    mask = get_response_mask(tokens, eos_token=eos, dtype=out["response_mask"].dtype)
    assert torch.equal(out["response_mask"], mask)
    assert torch.equal(out["responses"], torch.where(mask.bool(), tokens, torch.full_like(tokens, pad)))
    if early_stop:
        assert (mask.sum(-1) < RESPONSE_LENGTH).any()
    if sampling.get("calculate_log_probs"):
        logits = torch.stack(ref.logits, dim=1).float()  # (bs, L, V) raw
        steps = logits.size(1)
        expected = torch.zeros(len(prompts), RESPONSE_LENGTH)
        expected[:, :steps] = F.log_softmax(logits, -1).gather(-1, tokens[:, :steps, None]).squeeze(-1)
        torch.testing.assert_close(out["rollout_log_probs"], expected * mask, atol=1e-6, rtol=0)


def test_hf_engine_decodes_from_its_kv_cache(tiny):
    """After the prefill each step feeds one new token per row (the cache keyword is ``past_key_values`` up to
    transformers 5.19 and ``cache`` from 5.2x: the engine must find it, or it silently recomputes every prefix)."""
    from verl.workers.rollout.engine import SamplingParams
    from verl.workers.rollout.hf_engine import HFEngine

    model, tokenizer = tiny
    engine = HFEngine(model)
    assert engine._cached, "no KV-cache keyword found on the model's forward"
    widths = []
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        widths.append(int(kwargs["input_ids"].shape[1]))
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    try:
        prompts = [tokenizer("hello there").input_ids, tokenizer("a longer prompt than the other").input_ids]
        params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
        outputs = engine.generate(prompts, [params, params])
    finally:
        del model.forward  # back to the class's method
    assert all(len(o.token_ids) == 12 for o in outputs)
    assert widths[0] == max(len(p) for p in prompts) and widths[1:] == [1] * 11, widths
