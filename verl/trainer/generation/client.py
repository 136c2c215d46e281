"""The request loop of ``main_generation_server``: chat completions spread over replicas, retried, never fatal.

One request per prompt row asks for all ``n`` responses (``"n": n``), so a row is finished or not as a whole and
the server can share the prompt's prefill. ``max_concurrency`` worker coroutines pull rows from a queue and send
each to the least-loaded replica (fewest requests in flight; ties rotate). A connection error, a timeout or an
HTTP 408/429/5xx answer is retried up to ``max_attempts`` times with exponential backoff, on another replica
when there is one; any other 4xx (a prompt too long for the model, a wrong model name) is not retried. A row
that still fails becomes a ``status="failed"`` record carrying the error, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ReplicaBalancer", "RequestSettings", "check_replicas", "generate_rows"]

_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass
class RequestSettings:
    """What every request carries and how hard to try."""

    model: str
    """``model`` field of the request (the served model name)."""
    sampling: dict[str, Any]
    """Request fields: ``n``, ``temperature``, ``top_p``, ``max_tokens``, optionally ``top_k``, ``seed``..."""
    max_concurrency: int = 32
    """Requests in flight over all replicas together."""
    max_attempts: int = 3
    """Tries per row before it is recorded as failed."""
    backoff_s: float = 1.0
    """Wait before the 2nd try; doubles for each further one (capped at 30 s)."""
    timeout_s: float = 600.0
    """Seconds one request may take."""
    api_key: str | None = None
    """Bearer token for servers started with an API key."""


class _RequestError(Exception):
    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ReplicaBalancer:
    """Least-loaded choice among replica URLs: the fewest requests in flight, ties broken round robin."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.inflight = [0] * len(urls)
        self._turn = 0

    def acquire(self, avoid: int | None = None) -> int:
        order = [(self._turn + k) % len(self.urls) for k in range(len(self.urls))]
        if avoid is not None and len(order) > 1:
            order.remove(avoid)
        best = min(order, key=lambda i: self.inflight[i])  # min keeps the first of equals: the rotation order
        self._turn = (best + 1) % len(self.urls)
        self.inflight[best] += 1
        return best

    def release(self, index: int) -> None:
        self.inflight[index] -= 1


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def check_replicas(urls: list[str], api_key: str | None = None, timeout_s: float = 10.0) -> None:
    """GET ``/health`` on every replica; raise ValueError naming each one that does not answer 200."""
    import aiohttp

    problems = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for i, url in enumerate(urls):
            try:
                async with session.get(f"{url}/health", headers=_headers(api_key)) as resp:
                    if resp.status != 200:
                        problems.append(f"replica {i} at {url} answered /health with HTTP {resp.status}")
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                problems.append(f"replica {i} at {url} is unreachable ({type(e).__name__}: {e})")
    if problems:
        raise ValueError("; ".join(problems) + ". Check the server addresses, or that the servers are running")


async def _post_once(session, url: str, body: dict, settings: RequestSettings) -> dict:
    import aiohttp

    try:
        async with session.post(f"{url}/v1/chat/completions", json=body, headers=_headers(settings.api_key)) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise _RequestError(
                    f"HTTP {resp.status} from {url}: {_error_message(text)}", resp.status in _RETRYABLE_STATUS
                )
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise _RequestError(f"{type(e).__name__} talking to {url}: {e}", retryable=True) from e
    try:
        payload = json.loads(text)
        choices = sorted(payload["choices"], key=lambda c: c.get("index", 0))
        responses = [c["message"]["content"] or "" for c in choices]
    except (ValueError, KeyError, TypeError) as e:
        raise _RequestError(f"malformed response from {url}: {text[:300]!r}", retryable=True) from e
    if len(responses) != body["n"]:
        raise _RequestError(f"{url} returned {len(responses)} choices for n={body['n']}", retryable=False)
    usage = payload.get("usage") or {}
    return {
        "responses": responses,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
        "response_tokens": int(usage.get("completion_tokens") or 0) / body["n"],
    }


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-shaped error body, else the start of the body."""
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:300]


async def _generate_row(session, balancer: ReplicaBalancer, row: int, messages: list, settings: RequestSettings):
    body = {"model": settings.model, "messages": messages, **settings.sampling}
    if body.get("seed") is not None:
        body["seed"] = int(body["seed"]) + row  # distinct per row, and the same on a resumed run
    start, error, last = time.monotonic(), None, None
    for attempt in range(1, settings.max_attempts + 1):
        index = balancer.acquire(avoid=last)
        try:
            result = await _post_once(session, balancer.urls[index], body, settings)
            latency = time.monotonic() - start
            return {
                "row": row,
                "status": "ok",
                "error": None,
                **result,
                "response_latency_s": latency,
                "attempts": attempt,
            }
        except _RequestError as e:
            error, last = str(e), index
            if not e.retryable:
                break
        finally:
            balancer.release(index)
        if attempt < settings.max_attempts:
            await asyncio.sleep(min(settings.backoff_s * 2 ** (attempt - 1), 30.0))
    return {
        "row": row,
        "status": "failed",
        "error": error,
        "responses": [],
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "response_tokens": 0.0,
        "response_latency_s": time.monotonic() - start,
        "attempts": attempt,
    }


async def generate_rows(
    rows: dict[int, list[dict]],
    urls: list[str],
    settings: RequestSettings,
    on_done: Callable[[dict[str, Any]], None],
) -> None:
    """Generate every row of ``rows`` (row id -> chat messages); ``on_done(record)`` as each row finishes.

    Records have the keys of ``verl.trainer.generation.io.RESULT_COLUMNS`` plus ``row``.
    """
    import aiohttp

    balancer = ReplicaBalancer(urls)
    queue: asyncio.Queue = asyncio.Queue()
    for item in rows.items():
        queue.put_nowait(item)

    async def worker(session) -> None:
        while True:
            try:
                row, messages = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            on_done(await _generate_row(session, balancer, row, messages, settings))

    timeout = aiohttp.ClientTimeout(total=settings.timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.max_concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        n_workers = max(1, min(settings.max_concurrency, len(rows)))
        await asyncio.gather(*(worker(session) for _ in range(n_workers)))
