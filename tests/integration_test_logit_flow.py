"""Logit capture end to end on the tiny model: engine -> interaction, rollout -> DataProto -> interaction, and a
reward function reading the logits (3 tests, ~20 s on 2 CPU cores).

Run from the repository root with ``python tests/integration_test_logit_flow.py`` (no pytest needed). Prints
PASS/FAIL per test and ends with ``Total: X/3 tests passed``; the exit code is 1 when any test fails.

Every expected probability is recomputed independently with a teacher-forced forward pass of the same weights
(``log_softmax`` of the logits, temperature 1, no top-k/top-p, so processed == raw); tolerance 1e-4.
"""

from __future__ import annotations

import asyncio
import math
import os
import pickle
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tests/...` from the root finds verl/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.workers.config import RolloutConfig  # noqa: E402
from verl.workers.rollout.hf_engine import HFEngine  # noqa: E402
from verl.workers.rollout.logit_capture import CaptureSpec, generation_logits_from_batch  # noqa: E402
from verl.workers.rollout.multiturn import TurnLoopSettings, run_multiturn  # noqa: E402
from verl.workers.rollout.schemas import AsyncRolloutRequest  # noqa: E402

ATOL = 1e-4
PROMPTS = [
    "Does the paper belong to the author? answer yes or no",
    "Is this paper by the author? yes or no",
    "Is the first paper written by this author?",
    "Does the author have this paper? say yes or no",
]
_STATE: dict = {}


def tiny():
    """(model, tokenizer, yes_id, no_id) of the tiny offline model, built once; float32, eval mode."""
    if not _STATE:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from verl.utils.testing.tiny import build_tiny_model

        with tempfile.TemporaryDirectory() as tmp:
            build_tiny_model(tmp, seed=0)
            tok = AutoTokenizer.from_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        yes, no = (tok.encode(word, add_special_tokens=False)[0] for word in ("yes", "no"))
        _STATE.update(model=model, tok=tok, yes=yes, no=no)
    return _STATE["model"], _STATE["tok"], _STATE["yes"], _STATE["no"]


def forced_logprobs(model, ids: list[int]) -> torch.Tensor:
    """``(len(ids) - 1, V)``: row t is log P(. | ids[: t + 1]) under the model (teacher forcing, one sequence)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]  # (T-1, V)
    return torch.log_softmax(logits.float(), dim=-1)


def left_padded_prompts(tok, texts: list[str], **meta) -> DataProto:
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    enc = tok(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    mask = enc["attention_mask"]
    return DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        non_tensors={"raw_text": np.array(texts, dtype=object)},
        meta_info={"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, **meta},
    )


class ShortTurns(HFEngine):
    """The real hf engine with turns cut at 6 tokens: an untrained model rarely emits EOS, and two turns must fit the
    response budget."""

    def generate(self, prompts, params):
        return super().generate(prompts, [p.replace(max_tokens=min(p.max_tokens, 6)) for p in params])


class RecordingDialog(MultiTurnDialogInteraction):
    """The worked-example interaction, recording what ``generate_response`` receives and returns."""

    def __init__(self, config):
        super().__init__(config)
        self.calls = []

    async def generate_response(self, instance_id, messages, generation_logits=None, **kwargs):
        result = await super().generate_response(instance_id, messages, generation_logits=generation_logits, **kwargs)
        self.calls.append(
            {"instance": instance_id, "generation_logits": generation_logits, "kwargs": kwargs, "out": result}
        )
        return result


# ---- the 3 tests ---------------------------------------------------------------------------------------------------
def test_interaction_receives_logits():
    """A real two-turn rollout (the hf engine, token_ids capture of yes/no): after every assistant turn the dialog
    interaction gets that turn's ``generation_logits`` with shapes (L,), (L,), (L, 2), values equal to a teacher-
    forced pass, and its label probability is computed from them."""
    model, tok, yes, no = tiny()
    spec = CaptureSpec("token_ids", ids=(yes, no))
    engine = ShortTurns(model, eos_token_ids=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    dialog = RecordingDialog({"name": "dialog", "prob_weight": 0.5, "label_token_ids": {"yes": yes, "no": no}})
    questions = [{"question": "Paper A?", "label": "yes"}, {"question": "And paper B?", "label": "no"}]
    reqs = [
        AsyncRolloutRequest.from_messages(
            tok,
            [{"role": "user", "content": p}],
            request_id=f"r{i}",
            interaction_kwargs={"name": "dialog", "questions": questions},
        )
        for i, p in enumerate(PROMPTS[:2])
    ]
    sampling = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": -1}
    torch.manual_seed(0)
    asyncio.run(run_multiturn(reqs, engine, {"dialog": dialog}, tok, TurnLoopSettings(48, 2, None, sampling), spec))

    assert len(dialog.calls) == 4, len(dialog.calls)  # 2 requests x 2 assistant turns, each judged once
    for req in reqs:
        assert req.assistant_turns == 2 and len(req.reward_scores["dialog"]) == 2
        forced = forced_logprobs(model, req.prompt_ids + req.response_ids)  # (P+R-1, V)
        for turn, (start, end) in enumerate(req.assistant_spans):
            call = [c for c in dialog.calls if c["instance"] == req.request_id][turn]
            logits = call["generation_logits"]
            length = end - start
            assert logits["mode"] == "token_ids" and logits["ids"] == [yes, no]
            assert logits["token_ids"].shape == (length,) and logits["logprobs"].shape == (length,)
            assert logits["id_logprobs"].shape == (length, 2)
            assert logits["token_ids"].tolist() == req.response_ids[start:end]
            rows = forced[len(req.prompt_ids) + start - 1 : len(req.prompt_ids) + end - 1]  # (L, V)
            torch.testing.assert_close(logits["id_logprobs"], rows[:, [yes, no]], atol=ATOL, rtol=0)
            label_id = yes if questions[turn]["label"] == "yes" else no
            tokens = logits["token_ids"].tolist()
            pos = next((i for i, t in enumerate(tokens) if t in (yes, no)), 0)
            details = call["out"][3]
            assert abs(details["label_prob"] - math.exp(float(rows[pos, label_id]))) < ATOL, details
            assert call["kwargs"]["questions"] == questions  # interaction_kwargs travel alongside


def test_rollout_dataproto_interaction():
    """HFRollout with capture on -> DataProto (pickled, as Ray moves it) -> generation_logits_from_batch -> the
    interaction's score = 0.5 * exact + 0.5 * P(label), P from a teacher-forced pass."""
    model, tok, yes, no = tiny()
    capture = {"enable": True, "mode": "token_ids", "ids": [yes, no]}
    config = RolloutConfig(name="hf", response_length=8, temperature=1.0, logit_capture=capture)
    from verl.workers.rollout.hf_rollout import HFRollout

    prompts = left_padded_prompts(tok, PROMPTS, seed=1)
    out = pickle.loads(pickle.dumps(HFRollout(model, config).generate_sequences(prompts)))
    assert out.batch["rollout_token_id_logprobs"].shape == (4, 8, 2)
    spec = CaptureSpec("token_ids", ids=(yes, no))
    dialog = MultiTurnDialogInteraction(
        {"name": "dialog", "prob_weight": 0.5, "label_token_ids": {"yes": yes, "no": no}}
    )

    async def score(i: int, label: str, logits: dict) -> tuple:
        iid = await dialog.start_interaction(None, questions=[{"question": "q", "label": label}])
        answer = tok.decode(logits["token_ids"], skip_special_tokens=True)
        chat = [{"role": "user", "content": PROMPTS[i]}, {"role": "assistant", "content": answer}]
        return await dialog.generate_response(iid, chat, generation_logits=logits)

    for i in range(len(PROMPTS)):
        mask = out.batch["response_mask"][i]
        logits = generation_logits_from_batch(out.batch, i, mask, spec)
        length = int(mask.sum())
        assert logits["id_logprobs"].shape == (length, 2) and logits["token_ids"].shape == (length,)
        valid = out.batch["attention_mask"][i].bool()
        forced = forced_logprobs(model, out.batch["input_ids"][i][valid].tolist())
        n_prompt = int(prompts.batch["attention_mask"][i].sum())
        rows = forced[n_prompt - 1 : n_prompt - 1 + length]  # (L, V)
        torch.testing.assert_close(logits["id_logprobs"], rows[:, [yes, no]], atol=ATOL, rtol=0)
        tokens = logits["token_ids"].tolist()
        pos = next((t for t, tid in enumerate(tokens) if tid in (yes, no)), 0)
        for label, label_id in (("yes", yes), ("no", no)):
            _, _, got, details = asyncio.run(score(i, label, logits))
            want = 0.5 * details["exact"] + 0.5 * math.exp(float(rows[pos, label_id]))
            assert abs(got - want) < ATOL, (i, label, got, want)


def label_probability_reward(data_source, solution_str, ground_truth, extra_info=None):
    """A custom reward in verl's ``compute_score`` style: the probability the policy gave the correct label token
    as its first generated token, read from ``extra_info["generation_logits"]`` (token_ids capture of the labels).

    The ``id_logprobs`` columns follow ``rollout.logit_capture.ids``; ``generation_logits["ids"]`` names them when the
    batch carries the spec, else the function falls back to the ids it was configured with (``capture_ids``).
    """
    logits = extra_info["generation_logits"]
    ids = logits["ids"] if logits.get("ids") is not None else extra_info["capture_ids"]
    column = list(ids).index(extra_info["label_token_ids"][ground_truth])
    return {"score": math.exp(float(logits["id_logprobs"][0, column])), "answer": solution_str[:8]}


def test_logit_based_reward():
    """NaiveRewardManager + a reward function reading ``extra_info["generation_logits"]`` returns P(label) (checked
    against a teacher-forced pass), and the reward moves when the probabilities move: after a weight change, and
    when the captured values themselves are changed."""
    from verl.workers.reward_manager.naive import NaiveRewardManager

    model, tok, yes, no = tiny()
    capture = {"enable": True, "mode": "token_ids", "ids": [yes, no]}
    config = RolloutConfig(name="hf", response_length=6, temperature=1.0, logit_capture=capture)
    from verl.workers.rollout.hf_rollout import HFRollout

    truths = ["yes", "no", "yes", "no"]
    labels = {"yes": yes, "no": no}
    manager = NaiveRewardManager(tok, num_examine=0, compute_score=label_probability_reward)

    def rollout_and_reward() -> tuple[DataProto, torch.Tensor, torch.Tensor]:
        prompts = left_padded_prompts(tok, PROMPTS, seed=3)
        prompts.non_tensor_batch.update(
            data_source=np.array(["papers"] * 4, dtype=object),
            reward_model=np.array([{"ground_truth": t} for t in truths], dtype=object),
            extra_info=np.array([{"label_token_ids": labels, "capture_ids": [yes, no]} for _ in truths], dtype=object),
        )
        out = HFRollout(model, config).generate_sequences(prompts)
        out.non_tensor_batch.update(prompts.non_tensor_batch)
        rewards = manager(out, return_dict=True)["reward_tensor"].sum(-1)  # (B,) one score per row
        # Expected: P(label | prompt) from the model directly (the first response token's distribution).
        expected = []
        for i, truth in enumerate(truths):
            prompt = prompts.batch["input_ids"][i][prompts.batch["attention_mask"][i].bool()].tolist()
            expected.append(math.exp(float(forced_logprobs(model, prompt + [tok.eos_token_id])[-1, labels[truth]])))
        return out, rewards, torch.tensor(expected)

    out, before, expected = rollout_and_reward()
    torch.testing.assert_close(before, expected, atol=ATOL, rtol=0)

    # A policy update that favours "yes": push the (tied) yes/no output rows along the mean final hidden state.
    original = model.lm_head.weight.detach().clone()
    try:
        prompts = left_padded_prompts(tok, PROMPTS)
        with torch.no_grad():
            hidden = model.model(**{k: prompts.batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state
            direction = hidden[:, -1].mean(0)
            model.lm_head.weight[yes] += 2.0 * direction / direction.norm()
            model.lm_head.weight[no] -= 2.0 * direction / direction.norm()
        _, after, expected_after = rollout_and_reward()
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(original)
    torch.testing.assert_close(after, expected_after, atol=ATOL, rtol=0)
    assert (after != before).all(), (before, after)
    yes_rows, no_rows = [0, 2], [1, 3]
    assert (after[yes_rows] > before[yes_rows]).all() and (after[no_rows] < before[no_rows]).all(), (before, after)

    # The reward reads the captured values themselves: set P(label) at the first token to 0.25 and it reports 0.25.
    edited = out.batch["rollout_token_id_logprobs"].clone()
    edited[:, 0, :] = math.log(0.25)
    out.batch["rollout_token_id_logprobs"] = edited
    rewards = manager(out, return_dict=True)["reward_tensor"].sum(-1)
    torch.testing.assert_close(rewards, torch.full((4,), 0.25), atol=1e-6, rtol=0)


TESTS = [test_interaction_receives_logits, test_rollout_dataproto_interaction, test_logit_based_reward]


def main() -> int:
    passed = 0
    for test in TESTS:
        start = time.perf_counter()
        try:
            test()
        except Exception:  # a failing test is reported and the others still run
            print(f"FAIL  {test.__name__} ({time.perf_counter() - start:.1f} s)")
            traceback.print_exc()
            continue
        passed += 1
        print(f"PASS  {test.__name__} ({time.perf_counter() - start:.1f} s)")
    print(f"Total: {passed}/{len(TESTS)} tests passed")
    return 0 if passed == len(TESTS) else 1


if __name__ == "__main__":
    sys.exit(main())
