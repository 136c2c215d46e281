"""Logit capture through SGLang output, as a user of ``rollout.name=sglang_with_logit`` knows it (8 tests, ~10 s).

Run from the repository root with ``python tests/test_sglang_rollout_with_logit.py`` (no pytest needed). Prints
PASS/FAIL per test and ends with ``Total: X/8 tests passed``; the exit code is 1 when any test fails.

SGLang has no CPU build, so the engine here is the double of ``tests/workers/rollout/sglang_double.py``: it answers
``Engine.generate`` with dicts shaped exactly as SGLang 0.5.23 returns them (``(logprob, token_id, None)`` tuples, the
leading ``None`` input logprob, ``output_top_logprobs`` / ``output_token_ids_logprobs`` only when requested), built
from known logits so every captured value has an independent expected value, and fails like SGLang when one of its
blocking methods is called inside a running event loop (``test_sglang_contract.py`` checks the double against the
installed SGLang source). Everything after the engine is the real code: ``SGLangRolloutWithLogit`` and its engine
adapter, the multi-turn loop, ``capture_from_sglang`` -> ``AsyncRolloutRequest`` -> ``DataProto`` -> interaction.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import importlib.util
import os
import pickle
import sys
import time
import traceback
import types
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python tests/...` from the root finds verl/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from verl.interactions.base import BaseInteraction  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.workers.config import RolloutConfig  # noqa: E402
from verl.workers.rollout.logit_capture import (  # noqa: E402
    CaptureSpec,
    TokenCapture,
    bytes_per_token,
    capture_from_logits,
    capture_from_sglang,
    captures_to_tensors,
    check_capture_budget,
    estimate_capture_bytes,
    generation_logits_from_batch,
    processed_logits,
    sglang_sampling_kwargs,
)
from verl.workers.rollout.multiturn import TurnLoopSettings, requests_to_batch, run_multiturn  # noqa: E402
from verl.workers.rollout.schemas import AsyncRolloutRequest, AsyncRolloutRequestStateEnum  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "sglang_double", Path(__file__).resolve().parent / "workers" / "rollout" / "sglang_double.py"
)
sglang_double = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sglang_double)

VOCAB = 512  # the tiny tokenizer's size, so multi-turn replies decode
EOS, PAD = 2, 3  # the tiny tokenizer's <|im_end|> and <|pad|>
YES, NO = 360, 370  # label tokens for the dialogue tests (360 is "yes" in the tiny tokenizer)
ATOL = 1e-6

# One response as SGLang 0.5.2 returns it for return_logprob=True, top_logprobs_num=2 (hand-written numbers).
LITERAL = {
    "text": " yes no",
    "output_ids": [40, 41, 2],
    "meta_info": {
        "id": "r0",
        "finish_reason": {"type": "stop", "matched": 2},
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "cached_tokens": 0,
        "weight_version": "default",
        "e2e_latency": 0.12,
        "input_token_logprobs": [(None, 12, None)],
        "output_token_logprobs": [(-1.5, 40, None), (-0.25, 41, None), (-0.75, 2, None)],
        "input_top_logprobs": [None],
        "output_top_logprobs": [
            [(-0.5, 7, None), (-1.5, 40, None)],
            [(-0.25, 41, None), (-2.0, 9, None)],
            [(-0.75, 2, None), (-1.0, 8, None)],
        ],
    },
}


# ---- the engine side: SGLang-shaped responses built from known logits ---------------------------------------------
def known_logits(salt: int, length: int, vocab: int = VOCAB) -> torch.Tensor:
    """``(length, vocab)`` fixed logits for one response (``salt`` picks row/turn); scale 3 gives peaked rows."""
    return 3.0 * torch.randn(length, vocab, generator=torch.Generator().manual_seed(1000 + salt))


def sglang_response(
    logits: torch.Tensor,
    tokens: Sequence[int],
    prompt: Sequence[int] = (10, 11, 12),
    top_logprobs_num: int = 0,
    token_ids_logprob: Sequence[int] | None = None,
) -> dict:
    """One SGLang 0.5.23 answer with ``return_logprob=True``; logprobs are ``log_softmax(logits)`` (T = 1)."""
    length = len(tokens)
    finish = {"type": "stop", "matched": EOS} if tokens and tokens[-1] == EOS else {"type": "length", "length": length}
    return sglang_double.sglang_response(
        f"req-{prompt[-1]}", prompt, tokens, logits, 1.0, finish, True, top_logprobs_num, token_ids_logprob
    )


def scripted_engine(replies: Sequence[Sequence[int]], salt: int = 0, per_call: int = 100):
    """The SGLang double answering row ``r`` of its ``c``-th generate call with ``replies[min(c, last)]`` (cut to
    max_new_tokens) and the logits ``known_logits(salt + per_call * c + r)``."""
    replies = [list(r) for r in replies]

    class Scripted(sglang_double.SGLangEngineDouble):
        def generate(self, **kwargs):
            call = sum(1 for c in self.calls if c[0] == "generate")
            self.replies = [replies[min(call, len(replies) - 1)]]
            return super().generate(**kwargs)

    return Scripted(replies=replies, logits=lambda call, row, n: known_logits(salt + per_call * call + row, n))


_MODEL_DIR = None


def model_dir() -> str:
    """A tiny model directory (config + tokenizer; the SGLang rollout reads the model's facts from it), built once."""
    global _MODEL_DIR
    if _MODEL_DIR is None:
        import tempfile

        from verl.utils.testing.tiny import build_tiny_model

        _MODEL_DIR = tempfile.mkdtemp(prefix="tiny-sglang-")
        build_tiny_model(_MODEL_DIR, seed=0)
    return _MODEL_DIR


def with_logit_rollout(engine, **config):
    """``SGLangRolloutWithLogit`` over ``engine`` (see ``_with_logit_class``)."""
    config = RolloutConfig(**{"name": "sglang_with_logit", "response_length": 4, **config})
    return _with_logit_class()(model_dir(), config, engine=engine)


def generate_calls(engine) -> list[dict]:
    return [kwargs for name, kwargs in engine.calls if name == "generate"]


class RecordingInteraction(BaseInteraction):
    """Replies "again" until ``turns`` assistant turns were judged; records every ``generate_response`` kwargs."""

    def __init__(self, config):
        super().__init__(config)
        self.turns, self.seen = int(config.get("turns", 2)), []

    async def generate_response(self, instance_id, messages, **kwargs):
        self.seen.append(kwargs)
        done = sum(m["role"] == "assistant" for m in messages) >= self.turns
        return done, "again", 0.0, {}


def tokenizer():
    """The tiny offline tokenizer (chat template included), built once."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from verl.utils.testing.tiny import build_tiny_tokenizer

        _TOKENIZER = build_tiny_tokenizer(seed=0)
        assert len(_TOKENIZER) == VOCAB and _TOKENIZER.eos_token_id == EOS and _TOKENIZER.pad_token_id == PAD
    return _TOKENIZER


_TOKENIZER = None


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=0)


def same_capture(got: dict | TokenCapture, want: TokenCapture) -> None:
    """Every tensor of ``want`` equals the one in ``got`` (a TokenCapture or its ``to_dict()``)."""
    got = got.to_dict() if isinstance(got, TokenCapture) else got
    for name, value in want.to_dict().items():
        if isinstance(value, torch.Tensor):
            assert name in got, f"{name} missing from {sorted(got)}"
            if value.dtype == torch.long:
                assert torch.equal(got[name].long(), value), name
            else:
                close(got[name], value)


def dialog_requests(n: int, name: str, **kwargs) -> list[AsyncRolloutRequest]:
    tok = tokenizer()
    return [
        AsyncRolloutRequest.from_messages(
            tok,
            [{"role": "user", "content": f"Does paper {i} belong to the author?"}],
            request_id=f"r{i}",
            batch_data_id=i,
            interaction_kwargs={"name": name, **kwargs},
        )
        for i in range(n)
    ]


# ---- the 8 tests ---------------------------------------------------------------------------------------------------
def test_extract_logits_from_sglang_output():
    """Hand-written SGLang output -> capture; and for every mode, SGLang's values equal the hf capture of the same
    logits (one capture module serves every engine)."""
    sampled = capture_from_sglang(LITERAL, CaptureSpec("logprob"))
    assert sampled.token_ids.tolist() == [40, 41, 2]  # the leading None input logprob is not a generated token
    assert sampled.logprobs.tolist() == [-1.5, -0.25, -0.75]
    top = capture_from_sglang(LITERAL["meta_info"], CaptureSpec("topk", k=2))  # meta_info alone works too
    assert top.topk_logprobs.tolist() == [[-0.5, -1.5], [-0.25, -2.0], [-0.75, -1.0]]
    assert top.topk_ids.tolist() == [[7, 40], [41, 9], [2, 8]]

    tokens = [YES, 41, EOS]
    logits = known_logits(0, len(tokens))
    for spec in (
        CaptureSpec("logprob"),
        CaptureSpec("topk", k=20),
        CaptureSpec("token_ids", ids=(YES, NO)),
        CaptureSpec("full"),
    ):
        request = sglang_sampling_kwargs(spec, VOCAB)  # what SGLangRolloutWithLogit asks the engine for
        response = sglang_response(logits, tokens, (10, 11), request["top_logprobs_num"], request["token_ids_logprob"])
        got, want = capture_from_sglang(response, spec), capture_from_logits(logits, torch.tensor(tokens), spec)
        if spec.mode == "full":  # SGLang returns log-probabilities: the same logits up to a per-row constant
            close(torch.log_softmax(got.logits, -1), torch.log_softmax(want.logits, -1), atol=1e-5)
            got.logits = want.logits = None
        same_capture(got, want)

    # SGLangRolloutWithLogit asks the engine for the mode's fields and packs them.
    engine = sglang_double.SGLangEngineDouble(
        replies=[[YES, 41, EOS], [50, 51, 52, 53]], logits=lambda call, row, n: known_logits(row, n)
    )
    rollout = with_logit_rollout(engine, logit_capture={"enable": True, "mode": "topk"})
    out = rollout.generate_sequences(prompts_proto())
    assert generate_calls(engine)[0]["top_logprobs_num"] == [20, 20]
    assert out.batch["rollout_topk_logprobs"].shape == (2, 4, 20)
    want = capture_from_logits(known_logits(1, 4), torch.tensor([50, 51, 52, 53]), CaptureSpec("topk"))
    close(out.batch["rollout_topk_logprobs"][1], want.topk_logprobs)


def prompts_proto() -> DataProto:
    ids, mask = torch.tensor([[10, 11, 12], [PAD, 20, 21]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    return DataProto.from_dict(
        tensors={"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(0)},
        non_tensors={"uid": np.array(["a", "b"], dtype=object)},
        meta_info={"eos_token_id": EOS, "pad_token_id": PAD},
    )


def test_store_in_async_rollout_request():
    """A turn's capture is kept on the request, one per assistant turn, aligned with the ids it describes."""
    spec = CaptureSpec("token_ids", ids=(YES, NO))
    tokens = [YES, 41, 42, EOS]
    response = sglang_response(known_logits(1, 4), tokens, token_ids_logprob=spec.ids)
    capture = capture_from_sglang(response, spec)
    req = AsyncRolloutRequest(request_id="r0", messages=[{"role": "user", "content": "q"}], prompt_ids=[10, 11, 12])
    req.transition(AsyncRolloutRequestStateEnum.RUNNING)
    req.add_assistant_tokens(response["output_ids"], capture, content="yes")
    assert req.generation_logits == [capture] and req.response_ids == tokens and req.response_loss_mask == [1] * 4
    assert req.assistant_positions() == [0, 1, 2, 3]

    try:  # a capture whose rows do not match the ids is refused
        req2 = AsyncRolloutRequest(request_id="r1", messages=[{"role": "user", "content": "q"}], prompt_ids=[10])
        req2.transition(AsyncRolloutRequestStateEnum.RUNNING)
        req2.add_assistant_tokens(tokens[:3], capture, content="yes")
        raise AssertionError("a 4-row capture was accepted for 3 ids")
    except ValueError as err:
        assert "4 rows" in str(err), err

    req.truncate_output_ids(2)  # cutting the response cuts the capture with it
    assert len(req.generation_logits[0]) == 2 and req.generation_logits[0].token_ids.tolist() == tokens[:2]
    close(req.generation_logits[0].id_logprobs, capture.id_logprobs[:2])
    assert pickle.loads(pickle.dumps(req)).generation_logits[0].id_logprobs.shape == (2, 2)  # crosses processes


def test_pass_through_dataproto():
    """captures_to_tensors -> DataProto -> generation_logits_from_batch gives back each sample's capture, also after
    a pickle round trip (how Ray moves it) and DataProto.concat of chunks."""
    spec = CaptureSpec("topk", k=3)
    replies = [[YES, 41, EOS], [50, 51, 52, 53, 54]]
    request = sglang_sampling_kwargs(spec, VOCAB)
    captures = [
        capture_from_sglang(
            sglang_response(known_logits(i, len(r)), r, top_logprobs_num=request["top_logprobs_num"]), spec
        )
        for i, r in enumerate(replies)
    ]
    R = 6
    tensors = captures_to_tensors(captures, R, spec)
    responses = torch.full((2, R), PAD)
    mask = torch.zeros(2, R, dtype=torch.long)
    for i, r in enumerate(replies):
        responses[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    data = DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, **tensors})
    assert data.batch["rollout_topk_logprobs"].shape == (2, R, 3) and data.batch["rollout_topk_ids"].dtype == torch.long

    def check(proto: DataProto) -> None:
        for i, capture in enumerate(captures):
            got = generation_logits_from_batch(proto.batch, i, proto.batch["response_mask"][i], spec)
            assert got["mode"] == "topk" and got["raw"] is False
            same_capture(got, capture)

    check(data)
    check(pickle.loads(pickle.dumps(data)))
    check(DataProto.concat(data.chunk(2)))

    # The same through the rollout's own output (token_ids mode).
    engine = sglang_double.SGLangEngineDouble(replies=replies, logits=lambda call, row, n: known_logits(row, n))
    capture_cfg = {"enable": True, "mode": "token_ids", "ids": [YES, NO]}
    out = with_logit_rollout(engine, response_length=R, logit_capture=capture_cfg).generate_sequences(prompts_proto())
    out = DataProto.concat(pickle.loads(pickle.dumps(out)).chunk(2))
    for i, r in enumerate(replies):
        want = capture_from_logits(known_logits(i, len(r)), torch.tensor(r), CaptureSpec("token_ids", ids=(YES, NO)))
        same_capture(generation_logits_from_batch(out.batch, i, out.batch["response_mask"][i]), want)


def test_pass_through_interaction_kwargs():
    """The interaction's generate_response gets the turn's capture as ``generation_logits`` next to the sample's
    ``interaction_kwargs``; MultiTurnDialogInteraction scores with it."""
    from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction

    spec = CaptureSpec("token_ids", ids=(YES, NO))
    recorder = RecordingInteraction({"name": "rec", "turns": 1})
    reqs = dialog_requests(2, "rec", topic="papers", threshold=0.5)
    rollout = with_logit_rollout(scripted_engine([[YES, EOS]]), logit_capture={"enable": True, **spec.describe()})
    settings = TurnLoopSettings(32, None, None, {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": -1})
    # the worker's path: the rollout's engine inside the loop's event loop (SGLang's blocking calls go off the loop)
    asyncio.run(run_multiturn(reqs, rollout.engine, {"rec": recorder}, tokenizer(), settings, spec))
    assert len(recorder.seen) == 2
    for row, kwargs in enumerate(recorder.seen):
        assert kwargs["topic"] == "papers" and kwargs["threshold"] == 0.5 and kwargs["name"] == "rec"
        logits = kwargs["generation_logits"]
        assert logits["mode"] == "token_ids" and logits["ids"] == [YES, NO] and logits["raw"] is False
        assert logits["id_logprobs"].shape == (2, 2) and logits["token_ids"].tolist() == [YES, EOS]
        want = capture_from_logits(known_logits(row, 2), torch.tensor([YES, EOS]), spec)
        same_capture(logits, want)

    # The worked example reads P(label) from them: score = 0.5 * exact + 0.5 * P(yes) at the answer position.
    dialog = MultiTurnDialogInteraction(
        {"name": "dialog", "prob_weight": 0.5, "label_token_ids": {"yes": YES, "no": NO}}
    )
    reqs = dialog_requests(1, "dialog", questions=[{"question": "Paper A?", "label": "yes"}])
    rollout = with_logit_rollout(scripted_engine([[YES, EOS]]), logit_capture={"enable": True, **spec.describe()})
    asyncio.run(run_multiturn(reqs, rollout.engine, {"dialog": dialog}, tokenizer(), settings, spec))
    p_yes = float(torch.softmax(known_logits(0, 2)[0], -1)[YES])
    score = reqs[0].reward_scores["dialog"][0]
    assert abs(score - (0.5 * 1.0 + 0.5 * p_yes)) < 1e-5, (score, p_yes)
    assert abs(reqs[0].metrics["interaction_data"][0]["label_prob"] - p_yes) < 1e-5


def test_shape_and_value_checks():
    """Shapes ``[L]``, ``[L, k]``, ``[L, n]``, ``[L, V]``; no NaN, no +inf, -inf only where top-k/top-p filtered,
    never all zero; padding in the batch is 0 (ids -1)."""
    L, k = 6, 20
    logits = known_logits(7, L)
    temperature, top_k, top_p = 0.7, 10, 0.9
    kept = torch.isfinite(processed_logits(logits, temperature, top_k, top_p))  # (L, V)
    tokens = torch.tensor([int(row.nonzero()[0]) for row in kept])  # a kept token per step
    filtered_id = int((~kept[0]).nonzero()[0])
    ids = (int(tokens[0]), filtered_id)
    for spec, shape in (
        (CaptureSpec("logprob"), None),
        (CaptureSpec("topk", k=k), (L, k)),
        (CaptureSpec("token_ids", ids=ids), (L, 2)),
        (CaptureSpec("full"), (L, VOCAB)),
    ):
        cap = capture_from_logits(logits, tokens, spec, temperature, top_k, top_p)
        assert cap.logprobs.shape == (L,) and torch.isfinite(cap.logprobs).all() and (cap.logprobs <= 0).all()
        assert cap.logprobs.abs().sum() > 0, "all-zero logprobs"
        values = {"topk": cap.topk_logprobs, "token_ids": cap.id_logprobs, "full": cap.logits}.get(spec.mode)
        if values is None:
            continue
        assert values.shape == shape, (spec.mode, values.shape)
        assert not torch.isnan(values).any() and not (values == float("inf")).any(), spec.mode
        assert values[torch.isfinite(values)].abs().sum() > 0, f"{spec.mode}: all zero"
        if spec.mode == "topk":  # only the kept tokens are finite, best first
            assert torch.equal(torch.isfinite(values).sum(-1), kept.sum(-1).clamp(max=k))
            assert (values[:, :-1] >= values[:, 1:]).all()
        elif spec.mode == "token_ids":
            assert torch.equal(torch.isfinite(values), kept[:, list(ids)]) and values[0, 1] == float("-inf")
        else:
            assert torch.equal(torch.isfinite(values), kept)

    # SGLang 0.5.23 does not filter: every value it returns is finite; padded batch rows stay 0 / -1.
    spec = CaptureSpec("topk", k=5)
    caps = [
        capture_from_sglang(sglang_response(known_logits(i, 3), [5, 6, EOS], top_logprobs_num=5), spec) for i in (0, 1)
    ]
    caps[1] = None
    packed = captures_to_tensors(caps, 5, spec)
    assert all(torch.isfinite(v.float()).all() for v in packed.values())
    assert (packed["rollout_log_probs"][0, :3] < 0).all() and (packed["rollout_log_probs"][0, 3:] == 0).all()
    assert (packed["rollout_topk_ids"][0, 3:] == -1).all() and (packed["rollout_topk_ids"][1] == -1).all()


def test_capture_across_multiple_turns():
    """Two assistant turns: each turn's capture lands at that turn's response columns, user tokens hold 0."""
    spec = CaptureSpec("token_ids", ids=(YES, NO))
    interaction = RecordingInteraction({"name": "rec", "turns": 2})
    reqs = dialog_requests(2, "rec")
    replies = [[YES, 41, EOS], [NO, 42, 43, EOS]]
    engine = scripted_engine(replies)
    rollout = with_logit_rollout(engine, logit_capture={"enable": True, **spec.describe()})
    settings = TurnLoopSettings(48, 2, None, {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": -1})
    asyncio.run(run_multiturn(reqs, rollout.engine, {"rec": interaction}, tokenizer(), settings, spec))

    def expected(turn: int, row: int) -> TokenCapture:  # the double's logits for that call and row
        tokens = replies[turn]
        return capture_from_logits(known_logits(100 * turn + row, len(tokens)), torch.tensor(tokens), spec)

    captures = [[expected(turn, row) for row in range(2)] for turn in range(2)]
    tensors, non_tensors = requests_to_batch(reqs, 32, 48, PAD, spec)
    data = pickle.loads(pickle.dumps(DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)))
    assert [len(call["input_ids"]) for call in generate_calls(engine)] == [2, 2]  # one batched call per round
    for i, req in enumerate(reqs):
        assert req.assistant_turns == 2 and req.user_turns == 1 and len(req.generation_logits) == 2
        (s0, e0), (s1, e1) = req.assistant_spans
        assert (e0 - s0, e1 - s1) == (3, 4) and s1 > e0, req.assistant_spans  # user tokens between the turns
        mask = tensors["response_mask"][i]
        assert mask.nonzero().flatten().tolist() == req.assistant_positions()
        for turn, (start, end) in enumerate(req.assistant_spans):
            want = captures[turn][i]
            close(tensors["rollout_log_probs"][i, start:end], want.logprobs)
            close(tensors["rollout_token_id_logprobs"][i, start:end], want.id_logprobs)
        user = (mask == 0) & (tensors["attention_mask"][i, 32:] == 1)  # user tokens (not padding)
        assert int(user.sum()) == s1 - e0
        assert (tensors["rollout_log_probs"][i][user] == 0).all()
        assert (tensors["rollout_token_id_logprobs"][i][user] == 0).all()
        # The per-sample view (what reward functions get) holds both turns, in order, with their columns.
        per_sample = non_tensors["generation_logits"][i]
        assert per_sample["positions"] == req.assistant_positions()
        both_turns = TokenCapture.concat([captures[0][i], captures[1][i]])
        same_capture(per_sample, both_turns)
        same_capture(generation_logits_from_batch(data.batch, i, data.batch["response_mask"][i], spec), both_turns)
    # Each round the interaction saw only that turn's capture (rows 0, 1 of turn 1, then of turn 2).
    seen = [kw["generation_logits"] for kw in interaction.seen]
    for got, want in zip(seen, captures[0] + captures[1], strict=True):
        same_capture(got, want)


def test_memory_per_mode():
    """Bytes per generated token, measured on real captures: 4 (logprob), 8k (topk), 4n (token_ids), 4V / 2V (full
    fp32 / fp16); full refuses before generating when a batch would exceed max_bytes."""
    L, k = 5, 20
    tokens = [YES, 41, 42, 43, EOS]
    logits = known_logits(3, L)
    cases = {
        "logprob": (CaptureSpec("logprob"), 4),
        "topk k=20": (CaptureSpec("topk", k=k), 8 * k),
        "token_ids n=3": (CaptureSpec("token_ids", ids=(YES, NO, 41)), 4 * 3),
        "full fp32": (CaptureSpec("full"), 4 * VOCAB),
        "full fp16": (CaptureSpec("full", dtype=torch.float16), 2 * VOCAB),
    }
    for name, (spec, expected) in cases.items():
        request = sglang_sampling_kwargs(spec, VOCAB)
        response = sglang_response(logits, tokens, (10,), request["top_logprobs_num"], request["token_ids_logprob"])
        capture = capture_from_sglang(response, spec)
        measured = capture.nbytes() / len(capture)
        assert measured == expected == bytes_per_token(spec, VOCAB), (name, measured, expected)
        print(f"      {name:<14} {measured:>6.0f} B/token")
    full = CaptureSpec("full", max_bytes=1 << 20)
    assert estimate_capture_bytes(full, 8, 256, VOCAB) == 8 * 256 * 4 * VOCAB  # 4 MiB
    check_capture_budget(CaptureSpec("topk", k=k, max_bytes=1), 8, 256, VOCAB)  # only full is budgeted
    try:
        check_capture_budget(full, 8, 256, VOCAB)
        raise AssertionError("4 MiB of logits passed a 1 MiB budget")
    except ValueError as err:
        assert "4194304 bytes" in str(err) and "max_bytes=1048576" in str(err), err

    engine = sglang_double.SGLangEngineDouble(replies=[[YES, EOS]])
    capture_cfg = {"enable": True, "mode": "topk", "k": 20, "max_bytes": 1024}
    rollout = with_logit_rollout(engine, logit_capture=capture_cfg)
    rollout.generate_sequences(prompts_proto())  # the budget is for full mode only
    try:  # full mode is refused on SGLang (it returns log-probabilities, never logits), before any generation
        with_logit_rollout(engine, logit_capture={"enable": True, "mode": "full", "max_bytes": 1024})
        raise AssertionError("full mode was accepted on SGLang")
    except ValueError as err:
        assert "never logits" in str(err) and "mode=topk" in str(err), err
    assert len(generate_calls(engine)) == 1


def _with_logit_class() -> type:
    """``SGLangRolloutWithLogit``: imported for real where SGLang is installed; elsewhere through a placeholder
    ``sglang`` module that only satisfies the import guard (the class never touches SGLang when given an engine),
    removed again afterwards so nothing else sees it."""
    name = "verl.workers.rollout.sglang_rollout.sglang_rollout_with_logit"
    if importlib.util.find_spec("sglang") is not None:
        return importlib.import_module(name).SGLangRolloutWithLogit
    placeholder = types.ModuleType("sglang")
    placeholder.__spec__ = importlib.machinery.ModuleSpec("sglang", None)
    sys.modules["sglang"] = placeholder
    try:
        return importlib.import_module(name).SGLangRolloutWithLogit
    finally:
        package = sys.modules["verl.workers.rollout.sglang_rollout"]
        for module in ("sglang", name, "verl.workers.rollout.sglang_rollout.sglang_rollout"):
            sys.modules.pop(module, None)
            if hasattr(package, module.rpartition(".")[2]):  # `from package import module` must fail again
                delattr(package, module.rpartition(".")[2])


def test_imports_and_methods():
    """The registry names the pip extra when SGLang is missing; the adapter and SGLangRolloutWithLogit have the
    rollout methods, and SGLangRolloutWithLogit captures logprobs even with logit_capture off."""
    from verl.workers.rollout import logit_capture
    from verl.workers.rollout.base import BaseRollout, get_rollout_class
    from verl.workers.rollout.sglang_rollout import adapter

    for symbol in ("SGLangAdapter", "parse_generate_output", "sglang_generate_kwargs"):
        assert hasattr(adapter, symbol), symbol
    for symbol in logit_capture.__all__:
        assert hasattr(logit_capture, symbol), symbol
    if importlib.util.find_spec("sglang") is None:
        try:
            get_rollout_class("sglang_with_logit", "async")
            raise AssertionError("sglang_with_logit resolved without SGLang")
        except ImportError as err:
            assert "verl[sglang]" in str(err) and "'sglang_with_logit'" in str(err), err

    cls = _with_logit_class()
    assert issubclass(cls, adapter.SGLangAdapter) and issubclass(cls, BaseRollout) and cls.capture_by_default
    for method in ("generate_sequences", "update_weights", "resume", "release"):
        assert callable(getattr(cls, method)), method
    assert asyncio.iscoroutinefunction(cls.update_weights) and asyncio.iscoroutinefunction(cls.release)

    engine = sglang_double.SGLangEngineDouble(
        replies=[[YES, 41, EOS]], logits=lambda call, row, n: known_logits(row, n)
    )
    rollout = cls(model_dir(), RolloutConfig(name="sglang_with_logit", response_length=4), engine=engine)
    assert rollout.capture_spec == CaptureSpec("logprob")  # logit_capture.enable=false still captures the logprob
    out = rollout.generate_sequences(prompts_proto())
    want = capture_from_logits(known_logits(0, 3), torch.tensor([YES, 41, EOS]), CaptureSpec("logprob"))
    close(out.batch["rollout_log_probs"][0, :3], want.logprobs)
    assert generate_calls(engine)[0]["top_logprobs_num"] == [0, 0]
    # verl's async face inside asyncio.run: SGLang's blocking API runs off the loop (the double fails otherwise)
    asyncio.run(rollout.update_weights([("w", torch.zeros(2))], bucket_bytes=64))
    assert engine.calls[-2:] == [
        ("update_weights_from_tensor", {"names": ["w"], "flush_cache": False}),
        ("flush_cache", {}),
    ]


TESTS = [
    test_extract_logits_from_sglang_output,
    test_store_in_async_rollout_request,
    test_pass_through_dataproto,
    test_pass_through_interaction_kwargs,
    test_shape_and_value_checks,
    test_capture_across_multiple_turns,
    test_memory_per_mode,
    test_imports_and_methods,
]


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
