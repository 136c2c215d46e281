"""``MultiTurnDialogInteraction``: a multi-turn classification dialogue scored with the policy's own probabilities.

Example task: "does this paper belong to this author?", one question per turn. Per sample,
``extra_info.interaction_kwargs`` carries::

    {"name": "dialog",
     "questions": [{"question": "Does 'Paper A' belong to Ada?", "label": "yes"},   # asked by the prompt itself
                   {"question": "And 'Paper B'?", "label": "no"}]}                   # asked by the interaction

The prompt asks ``questions[0]``; after the assistant's i-th turn the interaction judges it against
``questions[i]["label"]`` and replies with ``questions[i + 1]["question"]``, ending after the last question.

Score of a turn::

    exact      = 1 if the answer's first word (lower-cased, punctuation stripped) equals the label, else 0
    p_correct  = probability the policy gave the label's first token at the answer position
    score      = (1 - prob_weight) * exact + prob_weight * p_correct

The answer position is the first generated token that is one of the label tokens, else the turn's first token.
``p_correct`` comes from ``generation_logits`` (``TokenCapture.to_dict()`` of the turn), by capture mode:
``token_ids`` (``id_logprobs`` over ``ids``) and ``full`` (softmax of ``logits``) are exact; ``topk`` is exact when
the label token is in the top k, else 0; ``logprob`` knows only the sampled token, so it is exact when the sampled
token is a correct label token and 0 otherwise (a lower bound). Without captured logits ``score = exact``.
The overall score (``calculate_score``) is the mean turn score.

Config (the YAML entry's ``config``):
    label_token_ids: ``{label: id | [ids]}``; a label's probability is the sum over its ids (e.g. "yes", " yes").
    tokenizer_path: alternatively, a tokenizer to find each label's first token (with and without a leading space).
    prob_weight: the blend weight ``w`` in [0, 1] (default 0.5).
    closing: the reply after the last question (default "Thank you.").
"""

from __future__ import annotations

import logging
import math
import string
from typing import Any

from verl.interactions.base import BaseInteraction

__all__ = ["MultiTurnDialogInteraction", "extract_answer", "label_probability"]

logger = logging.getLogger(__name__)


def extract_answer(content: str) -> str:
    """The first word of ``content``, lower-cased, punctuation stripped (``" Yes, it does."`` -> ``"yes"``)."""
    words = content.strip().split()
    return words[0].strip(string.punctuation).lower() if words else ""


def _row(value: Any, index: int) -> list[float]:
    row = value[index]
    return row.tolist() if hasattr(row, "tolist") else list(row)


def label_probability(capture: dict[str, Any], label_ids: list[int], all_label_ids: set[int]) -> float:
    """P(any of ``label_ids``) at the answer position of one turn's capture (see the module doc for the modes).

    Args:
        capture: ``TokenCapture.to_dict()`` of the turn: ``token_ids`` (L,) and ``logprobs`` (L,), plus
            ``id_logprobs`` (L, n) with ``ids``, ``topk_logprobs``/``topk_ids`` (L, k), or ``logits`` (L, V).
        label_ids: the correct label's token ids.
        all_label_ids: every label's token ids (locates the answer position).
    """
    token_ids = [int(t) for t in _row_list(capture["token_ids"])]
    if not token_ids:
        return 0.0
    pos = next((i for i, t in enumerate(token_ids) if t in all_label_ids), 0)
    if capture.get("id_logprobs") is not None and capture.get("ids") is not None:
        ids = [int(i) for i in _row_list(capture["ids"])]
        row = _row(capture["id_logprobs"], pos)
        return float(sum(math.exp(row[ids.index(t)]) for t in label_ids if t in ids))
    if capture.get("logits") is not None:
        row = _row(capture["logits"], pos)
        top = max(row)
        norm = sum(math.exp(x - top) for x in row)
        return float(sum(math.exp(row[t] - top) for t in label_ids) / norm)
    if capture.get("topk_ids") is not None and capture.get("topk_logprobs") is not None:
        ids, row = [int(i) for i in _row(capture["topk_ids"], pos)], _row(capture["topk_logprobs"], pos)
        return float(sum(math.exp(lp) for i, lp in zip(ids, row) if i in label_ids))
    if capture.get("logprobs") is not None and token_ids[pos] in label_ids:
        return float(math.exp(float(_row_list(capture["logprobs"])[pos])))
    return 0.0


def _row_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


class MultiTurnDialogInteraction(BaseInteraction):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self.prob_weight = float(self.config.get("prob_weight", 0.5))
        if not 0.0 <= self.prob_weight <= 1.0:
            raise ValueError(f"{self.name}: config prob_weight={self.prob_weight} must lie in [0, 1]")
        self.closing = str(self.config.get("closing", "Thank you."))
        self.label_token_ids: dict[str, list[int]] = {}
        for label, ids in (self.config.get("label_token_ids") or {}).items():
            if isinstance(label, bool):  # YAML 1.1 reads unquoted yes/no/true/false as booleans
                raise ValueError(
                    f"interaction {self.name!r}: label_token_ids key {label!r} is a YAML boolean; quote the label "
                    "(e.g. 'yes': 360)"
                )
            self.label_token_ids[str(label).lower()] = [
                int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])
            ]
        self._tokenizer = None
        self._instances: dict[str, dict[str, Any]] = {}
        self._warned_no_logits = False

    def _ids_for(self, label: str) -> list[int]:
        """Token ids of ``label`` (from ``label_token_ids``, else the first token of it via ``tokenizer_path``)."""
        if label not in self.label_token_ids:
            path = self.config.get("tokenizer_path")
            if path is None:
                raise ValueError(
                    f"interaction {self.name!r}: label {label!r} has no entry in config label_token_ids "
                    f"{sorted(self.label_token_ids)} and no tokenizer_path is set to find its token"
                )
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(path)
            ids = {self._tokenizer.encode(text, add_special_tokens=False)[0] for text in (label, " " + label)}
            self.label_token_ids[label] = sorted(ids)
        return self.label_token_ids[label]

    async def start_interaction(
        self, instance_id: str | None = None, questions: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> str:
        if not questions or any("label" not in q for q in questions):
            raise ValueError(
                f"interaction {self.name!r}: interaction_kwargs['questions'] must be a non-empty list of "
                f"{{'question': str, 'label': str}}, got {questions!r}"
            )
        instance_id = await super().start_interaction(instance_id)
        labels = [str(q["label"]).strip().lower() for q in questions]
        for label in labels:
            self._ids_for(label)  # fail before generation when a label has no token
        self._instances[instance_id] = {"questions": list(questions), "labels": labels, "turn": 0, "scores": []}
        return instance_id

    def score_turn(self, answer: str, label: str, generation_logits: dict[str, Any] | None) -> tuple[float, dict]:
        """``(score, details)`` of one answer; see the module doc for the formula."""
        exact = float(extract_answer(answer) == label)
        details: dict[str, Any] = {"exact": exact, "label": label, "answer": extract_answer(answer)}
        if generation_logits is None or self.prob_weight == 0.0:
            if generation_logits is None and self.prob_weight > 0 and not self._warned_no_logits:
                logger.warning("%s: no generation_logits (logit capture off); scoring exact match only", self.name)
                self._warned_no_logits = True
            details["label_prob"] = None
            return exact, details
        every_label = {i for ids in self.label_token_ids.values() for i in ids}
        p_correct = label_probability(generation_logits, self._ids_for(label), every_label)
        details["label_prob"] = p_correct
        return (1.0 - self.prob_weight) * exact + self.prob_weight * p_correct, details

    async def generate_response(
        self,
        instance_id: str,
        messages: list[dict[str, Any]],
        generation_logits: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[bool, str, float, dict[str, Any]]:
        state = self._instances[instance_id]
        answer = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
        score, details = self.score_turn(answer, state["labels"][state["turn"]], generation_logits)
        state["scores"].append(score)
        state["turn"] += 1
        if state["turn"] >= len(state["questions"]):
            return True, self.closing, score, details
        return False, str(state["questions"][state["turn"]]["question"]), score, details

    async def calculate_score(self, instance_id: str, **kwargs: Any) -> float:
        scores = self._instances[instance_id]["scores"]
        return sum(scores) / len(scores) if scores else 0.0

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)
