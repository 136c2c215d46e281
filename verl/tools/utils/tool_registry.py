"""Build tools from a tool YAML (``actor_rollout_ref.rollout.multi_turn.tool_config_path``), verl's format::

tools:
  - class_name: verl.tools.search_tool.SearchTool
    config: {type: native, retrieval_service_url: http://127.0.0.1:8001/retrieve, topk: 3, timeout: 30}
    tool_schema:            # optional for tools with a default schema
      type: function
      function: {name: search, description: ..., parameters: {...}}
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema

__all__ = ["get_tool_class", "initialize_tools_from_config", "tools_by_name"]


def get_tool_class(cls_name: str) -> type[BaseTool]:
    """The class at dotted path ``cls_name`` (``package.module.Class``)."""
    module_name, _, attr = cls_name.rpartition(".")
    if not module_name:
        raise ValueError(
            f"tool class_name {cls_name!r} must be a dotted path such as verl.tools.search_tool.SearchTool"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"tool class_name {cls_name!r}: cannot import module {module_name!r}: {err}") from err
    cls = getattr(module, attr, None)
    if cls is None:
        raise ImportError(f"tool class_name {cls_name!r}: module {module_name!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, BaseTool)):
        raise TypeError(f"tool class_name {cls_name!r} is not a subclass of verl.tools.base_tool.BaseTool")
    return cls


def initialize_tools_from_config(tools_config_file: str | None) -> list[BaseTool]:
    """The tools listed in ``tools_config_file`` (None or an empty list: no tools). Names must be unique."""
    if not tools_config_file:
        return []
    from omegaconf import OmegaConf

    path = Path(tools_config_file)
    where = f"tool config {tools_config_file!r} (actor_rollout_ref.rollout.multi_turn.tool_config_path)"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    entries = raw.get("tools") if isinstance(raw, dict) else None
    if entries is None or not isinstance(entries, list):
        raise ValueError(f"{where}: expected a top-level 'tools:' list")
    tools: list[BaseTool] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "class_name" not in entry:
            raise ValueError(f"{where}: entry {i} needs a class_name")
        config: dict[str, Any] = dict(entry.get("config") or {})
        kind = config.get("type", "native")
        if kind != "native":
            raise ValueError(
                f"{where}: entry {i} ({entry['class_name']}) has config.type={kind!r}; only native tools run here"
            )
        schema = entry.get("tool_schema")
        tool_schema = OpenAIFunctionToolSchema.model_validate(schema) if schema else None
        tools.append(get_tool_class(entry["class_name"])(config=config, tool_schema=tool_schema))
    names = [t.name for t in tools]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{where}: tool names must be unique; repeated: {duplicates}")
    return tools


def tools_by_name(tools: list[BaseTool]) -> dict[str, BaseTool]:
    return {tool.name: tool for tool in tools}
