"""``python -m verl.utils.sandbox --host 127.0.0.1 --port 8080 [--max-concurrency N]``: the sandbox on its own."""

from __future__ import annotations

import argparse
import logging

from verl.utils.sandbox.runner import Runner, SandboxConfig
from verl.utils.sandbox.server import create_app


def main(argv: list[str] | None = None) -> None:
    defaults = SandboxConfig()
    parser = argparse.ArgumentParser(
        prog="python -m verl.utils.sandbox", description="A SandboxFusion-compatible code sandbox (HTTP server)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s, as sandbox_fusion's)")
    parser.add_argument(
        "--max-concurrency", type=int, default=defaults.max_concurrency, help="programs run at once (%(default)s)"
    )
    parser.add_argument(
        "--max-output-bytes", type=int, default=defaults.max_output_bytes, help="per stream (%(default)s)"
    )
    parser.add_argument(
        "--default-memory-mb", type=int, default=defaults.default_memory_mb, help="when memory_limit_MB=-1"
    )
    parser.add_argument(
        "--isolation", choices=["auto", "none"], default="auto", help="'none': limits and sessions only"
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    config = SandboxConfig(
        max_concurrency=args.max_concurrency,
        max_output_bytes=args.max_output_bytes,
        default_memory_mb=args.default_memory_mb,
        isolation=args.isolation,
    )
    runner = Runner(config)
    logging.getLogger(__name__).info("isolation: %s", runner.isolation.describe())
    try:
        uvicorn.run(create_app(runner), host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        runner.shutdown()


if __name__ == "__main__":
    main()
