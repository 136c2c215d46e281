"""``python -m verl.serve MODEL_PATH``: the OpenAI-compatible server on its own, like ``vllm serve``.

Serves ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models`` and ``/health`` (see
``verl.workers.rollout.openai_server``). Prints ``verl.serve: ready at http://HOST:PORT`` once ``/health`` answers,
and shuts down cleanly on SIGTERM or SIGINT (exit status 0).

Example::

    python -m verl.serve ~/models/Qwen2.5-0.5B-Instruct --port 8000 --served-model-name qwen --api-key secret
    curl -H 'Authorization: Bearer secret' localhost:8000/v1/chat/completions \\
        -d '{"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}'
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verl.serve",
        description="Serve a Hugging Face causal LM over an OpenAI-compatible HTTP API "
        "(/v1/chat/completions, /v1/completions, /v1/models, /health).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("model_path", help="HF model directory (weights, config and tokenizer)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to listen on every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0 picks a free one)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* requests")
    parser.add_argument(
        "--served-model-name", default=None, help="the model name clients send (default: MODEL_PATH as given)"
    )
    parser.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="hf: transformers with dynamic batching (CPU or GPU); vllm: an in-process vLLM engine",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="most requests generated together")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--device", default="auto", help="hf backend: auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed for requests that send none")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from verl.workers.rollout.openai_server import OpenAIServer

    server = OpenAIServer(
        args.model_path,
        backend=args.backend,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        max_batch_size=args.max_batch_size,
        max_model_len=args.max_model_len,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        address = server.start()
        print(f"verl.serve: ready at {address} (model {server.served_model_name!r})", flush=True)
        stop.wait()
    finally:
        print("verl.serve: shutting down", flush=True)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
