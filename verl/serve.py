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
import os
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


SHORT_USAGE = """\
usage: python -m verl.serve MODEL_PATH [--host HOST] [--port PORT] [--served-model-name NAME] [--api-key KEY]
python -m verl.serve: error: MODEL_PATH is required: a Hugging Face model directory (config.json, weights, tokenizer)
example: python -m verl.serve models/tiny --port 8000   (make models/tiny with: python -m verl.utils.testing.tiny \
models/tiny)
every option: python -m verl.serve --help"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `python -m verl.serve`: say what to pass, not argparse's full option list
        print(SHORT_USAGE, file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.model_path
    # a path that is neither a directory here nor shaped like a hub id ("name", "org/name") cannot load
    if not os.path.isdir(os.path.expanduser(path)) and (os.path.isabs(path) or path[:1] in ".~" or path.count("/") > 1):
        parser.error(
            f"MODEL_PATH {path}: no such directory (make a tiny one with python -m verl.utils.testing.tiny DIR)"
        )
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
