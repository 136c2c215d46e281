"""Fixtures for the embedded sandbox tests: one server per module, and a check that nothing it ran survives."""

from __future__ import annotations

import contextlib
import os

import psutil
import pytest
import requests

from verl.utils.sandbox import EmbeddedSandbox


class Sandbox:
    """A running :class:`EmbeddedSandbox` plus helpers; programs get HOME under ``workdir_root``."""

    def __init__(self, sb: EmbeddedSandbox, workdir_root: str):
        self.sb, self.url, self.workdir_root = sb, sb.url, workdir_root
        self.runner, self.config = sb.runner, sb.config

    def post(self, path: str, body: dict, status: int = 200):
        resp = requests.post(self.url + path, json=body, timeout=60)
        assert resp.status_code == status, resp.text
        return resp.json()

    def run(self, code: str, language: str = "python", **kw) -> dict:
        return self.post("/run_code", {"code": code, "language": language, **kw})

    def leftovers(self) -> list[psutil.Process]:
        """Live processes started by this sandbox (found by their HOME, which every program gets)."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("HOME", "").startswith(
                    self.workdir_root
                ):
                    found.append(proc)
        return found

    def assert_healthy(self) -> None:
        """Nothing left running, and the sandbox still answers."""
        assert self.leftovers() == []
        assert requests.get(self.url + "/v1/ping", timeout=10).json() == "pong"
        assert self.run("print(6 * 7)")["run_result"]["stdout"] == "42\n"


@pytest.fixture
def make_sandbox(tmp_path_factory):
    """``with make_sandbox(**config_overrides) as sandbox:`` a fresh server."""

    @contextlib.contextmanager
    def make(**overrides):
        root = tmp_path_factory.mktemp("sandbox_runs")
        os.chmod(root, 0o755)  # a dropped uid must reach its own temp dir under it
        with EmbeddedSandbox(workdir_root=str(root), **overrides) as sb:
            yield Sandbox(sb, str(root))

    return make


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox_runs")
    os.chmod(root, 0o755)
    with EmbeddedSandbox(max_concurrency=4, workdir_root=str(root)) as sb:
        yield Sandbox(sb, str(root))
