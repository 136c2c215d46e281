"""An embedded, SandboxFusion-compatible code sandbox: ``python -m verl.utils.sandbox --port 8080``.

The same HTTP API as SandboxFusion (``/run_code``, ``/submit``, ``/get_prompts``, ``/get_prompt_by_id``,
``/list_datasets``, ``/v1/ping``), so the ``sandbox_fusion`` client and verl's ``sandbox_fusion`` scorer talk to it
unchanged. Python always, C++ when ``g++`` is installed. Used by default when no ``sandbox_fusion_url`` is set.

Files: ``server.py`` (FastAPI app, :class:`EmbeddedSandbox`), ``runner.py`` (one request -> one response),
``isolation.py`` (limits, namespaces, the kill sweep), ``datasets.py`` (stdin/stdout judging), ``data/`` (the
shipped ``code_contests_mini`` dataset).
"""

from verl.utils.sandbox.runner import Runner, SandboxConfig
from verl.utils.sandbox.server import EmbeddedSandbox, create_app

__all__ = ["EmbeddedSandbox", "Runner", "SandboxConfig", "create_app"]
