"""The multi-turn loop: batching, turn limits, budget, termination, interaction lookup, the batch layout, and a
real two-turn dialogue on the tiny model through the hf engine (HFEngine)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from verl.interactions.base import BaseInteraction
from verl.workers.config import RolloutConfig
from verl.workers.rollout.engine import GenerationOutput, InferenceEngine
from verl.workers.rollout.hf_engine import HFEngine
from verl.workers.rollout.logit_capture import CaptureSpec, capture_from_logits
from verl.workers.rollout.multiturn import TurnLoopSettings, requests_to_batch, run_multiturn
from verl.workers.rollout.schemas import AsyncRolloutRequest


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


class ScriptedEngine(InferenceEngine):
    """Answers every prompt with ``reply`` (cut to max_tokens), capturing (per the request) from fixed random logits."""

    max_model_len, eos_token_ids, pad_token_id = 1 << 20, (), 0

    def __init__(self, reply: list[int], spec: CaptureSpec | None = None, vocab: int = 512):
        self.reply, self.spec, self.vocab_size, self.calls = reply, spec, vocab, []

    def generate(self, prompts, params):
        self.calls.append(
            {"batch": len(prompts), "max_new_tokens": [p.max_tokens for p in params], "sampling": params[0]}
        )
        out = []
        for p in params:
            ids = self.reply[: p.max_tokens]
            capture = None
            if p.capture is not None:
                assert p.capture == self.spec, "the loop asks for the capture it was given"
                gen = torch.Generator().manual_seed(len(self.calls))
                logits = torch.randn(len(ids), self.vocab_size, generator=gen)
                capture = capture_from_logits(logits, torch.tensor(ids), p.capture)
            out.append(GenerationOutput(list(ids), capture, "length" if len(ids) == p.max_tokens else "stop"))
        return out


class CountingInteraction(BaseInteraction):
    """Replies "again" and scores the turn number; terminates after ``stop_after`` turns (never when None)."""

    def __init__(self, config):
        super().__init__(config)
        self.stop_after = config.get("stop_after")
        self.turns, self.seen_logits, self.finalized, self.started = {}, [], [], []

    async def start_interaction(self, instance_id=None, **kwargs):
        self.started.append(kwargs)
        self.turns[instance_id] = 0
        return instance_id

    async def generate_response(self, instance_id, messages, generation_logits=None, **kwargs):
        assert messages[-1]["role"] == "assistant"
        self.turns[instance_id] += 1
        self.seen_logits.append(generation_logits)
        n = self.turns[instance_id]
        stop = kwargs.get("stop_after", self.stop_after)
        return (stop is not None and n >= stop), "again", float(n), {}

    async def finalize_interaction(self, instance_id, **kwargs):
        self.finalized.append(instance_id)


def make_requests(tok, n=1, **kwargs_per_request):
    prompt = [{"role": "user", "content": "is the paper by the author?"}]
    return [
        AsyncRolloutRequest.from_messages(
            tok, prompt, request_id=f"r{i}", batch_data_id=i, interaction_kwargs={"name": "count", **kwargs_per_request}
        )
        for i in range(n)
    ]


def settings(response_length=64, max_assistant_turns=None, max_user_turns=None):
    return TurnLoopSettings(response_length, max_assistant_turns, max_user_turns, {"do_sample": False})


def run(requests, engine, interaction, tok, config, spec=None):
    return asyncio.run(run_multiturn(requests, engine, {interaction.name: interaction}, tok, config, spec))


def reply_ids(tok, text="yes"):
    return tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


@pytest.mark.parametrize(
    "max_a, max_u, turns",
    [(3, None, (3, 2)), (None, 1, (2, 1)), (1, None, (1, 0)), (None, 0, (1, 0)), (2, 5, (2, 1))],
)
def test_turn_limits(tokenizer, max_a, max_u, turns):
    inter = CountingInteraction({"name": "count"})
    engine = ScriptedEngine(reply_ids(tokenizer))
    (req,) = run(make_requests(tokenizer), engine, inter, tokenizer, settings(200, max_a, max_u))
    assert (req.assistant_turns, req.user_turns) == turns
    assert len(engine.calls) == turns[0]
    # Every assistant turn is judged once, the last one too.
    assert req.reward_scores == {"count": [float(i + 1) for i in range(turns[0])]}
    assert req.state.value == "completed" and req.finish_reason.value == "stop"
    assert req.num_turns == 1 + sum(turns)
    assert inter.finalized == ["r0"]


def test_interaction_termination_and_one_batched_call_per_round(tokenizer):
    inter = CountingInteraction({"name": "count"})
    engine = ScriptedEngine(reply_ids(tokenizer))
    reqs = make_requests(tokenizer, n=2)
    reqs[0].interaction_kwargs["stop_after"] = 1
    reqs[1].interaction_kwargs["stop_after"] = 3
    run(reqs, engine, inter, tokenizer, settings(200))
    assert [c["batch"] for c in engine.calls] == [2, 1, 1]
    assert [r.assistant_turns for r in reqs] == [1, 3]
    assert [r.messages[-1]["role"] for r in reqs] == ["assistant", "assistant"]
    assert sorted(inter.finalized) == ["r0", "r1"]
    assert inter.started[0] == {"name": "count", "stop_after": 1}


def test_budget_truncation_keeps_the_mask_consistent(tokenizer):
    inter = CountingInteraction({"name": "count"})
    long_reply = tokenizer.encode("the answer is yes because the paper is by the author", add_special_tokens=False)
    engine = ScriptedEngine(long_reply)  # never emits EOS: each turn runs to its token limit
    (req,) = run(make_requests(tokenizer), engine, inter, tokenizer, settings(response_length=8))
    assert engine.calls[0]["max_new_tokens"] == [8]
    assert req.response_ids == long_reply[:8] and req.response_loss_mask == [1] * 8
    assert req.finish_reason.value == "length" and req.assistant_turns == 1
    assert req.reward_scores == {"count": [1.0]}

    # A user reply that does not fit is cut; the request then ends without another generation.
    engine = ScriptedEngine(reply_ids(tokenizer, "no"))
    (req,) = run(make_requests(tokenizer), engine, inter, tokenizer, settings(response_length=6))
    n_gen = len(reply_ids(tokenizer, "no"))
    assert len(req.response_ids) == len(req.response_loss_mask) == 6
    assert req.response_loss_mask == [1] * n_gen + [0] * (6 - n_gen)
    assert len(engine.calls) == 1 and req.finish_reason.value == "length"


def test_unknown_interaction_name_raises_before_generation(tokenizer):
    inter = CountingInteraction({"name": "count"})
    engine = ScriptedEngine(reply_ids(tokenizer))
    reqs = make_requests(tokenizer)
    reqs[0].interaction_kwargs["name"] = "gsm8kk"
    with pytest.raises(ValueError, match=r"'gsm8kk' is not a registered interaction; registered: \['count'\]"):
        run(reqs, engine, inter, tokenizer, settings())
    assert engine.calls == [] and inter.started == []


def test_latest_turn_capture_reaches_the_interaction(tokenizer):
    spec = CaptureSpec("topk", k=4)
    inter = CountingInteraction({"name": "count", "stop_after": 2})
    engine = ScriptedEngine(reply_ids(tokenizer), spec, vocab=len(tokenizer))
    (req,) = run(make_requests(tokenizer), engine, inter, tokenizer, settings(), spec)
    assert len(inter.seen_logits) == 2 and len(req.generation_logits) == 2
    for seen, turn in zip(inter.seen_logits, req.generation_logits, strict=True):
        assert torch.equal(seen["topk_logprobs"], turn.topk_logprobs) and seen["mode"] == "topk"
    assert not torch.equal(inter.seen_logits[0]["topk_logprobs"], inter.seen_logits[1]["topk_logprobs"])
    # Without capture the interaction gets None.
    inter = CountingInteraction({"name": "count", "stop_after": 1})
    run(make_requests(tokenizer), ScriptedEngine(reply_ids(tokenizer)), inter, tokenizer, settings())
    assert inter.seen_logits == [None]


def test_config_forms_are_accepted(tokenizer):
    cfg = {
        "response_length": 32,
        "multi_turn": {"max_assistant_turns": 2, "tokenization_sanity_check_mode": "disable"},
        "temperature": 0.7,
        "top_k": 5,
    }
    inter = CountingInteraction({"name": "count"})
    engine = ScriptedEngine(reply_ids(tokenizer))
    (req,) = run(make_requests(tokenizer), engine, inter, tokenizer, cfg)
    assert req.assistant_turns == 2 and req.max_response_len == 32
    assert req.tokenization_sanity_check_mode.value == "disable"
    sampled = engine.calls[0]["sampling"]
    assert (sampled.greedy, sampled.temperature, sampled.top_p, sampled.top_k) == (False, 0.7, 1.0, 5)
    typed = TurnLoopSettings.from_config(RolloutConfig(response_length=16))
    assert (typed.response_length, typed.max_assistant_turns) == (16, None)


def test_requests_to_batch_layout(tokenizer):
    spec = CaptureSpec("logprob")
    inter = CountingInteraction({"name": "count", "stop_after": 2})
    engine = ScriptedEngine(reply_ids(tokenizer), spec, vocab=len(tokenizer))
    reqs = make_requests(tokenizer, n=2)
    reqs[1].interaction_kwargs["stop_after"] = 1
    run(reqs, engine, inter, tokenizer, settings(), spec)
    P, R = 20, 40
    tensors, non_tensors = requests_to_batch(reqs, P, R, tokenizer.pad_token_id, spec)
    for i, req in enumerate(reqs):
        n_p, n_r = len(req.prompt_ids), len(req.response_ids)
        assert tensors["prompts"][i, P - n_p :].tolist() == req.prompt_ids
        assert (tensors["prompts"][i, : P - n_p] == tokenizer.pad_token_id).all()
        assert tensors["responses"][i, :n_r].tolist() == req.response_ids
        assert tensors["response_mask"][i].tolist() == req.response_loss_mask + [0] * (R - n_r)
        assert tensors["attention_mask"][i].tolist() == [0] * (P - n_p) + [1] * (n_p + n_r) + [0] * (R - n_r)
        real = tensors["attention_mask"][i].bool()
        assert tensors["position_ids"][i][real].tolist() == list(range(n_p + n_r))
        # Logprobs sit in the assistant columns, in order, and are 0 on user tokens and padding.
        lp = tensors["rollout_log_probs"][i]
        want = torch.cat([c.logprobs for c in req.generation_logits])
        assert torch.equal(lp[req.assistant_positions()], want)
        assert (lp[tensors["response_mask"][i] == 0] == 0).all()
        assert non_tensors["generation_logits"][i]["positions"] == req.assistant_positions()
    assert tensors["input_ids"].shape == (2, P + R)
    assert non_tensors["__num_turns__"].tolist() == [4, 2] and non_tensors["__num_turns__"].dtype == np.int32
    assert non_tensors["reward_scores"][0] == {"count": [1.0, 2.0]}
    with pytest.raises(ValueError, match="exceed prompt_length=4"):
        requests_to_batch(reqs, 4, R, tokenizer.pad_token_id)
    _, no_capture = requests_to_batch(reqs, P, R, tokenizer.pad_token_id, None)
    assert list(no_capture["generation_logits"]) == [None, None]


class RecordingEngine(HFEngine):
    """Records what the model generated; caps turns at 6 tokens (the untrained model rarely emits EOS)."""

    def generate(self, prompts, params):
        out = super().generate(prompts, [p.replace(max_tokens=min(p.max_tokens, 6)) for p in params])
        self.generated = getattr(self, "generated", []) + [[o.token_ids for o in out]]
        return out


def test_hf_two_turn_dialog_keeps_every_generated_token(tiny_model_dir, tokenizer):
    """Real generation on the tiny model: the policy's ids land verbatim in response_ids (mask 1), user tokens
    have mask 0, and the captured logprobs equal a teacher-forced forward pass over the final sequence."""
    from transformers import AutoModelForCausalLM

    from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction

    tok = tokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    yes, no = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
    spec = CaptureSpec("token_ids", ids=(yes, no))
    engine = RecordingEngine(model, eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id)
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
    config = TurnLoopSettings(48, 2, None, {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": -1})
    torch.manual_seed(0)
    asyncio.run(run_multiturn(reqs, engine, {"dialog": inter}, tok, config, spec))

    for i, req in enumerate(reqs):
        turns = [engine.generated[t][i] for t in range(req.assistant_turns)]
        assert req.assistant_turns == 2 and req.user_turns == 1
        for (start, end), ids in zip(req.assistant_spans, turns, strict=True):
            assert req.response_ids[start:end] == ids
            assert req.response_loss_mask[start:end] == [1] * len(ids)
        user_cols = set(range(len(req.response_ids))) - set(req.assistant_positions())
        assert all(req.response_loss_mask[c] == 0 for c in user_cols)
        assert len(user_cols) > 0
        scores = req.reward_scores["dialog"]
        assert len(scores) == req.assistant_turns and all(0.0 <= s <= 1.0 for s in scores)

    # The captured values are those of the same model teacher-forced on the final sequences (left padding and all).
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
    torch.testing.assert_close(tensors["rollout_log_probs"][mask], forced[mask], atol=1e-4, rtol=0)
    forced_ids = logp[..., [yes, no]]  # (B, R, 2)
    torch.testing.assert_close(tensors["rollout_token_id_logprobs"][mask], forced_ids[mask], atol=1e-4, rtol=0)
