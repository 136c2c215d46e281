"""Throughput of the OpenAI server: completion tokens/s at concurrency 1, 8 and 32, hf backend beside vLLM.

Each backend serves the same model through ``OpenAIServer``; the same ``--requests`` completions (sampled,
``max_tokens`` each, distinct seeds) are sent sequentially (concurrency 1) and then with 8 and 32 in flight
(``aiohttp``). Speedup is tokens/s over the sequential run of the same backend. The hf backend batches concurrent
requests (dynamic batching); the vLLM backend is an in-process engine with continuous batching.

Usage::

    python benchmarks/generation_server.py                       # the tiny test model, built offline
    python benchmarks/generation_server.py --model ~/models/Qwen2.5-0.5B-Instruct --backends hf vllm
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def _run(address: str, requests: int, concurrency: int, max_tokens: int, prompt: str) -> tuple[int, float]:
    """Send ``requests`` completions with ``concurrency`` in flight; returns (completion tokens, seconds)."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        body = {"model": "bench", "prompt": f"{prompt} {i}", "max_tokens": max_tokens, "temperature": 1.0, "seed": i}
        async with limit, session.post(f"{address}/v1/completions", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"request {i}: HTTP {resp.status}: {answer}")
            return answer["usage"]["completion_tokens"]

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await one(session, -1)  # warm-up (first forward pass, connection)
        start = time.perf_counter()
        tokens = await asyncio.gather(*(one(session, i) for i in range(requests)))
        return sum(tokens), time.perf_counter() - start


def bench_backend(name: str, model: str, args: argparse.Namespace) -> list[dict]:
    from verl.workers.rollout.openai_server import OpenAIServer

    kwargs = {"max_batch_size": max(args.concurrency), "max_model_len": args.max_model_len}
    start = time.perf_counter()
    server = OpenAIServer(model, backend=name, served_model_name="bench", **kwargs)
    address = server.start()
    print(f"[{name}] ready in {time.perf_counter() - start:.1f} s at {address}", flush=True)
    rows = []
    try:
        for concurrency in args.concurrency:
            tokens, seconds = asyncio.run(_run(address, args.requests, concurrency, args.max_tokens, args.prompt))
            batches = list(server.backend.batch_sizes)
            rows.append(
                {
                    "backend": name,
                    "concurrency": concurrency,
                    "tokens": tokens,
                    "seconds": seconds,
                    "tok_s": tokens / seconds,
                    "req_s": args.requests / seconds,
                    "max_batch": max(batches, default=1),
                }
            )
            server.backend.batch_sizes.clear()
            print(f"[{name}] concurrency {concurrency}: {tokens / seconds:.0f} tok/s", flush=True)
    finally:
        server.stop()
    base = rows[0]["tok_s"]
    for row in rows:
        row["speedup"] = row["tok_s"] / base
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model directory (default: build the tiny test model)")
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--prompt", default="please write the following list of numbers:")
    args = parser.parse_args()
    if args.concurrency[0] != 1:
        parser.error("the first --concurrency must be 1 (the sequential baseline)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = args.model
    if model is None:
        from verl.utils.testing.tiny import build_tiny_model

        model = str(build_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"), seed=0))
    rows = []
    for name in args.backends:
        try:
            rows += bench_backend(name, model, args)
        except ImportError as exc:
            print(f"[{name}] skipped: {exc}")
    print(f"\nmodel {model}; {args.requests} requests x {args.max_tokens} max tokens per concurrency level")
    print(
        f"{'backend':<8}{'conc':>6}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'req/s':>8}{'max batch':>11}{'speedup':>9}"
    )
    for r in rows:
        print(
            f"{r['backend']:<8}{r['concurrency']:>6}{r['tokens']:>8}{r['seconds']:>9.2f}{r['tok_s']:>9.0f}"
            f"{r['req_s']:>8.1f}{r['max_batch']:>11}{r['speedup']:>8.1f}x"
        )


if __name__ == "__main__":
    main()
