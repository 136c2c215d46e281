"""Per-request state of a multi-turn rollout: ``AsyncRolloutRequest`` and its state machine.

A request holds one conversation: the chat ``messages``, the prompt token ids, and the response token ids that
grow turn by turn, with a loss mask that is 1 on tokens the policy generated and 0 on tokens an interaction (the
simulated user) contributed.

No re-tokenisation. The ids the policy is trained on are exactly the ids it sampled: ``add_assistant_tokens``
appends them verbatim, and ``add_user_message`` tokenises only the new piece of the chat template (the close of the
assistant turn, the user turn and the next generation prompt), never what came before. The piece is found by
rendering ``[assistant: PLACEHOLDER]`` and ``[assistant: PLACEHOLDER, user: content]`` and keeping what follows the
placeholder, so it works with any template that renders earlier messages independently of later ones.

Sanity check (``multi_turn.tokenization_sanity_check_mode``): after each user message the text the ids decode to
is compared with the chat template rendered over the whole conversation. Text, not ids, because the policy's own
ids may legitimately differ from a re-tokenisation (a non-canonical split of the same text); what must not
differ is the conversation they spell. ``strict`` wants the text identical, ``ignore_strippable`` ignores
whitespace, ``disable`` skips the check.

State machine::

    PENDING -> RUNNING -> INTERACTING -> RUNNING -> ... -> COMPLETED      (any non-final state -> FAILED)
                       -> TOOL_CALLING -> RUNNING                         (tool calls, ``tool_agent``)
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AsyncRolloutRequest",
    "AsyncRolloutRequestStateEnum",
    "FinishReasonTypeEnum",
    "TokenizationSanityCheckModeEnum",
    "render_chat",
]

_PLACEHOLDER = "<<<VERL_ASSISTANT_PLACEHOLDER>>>"


class AsyncRolloutRequestStateEnum(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TOOL_CALLING = "tool_calling"
    INTERACTING = "interacting"


class FinishReasonTypeEnum(str, enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    TOOL_CALL = "tool_calls"

    @classmethod
    def from_str(cls, value: str) -> FinishReasonTypeEnum:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown finish reason {value!r}; expected one of {[m.value for m in cls]}") from None


class TokenizationSanityCheckModeEnum(str, enum.Enum):
    DISABLE = "disable"
    STRICT = "strict"
    IGNORE_STRIPPABLE = "ignore_strippable"


_S = AsyncRolloutRequestStateEnum
_ALLOWED = {
    _S.PENDING: {_S.RUNNING, _S.FAILED},
    _S.RUNNING: {_S.INTERACTING, _S.TOOL_CALLING, _S.COMPLETED, _S.FAILED},
    _S.INTERACTING: {_S.RUNNING, _S.COMPLETED, _S.FAILED},
    _S.TOOL_CALLING: {_S.RUNNING, _S.COMPLETED, _S.FAILED},
    _S.COMPLETED: set(),
    _S.FAILED: set(),
}


def render_chat(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template rendered to text (tokenise it with ``add_special_tokens=False``)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _decode(tokenizer: Any, ids: list[int], skip_special_tokens: bool = False) -> str:
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


class AsyncRolloutRequest(BaseModel):
    """One conversation of a multi-turn rollout.

    Token lists are plain Python lists; ``response_ids`` holds assistant and user tokens interleaved, in order, and
    ``response_loss_mask`` (same length) is 1 on the assistant's. ``assistant_spans`` are the ``[start, end)``
    ranges of ``response_ids`` each assistant turn wrote; ``generation_logits`` has one capture per assistant turn
    (``TokenCapture`` from ``logit_capture``) or is None when capture is off.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, validate_assignment=False)

    request_id: str
    batch_data_id: int = 0
    rollout_offset: int = 0
    state: AsyncRolloutRequestStateEnum = AsyncRolloutRequestStateEnum.PENDING
    messages: list[dict[str, Any]]
    interaction_kwargs: dict[str, Any] = Field(default_factory=dict)
    prompt_ids: list[int]
    response_ids: list[int] = Field(default_factory=list)
    response_loss_mask: list[int] = Field(default_factory=list)
    assistant_spans: list[tuple[int, int]] = Field(default_factory=list)
    user_turns: int = 0
    reward_scores: dict[str, list[float]] = Field(default_factory=dict)
    metrics: dict[str, list[Any]] = Field(default_factory=dict)
    generation_logits: list[Any] | None = None
    max_response_len: int = 8192
    eos_token_id: int | None = None
    tokenization_sanity_check_mode: TokenizationSanityCheckModeEnum = TokenizationSanityCheckModeEnum.STRICT
    finish_reason: FinishReasonTypeEnum | None = None

    @classmethod
    def from_messages(
        cls,
        tokenizer: Any,
        messages: list[dict[str, Any]],
        request_id: str,
        prompt_ids: list[int] | None = None,
        **fields: Any,
    ) -> AsyncRolloutRequest:
        """A PENDING request; ``prompt_ids`` default to the rendered template with the generation prompt."""
        if prompt_ids is None:
            prompt_ids = _encode(tokenizer, render_chat(tokenizer, messages, add_generation_prompt=True))
        fields.setdefault("eos_token_id", tokenizer.eos_token_id)
        return cls(request_id=request_id, messages=[dict(m) for m in messages], prompt_ids=list(prompt_ids), **fields)

    # ----------------------------------------------------------------------------------------------- state machine
    def transition(self, new_state: AsyncRolloutRequestStateEnum) -> None:
        """Move to ``new_state``; raises ``ValueError`` naming both states on an illegal transition."""
        new_state = AsyncRolloutRequestStateEnum(new_state)
        if new_state not in _ALLOWED[self.state]:
            allowed = sorted(s.value for s in _ALLOWED[self.state]) or "none (final state)"
            raise ValueError(
                f"request {self.request_id}: illegal state transition {self.state.value} -> {new_state.value}; "
                f"allowed from {self.state.value}: {allowed}"
            )
        self.state = new_state

    def _require(self, state: AsyncRolloutRequestStateEnum, action: str) -> None:
        if self.state != state:
            raise ValueError(f"request {self.request_id}: {action} needs state {state.value}, not {self.state.value}")

    @property
    def is_finished(self) -> bool:
        return self.state in (_S.COMPLETED, _S.FAILED)

    # ----------------------------------------------------------------------------------------------- accessors
    @property
    def assistant_turns(self) -> int:
        return len(self.assistant_spans)

    @property
    def num_turns(self) -> int:
        """Chat turns: the prompt, plus every assistant and user turn (verl's agent-loop count)."""
        return 1 + self.assistant_turns + self.user_turns

    @property
    def remaining_budget(self) -> int:
        """Response tokens still available before ``max_response_len``."""
        return max(self.max_response_len - len(self.response_ids), 0)

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def attention_mask(self) -> list[int]:
        return [1] * (len(self.prompt_ids) + len(self.response_ids))

    @property
    def position_ids(self) -> list[int]:
        return list(range(len(self.prompt_ids) + len(self.response_ids)))

    def assistant_positions(self) -> list[int]:
        """Columns of ``response_ids`` holding generated tokens, in generation order (where captures go)."""
        return [i for start, end in self.assistant_spans for i in range(start, end)]

    # ----------------------------------------------------------------------------------------------- turns
    def add_assistant_tokens(
        self, token_ids: list[int], capture: Any = None, *, tokenizer: Any = None, content: str | None = None
    ) -> None:
        """Append the ids the policy generated (mask 1), verbatim, and the assistant message they spell.

        Args:
            token_ids: generated ids of this turn, ending with EOS when the model stopped by itself.
            capture: this turn's ``TokenCapture`` (one row per id) or None when capture is off.
            tokenizer: decodes the message content when ``content`` is not given.
            content: the message text; default: the ids decoded without the trailing EOS (special tokens kept,
                so the rendered conversation spells exactly these ids).
        """
        self._require(_S.RUNNING, "add_assistant_tokens")
        token_ids = [int(t) for t in token_ids]
        if len(token_ids) > self.remaining_budget:
            raise ValueError(
                f"request {self.request_id}: {len(token_ids)} generated tokens exceed the remaining response "
                f"budget of {self.remaining_budget} (max_response_len={self.max_response_len})"
            )
        if capture is not None and int(capture.token_ids.numel()) != len(token_ids):
            raise ValueError(
                f"request {self.request_id}: capture has {int(capture.token_ids.numel())} rows for "
                f"{len(token_ids)} generated tokens"
            )
        if content is None:
            if tokenizer is None:
                raise ValueError("add_assistant_tokens needs `content` or a `tokenizer` to decode the ids")
            body = token_ids[:-1] if token_ids and token_ids[-1] == self.eos_token_id else token_ids
            content = _decode(tokenizer, body)
        start = len(self.response_ids)
        self.response_ids.extend(token_ids)
        self.response_loss_mask.extend([1] * len(token_ids))
        self.assistant_spans.append((start, start + len(token_ids)))
        self.messages.append({"role": "assistant", "content": content})
        if capture is not None:
            self.generation_logits = (self.generation_logits or []) + [capture]

    def add_user_message(self, tokenizer: Any, content: str) -> list[int]:
        """Append a user message (mask 0) after an assistant turn; returns the ids added.

        Only the template's delta is tokenised: what closes the assistant turn (minus the EOS the model already
        generated), the user turn, and the next generation prompt. When the delta does not fit the response
        budget it is cut (the caller then finishes the request with reason ``length``).
        """
        self._require(_S.INTERACTING, "add_user_message")
        return self._append_messages(tokenizer, [{"role": "user", "content": content}], "a user message")

    def add_tool_response_messages(self, tokenizer: Any, contents: list[str]) -> list[int]:
        """Append the responses of the last assistant turn's tool calls (role ``tool``, mask 0), as
        :meth:`add_user_message` appends a user message (the same delta rendering, budget cut and sanity check);
        counts as one user turn. Returns the ids added."""
        self._require(_S.TOOL_CALLING, "add_tool_response_messages")
        messages = [{"role": "tool", "content": content} for content in contents]
        return self._append_messages(tokenizer, messages, "tool responses")

    def _append_messages(self, tokenizer: Any, messages: list[dict], what: str) -> list[int]:
        if not self.messages or self.messages[-1]["role"] != "assistant":
            raise ValueError(f"request {self.request_id}: {what} must follow an assistant turn")
        delta_text = self._delta_text(tokenizer, messages)
        if self.eos_token_id is not None and self.response_ids and self.response_ids[-1] == self.eos_token_id:
            eos_text = _decode(tokenizer, [self.eos_token_id])
            if delta_text.startswith(eos_text):  # the model already closed its turn with EOS
                delta_text = delta_text[len(eos_text) :]
        delta = _encode(tokenizer, delta_text)
        self.messages.extend(messages)
        self.user_turns += 1
        self._sanity_check(tokenizer, delta)
        delta = delta[: self.remaining_budget]
        self.response_ids.extend(delta)
        self.response_loss_mask.extend([0] * len(delta))
        return delta

    def _delta_text(self, tokenizer: Any, messages: list[dict]) -> str:
        base = [{"role": "assistant", "content": _PLACEHOLDER}]
        closed = render_chat(tokenizer, base, add_generation_prompt=False)
        extended = render_chat(tokenizer, base + messages, add_generation_prompt=True)
        if not extended.startswith(closed) or _PLACEHOLDER not in closed:
            raise ValueError(
                "the chat template renders earlier messages differently once a later one is added, so turn deltas "
                "cannot be rendered alone; multi-turn rollouts need an append-only chat template"
            )
        return closed[closed.index(_PLACEHOLDER) + len(_PLACEHOLDER) :] + extended[len(closed) :]

    def _sanity_check(self, tokenizer: Any, delta: list[int]) -> None:
        mode = TokenizationSanityCheckModeEnum(self.tokenization_sanity_check_mode)
        if mode == TokenizationSanityCheckModeEnum.DISABLE:
            return
        ours = _decode(tokenizer, self.prompt_ids + self.response_ids + delta)
        full = render_chat(tokenizer, self.messages, add_generation_prompt=True)
        if mode == TokenizationSanityCheckModeEnum.IGNORE_STRIPPABLE:
            same = "".join(ours.split()) == "".join(full.split())
        else:
            same = ours == full
        if not same:
            at = next((i for i, (a, b) in enumerate(zip(ours, full)) if a != b), min(len(ours), len(full)))
            raise ValueError(
                f"request {self.request_id}: tokenization sanity check ({mode.value}) failed at turn "
                f"{self.num_turns}: incremental text {ours[max(at - 20, 0) : at + 40]!r} vs full re-render "
                f"{full[max(at - 20, 0) : at + 40]!r} (character {at}). Set "
                "actor_rollout_ref.rollout.multi_turn.tokenization_sanity_check_mode=ignore_strippable to allow "
                "whitespace differences, or =disable"
            )

    def add_reward_score(self, name: str, score: float) -> None:
        self.reward_scores.setdefault(name, []).append(float(score))

    def update_metrics(self, **values: Any) -> None:
        """Append one value per key for this turn (e.g. ``generated_tokens=12, turn_latency_s=0.3``)."""
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(value)

    def finalize(self, finish_reason: FinishReasonTypeEnum | str = FinishReasonTypeEnum.STOP) -> None:
        """Finish the request: cut the response to ``max_response_len`` (mask and spans follow), mark COMPLETED."""
        self.finish_reason = FinishReasonTypeEnum(finish_reason)
        self.truncate_output_ids(self.max_response_len)
        self.transition(_S.COMPLETED)

    def truncate_output_ids(self, length: int) -> None:
        """Keep the first ``length`` response tokens; assistant spans and captures are cut to match."""
        if len(self.response_ids) <= length:
            return
        self.response_ids = self.response_ids[:length]
        self.response_loss_mask = self.response_loss_mask[:length]
        spans, captures = [], []
        for turn, (start, end) in enumerate(self.assistant_spans):
            if start >= length:
                break
            spans.append((start, min(end, length)))
            if self.generation_logits is not None:
                captures.append(_slice_capture(self.generation_logits[turn], min(end, length) - start))
        self.assistant_spans = spans
        if self.generation_logits is not None:
            self.generation_logits = captures
        self.finish_reason = FinishReasonTypeEnum.LENGTH


def _slice_capture(capture: Any, n: int) -> Any:
    """The first ``n`` rows of a ``TokenCapture`` (every per-token tensor field is cut)."""
    import dataclasses

    import torch

    rows = int(capture.token_ids.shape[0])
    if n >= rows:
        return capture
    changes = {
        f.name: getattr(capture, f.name)[:n]
        for f in dataclasses.fields(capture)
        if isinstance(getattr(capture, f.name), torch.Tensor)
        and getattr(capture, f.name).dim() >= 1
        and getattr(capture, f.name).shape[0] == rows
    }
    return dataclasses.replace(capture, **changes)
