"""Throughput of the embedded sandbox: runs/s of a trivial Python program at concurrency 1 and 8, in one run.

    python benchmarks/sandbox.py [--runs 80] [--concurrency 1 8] [--url http://host:port]

Each run is a full ``POST /run_code`` round trip (temp dir, limits, namespaces, a fresh interpreter, the kill
sweep). Without ``--url`` an :class:`EmbeddedSandbox` is started with ``max_concurrency`` = the largest level.
Target: >= 20 runs/s at concurrency 8 on 2 CPU cores (a real SandboxFusion server does 4-5/s there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from verl.utils.sandbox import EmbeddedSandbox

BODY = {"code": "print(sum(range(10)))", "language": "python", "run_timeout": 10}


def measure(url: str, runs: int, concurrency: int) -> dict:
    session_per_thread: dict[int, requests.Session] = {}

    def one(_: int) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        resp = session.post(url + "/run_code", json=BODY, timeout=60).json()
        assert resp["status"] == "Success" and resp["run_result"]["stdout"] == "45\n", resp
        return time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm up connections
        start = time.perf_counter()
        latencies = list(pool.map(one, range(runs)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "runs": runs,
        "runs_per_s": round(runs / elapsed, 2),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1),
        "latency_max_ms": round(1000 * max(latencies), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=80)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--url", default=None, help="an already running sandbox (default: start an embedded one)")
    args = parser.parse_args()
    print(f"cpu cores: {os.cpu_count()}")
    if args.url:
        results = [measure(args.url, args.runs, c) for c in args.concurrency]
    else:
        with EmbeddedSandbox(max_concurrency=max(args.concurrency)) as sb:
            print("isolation:", json.dumps(sb.runner.isolation.describe()))
            results = [measure(sb.url, args.runs, c) for c in args.concurrency]
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
