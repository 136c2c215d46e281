"""Throughput of the SPD reward (samples/s) at concurrency 1 and 16 against a local target server, in one run.

The target is ``OpenAIServer`` (hf backend, dynamic batching) serving ``--model`` (default: the tiny test model,
built offline). ``--samples`` synthetic SPD samples (distinct chat contexts, random draft tokens with mismatches,
random decisions) are scored with ``compute_score_batch`` once per concurrency level; each sample is one
``/v1/completions`` call for the hybrid prefix (greedy, ``--max-tokens``). Speedup is samples/s over the
concurrency-1 run; the target is at least 4x at concurrency 16. Each level runs ``--repeats`` times and the
median is reported: on a small shared CPU machine single runs vary by 2x or more.

Torch runs with ``--torch-threads`` (default 1) intra-op threads: the client, the server's event loop and its decode
thread share the process, and on 2 busy cores OpenMP's spinning worker threads made every decode step several
times slower (measured: 64 samples at concurrency 1 took 5.7 s with 2 threads, 1.3 s with 1).

Usage::

    python benchmarks/spd_reward.py
    python benchmarks/spd_reward.py --model ~/models/Qwen2.5-0.5B-Instruct --samples 128 --max-tokens 64
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_samples(tokenizer, url: str, model_path: str, n: int, k: int, max_tokens: int, seed: int = 0) -> list[dict]:
    """``n`` SPD ``extra_info`` dicts: chat context, ``k`` random draft tokens, target tokens differing at ~half."""
    rng = random.Random(seed)
    vocab = len(tokenizer)
    samples = []
    for i in range(n):
        chat = [{"role": "user", "content": f"what is {i} plus {rng.randint(0, 99)}"}]
        context = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        draft = [rng.randrange(vocab) for _ in range(k)]
        target = [t if rng.random() < 0.5 else (t + 1) % vocab for t in draft]
        samples.append(
            {
                "context_ids": tokenizer(context, add_special_tokens=False)["input_ids"],
                "spd_draft_ids": draft,
                "spd_target_ids": target,
                "spd_decisions": [rng.randint(0, 1) for _ in range(k)],
                "target_model_url": url,
                "model_path": model_path,
                "max_tokens": max_tokens,
            }
        )
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model directory (default: build the tiny test model)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--samples", type=int, default=64, help="samples scored per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=16, help="target completion budget per sample")
    parser.add_argument("--draft-tokens", type=int, default=8, help="K, draft tokens per sample")
    parser.add_argument("--repeats", type=int, default=3, help="runs per concurrency level (median reported)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads (see above)")
    args = parser.parse_args()
    if args.concurrency[0] != 1:
        parser.error("the first --concurrency must be 1 (the sequential baseline)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(args.torch_threads)
    from verl.utils.reward_score.spd_scorer_reward import compute_score_batch, get_tokenizer
    from verl.workers.rollout.openai_server import OpenAIServer

    model = args.model
    if model is None:
        from verl.utils.testing.tiny import build_tiny_model

        model = str(build_tiny_model(os.path.join(tempfile.mkdtemp(), "tiny"), seed=0))
    server = OpenAIServer(model, backend="hf", max_batch_size=max(args.concurrency))
    url = server.start()
    tokenizer = get_tokenizer(model)
    samples = make_samples(tokenizer, url, model, args.samples, args.draft_tokens, args.max_tokens)
    n = len(samples)
    rows = []
    try:
        compute_score_batch(["spd_scorer"], [""], ["5"], samples[:1])  # warm-up: first forward pass, tokenizer
        for concurrency in args.concurrency:
            server.backend.batch_sizes.clear()
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                results = compute_score_batch(["spd_scorer"] * n, [""] * n, ["5"] * n, samples, concurrency=concurrency)
                runs.append(time.perf_counter() - start)
            seconds = statistics.median(runs)
            rows.append(
                {
                    "concurrency": concurrency,
                    "seconds": seconds,
                    "samples_s": n / seconds,
                    "latency_ms": 1000 * sum(r["target_latency_s"] for r in results) / n,
                    "failed": sum(r["target_failed"] for r in results),
                    "max_batch": max(server.backend.batch_sizes, default=1),
                    "scenarios": "".join(sorted(r["scenario"] for r in results)),
                }
            )
            print(f"concurrency {concurrency}: {n / seconds:.1f} samples/s", flush=True)
    finally:
        server.stop()
    print(
        f"\nmodel {model}; median of {args.repeats} runs of {n} samples, K={args.draft_tokens}, {args.max_tokens} max tokens, hf backend"
    )
    print(f"{'conc':>5}{'seconds':>9}{'samples/s':>11}{'latency ms':>12}{'failed':>8}{'max batch':>11}{'speedup':>9}")
    for r in rows:
        print(
            f"{r['concurrency']:>5}{r['seconds']:>9.2f}{r['samples_s']:>11.1f}{r['latency_ms']:>12.0f}"
            f"{r['failed']:>8}{r['max_batch']:>11}{r['samples_s'] / rows[0]['samples_s']:>8.1f}x"
        )
    counts = {s: rows[-1]["scenarios"].count(s) for s in "ABCD"}
    print(f"scenario counts (last run): {counts}")


if __name__ == "__main__":
    main()
