"""``BaseTool``: the interface every tool implements (verl's).

Life of one tool instance, per sample and rollout::

    instance_id, response = await tool.create(create_kwargs...)      # once, before the first call
    response, reward, metrics = await tool.execute(instance_id, arguments)   # per call the model makes
    score = await tool.calc_reward(instance_id)                      # optional
    await tool.release(instance_id)                                  # always, also after a failure

``create_kwargs`` come from the sample's ``tools_kwargs[tool_name]["create_kwargs"]`` (``extra_info.tools_kwargs`` in
the parquet); ``execute_kwargs`` likewise. A tool reports a problem by returning a ``ToolResponse`` whose text says
what went wrong: the model reads it as the tool's answer, and the rollout goes on.
"""

from __future__ import annotations

import uuid
from typing import Any

from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

__all__ = ["BaseTool"]


class BaseTool:
    """A tool: an OpenAI function schema plus async ``create`` / ``execute`` / ``calc_reward`` / ``release``.

    Args:
        config: the ``config`` mapping of the tool's entry in the tool YAML.
        tool_schema: the function schema the model sees; None means the class's :meth:`default_schema`.
    """

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None):
        self.config = dict(config or {})
        self.tool_schema = tool_schema if tool_schema is not None else self.default_schema()
        if self.tool_schema is None:
            raise ValueError(f"{type(self).__name__} needs a tool_schema in the tool config (it has no default)")
        self.name = self.tool_schema.function.name
        self._instances: dict[str, dict[str, Any]] = {}

    @classmethod
    def default_schema(cls) -> OpenAIFunctionToolSchema | None:
        """The schema used when the YAML gives none (None: the YAML must give one)."""
        return None

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return self.tool_schema

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        """Start an instance for one sample; returns its id and an (often empty) response."""
        instance_id = instance_id or str(uuid.uuid4())
        self._instances[instance_id] = {"kwargs": kwargs, "reward": 0.0}
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict]:
        """Run one call; returns the response the model reads, a step reward and metrics."""
        raise NotImplementedError(f"{type(self).__name__}.execute")

    async def calc_reward(self, instance_id: str, **kwargs: Any) -> float:
        return float(self._instances.get(instance_id, {}).get("reward", 0.0))

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._instances.pop(instance_id, None)
