"""Interactions: simulated users that answer the policy between assistant turns of a multi-turn rollout.

Listed in the YAML at ``actor_rollout_ref.rollout.multi_turn.interaction_config_path`` and loaded by
``verl.interactions.utils.interaction_registry.initialize_interactions_from_config``; each sample's
``extra_info.interaction_kwargs["name"]`` picks one.
"""

from verl.interactions.base import BaseInteraction

__all__ = ["BaseInteraction"]
