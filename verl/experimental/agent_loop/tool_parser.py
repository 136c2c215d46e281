"""Tool-call parsers: the model's generated ids -> the text it wrote and the calls it made.

``hermes`` (``multi_turn.format=hermes``, the Qwen / NousResearch format): each call is
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. A call whose body is not such a JSON object is kept as
a :class:`ParsedCall` with ``error`` set, so the loop can tell the model what was wrong instead of ignoring it.
Register other formats with ``@ToolParser.register("name")``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["HermesToolParser", "ParsedCall", "ToolParser"]


@dataclass
class ParsedCall:
    """One call: the tool name, its arguments as a JSON string, and a parse error (None when well formed)."""

    name: str
    arguments: str
    error: str | None = None


class ToolParser:
    """Base class and registry of tool-call parsers (``ToolParser.get_tool_parser(name, tokenizer)``)."""

    _registry: ClassVar[dict[str, type[ToolParser]]] = {}

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    @classmethod
    def register(cls, name: str):
        def decorator(parser_cls: type[ToolParser]) -> type[ToolParser]:
            cls._registry[name] = parser_cls
            return parser_cls

        return decorator

    @classmethod
    def get_tool_parser(cls, name: str, tokenizer: Any) -> ToolParser:
        if name not in cls._registry:
            raise ValueError(
                f"unknown tool-call format {name!r} (actor_rollout_ref.rollout.multi_turn.format); "
                f"known: {sorted(cls._registry)}"
            )
        return cls._registry[name](tokenizer)

    def extract_tool_calls(self, response_ids: list[int]) -> tuple[str, list[ParsedCall]]:
        """``(text without the calls, calls in order)`` of one assistant turn."""
        text = self.tokenizer.decode(response_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return self.extract_from_text(text)

    def extract_from_text(self, text: str) -> tuple[str, list[ParsedCall]]:
        raise NotImplementedError


@ToolParser.register("hermes")
class HermesToolParser(ToolParser):
    """``<tool_call>{json}</tool_call>`` blocks (module docstring)."""

    _CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def extract_from_text(self, text: str) -> tuple[str, list[ParsedCall]]:
        calls = []
        for body in self._CALL.findall(text):
            calls.append(self._parse(body.strip()))
        content = self._CALL.sub("", text)
        return content, calls

    @staticmethod
    def _parse(body: str) -> ParsedCall:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as err:
            return ParsedCall("", body, f"the tool call is not valid JSON ({err.msg} at character {err.pos})")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ParsedCall("", body, 'the tool call must be a JSON object {"name": ..., "arguments": {...}}')
        arguments = obj.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            return ParsedCall(obj["name"], arguments)
        return ParsedCall(obj["name"], json.dumps(arguments, ensure_ascii=False))
