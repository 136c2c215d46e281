"""The Search-R1 agent written against the OpenAI client: no tokenisation, no masks, no verl types.

verl serves the policy behind a per-sample OpenAI endpoint and records every token it generates
(``verl.experimental.agent_loop.openai_agent_loop``); this function is all the user writes. Registered in
``agent_loop.yaml`` next to it; ``run_search_r1_cpu.sh`` uses it with ``AGENT=openai``.
"""

from __future__ import annotations

import json

import requests

SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches the corpus.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}


def search(query: str, url: str) -> str:
    try:
        answer = requests.post(url, json={"queries": [query], "topk": 1, "return_scores": True}, timeout=30).json()
    except (requests.RequestException, ValueError) as err:
        return f"search error: {type(err).__name__}"  # short: the model reads it
    hits = answer["result"][0]
    if not hits:
        return "(no passage found)"
    title, _, text = hits[0]["document"]["contents"].partition("\n")
    return f"Doc 1 (Title: {title}) {text}"


def solve(client, raw_prompt, retrieval_url: str = "http://127.0.0.1:8001/retrieve", **sample) -> None:
    """Ask, run the searches the model calls for, answer; at most 3 model turns. ``retrieval_url`` comes from the
    agent-loop YAML's ``agent_kwargs``."""
    messages = list(raw_prompt)
    for _ in range(3):
        reply = client.chat.completions.create(model="policy", messages=messages, tools=[SEARCH], max_tokens=64)
        message = reply.choices[0].message
        messages.append(
            {
                "role": "assistant",
                "content": message.content or "",
                "tool_calls": [c.model_dump() for c in message.tool_calls or []],
            }
        )
        if not message.tool_calls:
            return None
        for call in message.tool_calls:
            try:
                query = json.loads(call.function.arguments).get("query", "")
            except (json.JSONDecodeError, AttributeError):
                query = ""
            messages.append({"role": "tool", "tool_call_id": call.id, "content": search(str(query), retrieval_url)})
    return None
