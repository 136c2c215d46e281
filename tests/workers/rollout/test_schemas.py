"""AsyncRolloutRequest: loss mask, turn-boundary tokenisation without drift, sanity check modes, state machine."""

from __future__ import annotations

import pytest
import torch

from verl.workers.rollout.schemas import AsyncRolloutRequest, AsyncRolloutRequestStateEnum, render_chat

S = AsyncRolloutRequestStateEnum
PROMPT = [{"role": "user", "content": "Does the paper belong to the author? answer yes or no"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


def new_request(tok, **fields):
    return AsyncRolloutRequest.from_messages(tok, PROMPT, request_id="r0", **fields)


def assistant_turn(req, tok, ids, capture=None):
    req.transition(S.RUNNING)
    req.add_assistant_tokens(ids, capture, tokenizer=tok)
    req.transition(S.INTERACTING)


def test_loss_mask_exact_on_two_turn_conversation(tokenizer):
    tok = tokenizer
    req = new_request(tok)
    first = encode(tok, "yes it does") + [tok.eos_token_id]
    assistant_turn(req, tok, first)
    user = req.add_user_message(tok, "and the next paper?")
    second = encode(tok, "no") + [tok.eos_token_id]
    req.transition(S.RUNNING)
    req.add_assistant_tokens(second, tokenizer=tok)

    # The user delta is what follows the EOS the model generated: "\n", the user turn, the generation prompt.
    assert tok.decode(user) == "\n<|im_start|>user\nand the next paper?<|im_end|>\n<|im_start|>assistant\n"
    assert req.response_ids == first + user + second
    assert req.response_loss_mask == [1] * len(first) + [0] * len(user) + [1] * len(second)
    assert req.assistant_spans == [(0, len(first)), (len(first) + len(user), len(first) + len(user) + len(second))]
    assert req.assistant_positions() == list(range(len(first))) + list(
        range(len(first) + len(user), len(req.response_ids))
    )
    assert [m["content"] for m in req.messages] == [PROMPT[0]["content"], "yes it does", "and the next paper?", "no"]
    # Canonical assistant tokens: the incremental ids equal a full re-tokenisation of the conversation.
    full = encode(tok, render_chat(tok, req.messages, add_generation_prompt=False))
    assert req.input_ids == full[: len(req.input_ids)]
    assert req.num_turns == 1 + 2 + 1
    assert req.attention_mask == [1] * len(req.input_ids)
    assert req.position_ids == list(range(len(req.input_ids)))


def test_user_message_after_turn_without_eos_closes_the_assistant_turn(tokenizer):
    tok = tokenizer
    req = new_request(tok)
    assistant_turn(req, tok, encode(tok, "yes"))  # no EOS: the delta must close the turn itself
    user = req.add_user_message(tok, "why?")
    assert tok.decode(user).startswith("<|im_end|>\n<|im_start|>user\nwhy?")


def test_non_canonical_generated_ids_survive_unchanged(tokenizer):
    tok = tokenizer
    # "author" spelled one character per token: the same text, but not how the tokenizer would split it.
    odd = [encode(tok, ch)[0] for ch in "author"] + [tok.eos_token_id]
    assert encode(tok, "author") != odd[:-1]
    req = new_request(tok, tokenization_sanity_check_mode="strict")
    assistant_turn(req, tok, odd)
    req.add_user_message(tok, "ok")  # strict passes: the text is right even though the ids are not canonical
    assert req.response_ids[: len(odd)] == odd
    assert req.response_loss_mask[: len(odd)] == [1] * len(odd)
    assert req.messages[1]["content"] == "author"


@pytest.mark.parametrize("mode, raises", [("strict", True), ("ignore_strippable", False), ("disable", False)])
def test_sanity_check_modes_on_a_template_that_trims_content(tiny_model_dir, mode, raises):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | trim)")
    req = new_request(tok, tokenization_sanity_check_mode=mode)
    # The model answered with a leading space; the template trims it when the whole chat is re-rendered.
    assistant_turn(req, tok, encode(tok, " yes") + [tok.eos_token_id])
    if raises:
        with pytest.raises(ValueError, match=r"sanity check \(strict\) failed.*ignore_strippable"):
            req.add_user_message(tok, "next")
    else:
        req.add_user_message(tok, "next")
        assert req.user_turns == 1


def test_state_machine_rejects_illegal_transitions(tokenizer):
    req = new_request(tokenizer)
    with pytest.raises(ValueError, match="pending -> interacting"):
        req.transition(S.INTERACTING)
    with pytest.raises(ValueError, match="add_user_message needs state interacting"):
        req.add_user_message(tokenizer, "hi")
    req.transition(S.RUNNING)
    req.add_assistant_tokens([5], tokenizer=tokenizer)
    req.finalize()
    assert req.state == S.COMPLETED and req.finish_reason.value == "stop"
    with pytest.raises(ValueError, match="completed -> running.*final state"):
        req.transition(S.RUNNING)


def test_user_message_cut_to_the_response_budget(tokenizer):
    tok = tokenizer
    req = new_request(tok, max_response_len=6)
    assistant_turn(req, tok, encode(tok, "no") + [tok.eos_token_id])
    used = len(req.response_ids)
    added = req.add_user_message(tok, "this is a long question about the paper and the author")
    assert len(added) == 6 - used
    assert len(req.response_ids) == len(req.response_loss_mask) == 6
    assert req.remaining_budget == 0
    with pytest.raises(ValueError, match="exceed the remaining response budget"):
        req.transition(S.RUNNING)
        req.add_assistant_tokens([5], tokenizer=tok)


def test_truncate_cuts_spans_and_captures(tokenizer):
    from verl.workers.rollout.logit_capture import CaptureSpec, capture_from_logits

    tok = tokenizer
    spec = CaptureSpec(mode="topk", k=3)
    ids = encode(tok, "yes it does the paper") + [tok.eos_token_id]
    capture = capture_from_logits(torch.randn(len(ids), len(tok)), torch.tensor(ids), spec)
    req = new_request(tok)
    assistant_turn(req, tok, ids, capture)
    req.truncate_output_ids(3)
    assert req.response_ids == ids[:3] and req.response_loss_mask == [1, 1, 1]
    assert req.assistant_spans == [(0, 3)]
    assert req.generation_logits[0].topk_ids.shape == (3, 3)
    assert torch.equal(req.generation_logits[0].token_ids, torch.tensor(ids[:3]))
    assert req.finish_reason.value == "length"


def test_capture_rows_must_match_generated_tokens(tokenizer):
    from verl.workers.rollout.logit_capture import CaptureSpec, capture_from_logits

    capture = capture_from_logits(torch.randn(2, len(tokenizer)), torch.tensor([5, 6]), CaptureSpec())
    req = new_request(tokenizer)
    req.transition(S.RUNNING)
    with pytest.raises(ValueError, match="capture has 2 rows for 3 generated tokens"):
        req.add_assistant_tokens([5, 6, 7], capture, tokenizer=tokenizer)
