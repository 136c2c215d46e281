"""``BaseInteraction``: the interface every interaction (simulated user) implements.

The turn loop (``verl.workers.rollout.multiturn.run_multiturn``) calls, per request::

    instance_id = await interaction.start_interaction(request_id, **interaction_kwargs)
    # after every assistant turn:
    done, reply, turn_score, extra = await interaction.generate_response(
        instance_id, messages, generation_logits=capture_dict_or_None, **interaction_kwargs)
    # at the end, whatever happened:
    await interaction.finalize_interaction(instance_id)

``messages`` is the whole chat so far (``{"role", "content"}`` dicts, the last one the assistant's turn).
``generation_logits`` is the latest assistant turn's ``TokenCapture.to_dict()`` when logit capture is on.
"""

from __future__ import annotations

import uuid
from typing import Any

__all__ = ["BaseInteraction"]


class BaseInteraction:
    """An interaction with per-instance state; the base class ends every dialogue after the first turn.

    Args:
        config: the ``config`` mapping of the interaction's YAML entry; ``name`` is injected by the registry.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = dict(config or {})
        self.name: str = self.config.get("name", "interaction_agent")

    async def start_interaction(self, instance_id: str | None = None, **kwargs: Any) -> str:
        """Create per-instance state; returns the instance id (a fresh uuid4 when none is given)."""
        return instance_id if instance_id is not None else str(uuid.uuid4())

    async def generate_response(
        self, instance_id: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> tuple[bool, str, float, dict[str, Any]]:
        """React to the latest assistant turn.

        Returns:
            ``(should_terminate_sequence, response_content, current_turn_score, additional_data)``. The base class
            terminates at once with an empty reply and score 0.
        """
        return True, "", 0.0, {}

    async def calculate_score(self, instance_id: str, **kwargs: Any) -> float:
        """The instance's overall score (0 in the base class)."""
        return 0.0

    async def finalize_interaction(self, instance_id: str, **kwargs: Any) -> None:
        """Release the instance's state."""
        return None
