"""``SearchTool``: ask a retrieval service for passages (Search-R1 style), verl's request and response shapes.

Request: ``POST retrieval_service_url`` with ``{"queries": [...], "topk": k, "return_scores": true}``.
Response: ``{"result": [[{"document": {"contents": "title\\ntext"}, "score": s}, ...], ...]}``, one list per query.
``python -m verl.tools.retrieval_server --corpus corpus.jsonl`` serves exactly that (BM25).

Config (the tool YAML's ``config``): ``retrieval_service_url`` (required), ``topk`` (3), ``timeout`` (seconds per
call, 30), ``max_query_chars`` (500). Arguments the model passes: ``query_list`` (verl's schema) or ``query``.
Every failure (service down, timeout, HTTP error, malformed answer, bad arguments) is a response text that says
what happened, with ``metrics["error"]`` naming the kind; the rollout goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

__all__ = ["SearchTool", "format_passages"]


def format_passages(results: list[list[dict[str, Any]]], queries: list[str]) -> str:
    """The text the model reads: per query, its passages as ``Doc i (Title: t) text``."""
    blocks = []
    for query, hits in zip(queries, results):
        lines = []
        for i, hit in enumerate(hits, 1):
            contents = str((hit.get("document") or {}).get("contents", ""))
            title, _, text = contents.partition("\n")
            lines.append(f"Doc {i} (Title: {title.strip()}) {text.strip()}".rstrip())
        body = "\n".join(lines) if lines else "(no passage found)"
        blocks.append(body if len(queries) == 1 else f"Query: {query}\n{body}")
    return "\n\n".join(blocks)


class SearchTool(BaseTool):
    """Search a retrieval service (module docstring)."""

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None):
        super().__init__(config, tool_schema)
        self.url = self.config.get("retrieval_service_url")
        if not self.url:
            raise ValueError("SearchTool needs config.retrieval_service_url (e.g. http://127.0.0.1:8001/retrieve)")
        self.topk = int(self.config.get("topk", 3))
        self.timeout = float(self.config.get("timeout", 30))
        self.max_query_chars = int(self.config.get("max_query_chars", 500))

    @classmethod
    def default_schema(cls) -> OpenAIFunctionToolSchema:
        return OpenAIFunctionToolSchema.model_validate(
            {
                "type": "function",
                "function": {
                    "name": "search",
                    "description": "Searches the corpus for passages about the queries.",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "query_list": {
                                "type": "array",
                                "items": {"type": "string"},
                                "description": "One or more search queries.",
                            }
                        },
                        "required": ["query_list"],
                    },
                },
            }
        )

    def _queries(self, parameters: dict[str, Any]) -> list[str] | None:
        queries = parameters.get("query_list", parameters.get("query"))
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
            return None
        return [q[: self.max_query_chars] for q in queries]

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict]:
        import aiohttp

        queries = self._queries(parameters)
        if queries is None:
            text = "search error: pass query_list, a non-empty list of strings"
            return ToolResponse(text=text), 0.0, {"error": "bad_arguments"}
        payload = {"queries": queries, "topk": self.topk, "return_scores": True}
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(self.url, json=payload) as resp:
                    if resp.status != 200:
                        body = (await resp.text())[:200]
                        return (
                            ToolResponse(
                                text=f"search error: the retrieval service answered HTTP {resp.status}: {body}"
                            ),
                            0.0,
                            {"error": "http_status"},
                        )
                    data = await resp.json(content_type=None)
        except asyncio.TimeoutError:
            return ToolResponse(text=f"search error: no answer within {self.timeout:g} s"), 0.0, {"error": "timeout"}
        except aiohttp.ClientError as err:
            text = f"search error: cannot reach the retrieval service at {self.url} ({type(err).__name__})"
            return ToolResponse(text=text), 0.0, {"error": "unreachable"}
        except ValueError:
            return (
                ToolResponse(text="search error: the retrieval service did not answer JSON"),
                0.0,
                {"error": "bad_response"},
            )
        results = data.get("result") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(queries):
            text = "search error: the retrieval service's answer has no 'result' list with one entry per query"
            return ToolResponse(text=text), 0.0, {"error": "bad_response"}
        hits = sum(len(r) for r in results)
        return ToolResponse(text=format_passages(results, queries)), 0.0, {"queries": len(queries), "passages": hits}
