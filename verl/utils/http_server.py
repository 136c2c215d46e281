"""An ASGI app under uvicorn on a background thread: the embedded sandbox, the retrieval server and tests use it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """Serve ``app`` on ``host:port`` (0: a free port) from a daemon thread; ``start()`` returns once it listens.

    Args:
        app: the ASGI application.
        host: interface to listen on.
        port: 0 picks a free port (``.port`` holds the real one after ``start``).
        name: the thread's name, and what the startup error calls the server.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "http server"):
        self.app, self.host, self.port, self.name = app, host, port, name
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> int:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None
