"""``Gsm8kInteraction``: a user who checks a GSM8K answer and asks for another try until it is right.

The last assistant message is scored with ``verl.utils.reward_score.gsm8k.compute_score`` (strict ``#### N``
format) against the sample's ``ground_truth`` (from ``interaction_kwargs``). Correct ends the dialogue with score 1;
anything else scores 0 and asks the model to reflect and try again.
"""

from __future__ import annotations

from typing import Any

from verl.interactions.base import BaseInteraction
from verl.utils.reward_score import gsm8k

__all__ = ["Gsm8kInteraction"]

CORRECT_REPLY = "Your response is correct!"
RETRY_REPLY = "Your response is incorrect! You need to reflect on your answer and try again."


class Gsm8kInteraction(BaseInteraction):
    def __init__(self, config: dict[str, Any]):
        super().__init__(config)
        self._instance_dict: dict[str, dict[str, Any]] = {}

    async def start_interaction(
        self, instance_id: str | None = None, ground_truth: str | None = None, **kwargs: Any
    ) -> str:
        instance_id = await super().start_interaction(instance_id)
        self._instance_dict[instance_id] = {"response": "", "ground_truth": ground_truth, "reward": 0.0}
        return instance_id

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        state = self._instance_dict[instance_id]
        state["response"] = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
        reward = await self.calculate_score(instance_id)
        if reward == 1.0:
            return True, CORRECT_REPLY, 1.0, {}
        return False, RETRY_REPLY, reward, {}

    async def calculate_score(self, instance_id: str, **kwargs: Any) -> float:
        state = self._instance_dict[instance_id]
        state["reward"] = gsm8k.compute_score(
            state["response"], str(state["ground_truth"]), method="strict", format_score=0.0, score=1.0
        )
        return state["reward"]

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None:
        self._instance_dict.pop(instance_id, None)
