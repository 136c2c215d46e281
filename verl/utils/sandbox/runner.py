"""Run one ``/run_code`` request: write the files, compile (C++), run, and build SandboxFusion's response.

The response follows SandboxFusion's ``RunCodeResponse`` (see ``shared/reference/sandbox_fusion_api.md``)::

    {"status": "Success" | "Failed" | "SandboxError", "message": str,
     "compile_result": CommandRunResult | None, "run_result": CommandRunResult | None,
     "executor_pod_name": None, "files": {path: base64}}
    CommandRunResult = {"status": "Finished" | "TimeLimitExceeded" | "Error", "execution_time": float | None,
                        "return_code": int | None, "stdout": str | None, "stderr": str | None,
                        "stdout_truncated": bool, "stderr_truncated": bool}

The two ``*_truncated`` flags are ours: output beyond ``max_output_bytes`` is cut, the flag is set, the program is
killed (``return_code`` -9) and ``message`` says so. Everything about containment is in :mod:`.isolation`.
"""

from __future__ import annotations

import base64
import math
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from verl.utils.sandbox.isolation import (
    PYTHON_SOCKET_GUARD,
    Isolation,
    Limits,
    claim_uids,
    make_preexec,
    probe,
    sweep,
    uid_prefix,
)

SUPPORTED_LANGUAGES = ("python", "cpp")
_DRAIN_S = 0.1  # how long to keep reading after the main process exited


@dataclass
class SandboxConfig:
    """Server-wide settings of the embedded sandbox."""

    max_concurrency: int = 8  # programs running at once (also the size of the worker pool)
    max_output_bytes: int = 1 << 20  # per stream; beyond it the output is cut, flagged and the program killed
    default_memory_mb: int = 2048  # used when a request says memory_limit_MB=-1 (SandboxFusion: unlimited)
    max_memory_mb: int = 16384  # a request asking for more gets this much
    compile_memory_mb: int = 4096  # for g++
    max_file_size_mb: int = 64  # RLIMIT_FSIZE: largest file a program may write
    max_processes: int = 128  # RLIMIT_NPROC: processes + threads per program, where it applies
    max_timeout_s: float = 300.0  # compile_timeout / run_timeout above this are clamped
    isolation: str = "auto"  # "auto" or "none" (see isolation.probe)
    python: str = field(default_factory=lambda: sys.executable)
    cxx: str | None = field(default_factory=lambda: shutil.which("g++"))
    workdir_root: str | None = None  # parent of the per-program temp dirs; None = the system temp dir
    uid_base: int = 61000  # root only: programs run as uids reserved from here up (one per slot)

    def __post_init__(self):
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency={self.max_concurrency} must be >= 1")


@dataclass
class CommandResult:
    status: str  # Finished | TimeLimitExceeded | Error
    execution_time: float | None
    return_code: int | None
    stdout: str | None
    stderr: str | None
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Runner:
    """Runs programs with bounded concurrency; thread-safe. ``run_code`` blocks; ``executor`` runs it off-loop."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self.isolation: Isolation = probe(self.config.isolation, self.config.python, self.config.uid_base)
        self.executor = ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="sandbox")
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.config.max_concurrency):
            self._slots.put(slot)
        self._active: dict[int, int | None] = {}  # pgid -> uid, for shutdown
        self._uids: list[int | None] = [None] * self.config.max_concurrency
        self._uid_locks: list = []
        if self.isolation.drop_uid:
            self._uids, self._uid_locks = claim_uids(self.config.max_concurrency, self.config.uid_base)

    def shutdown(self) -> None:
        for pgid, uid in list(self._active.items()):
            sweep(pgid, uid)
        self.executor.shutdown(wait=False, cancel_futures=True)
        for handle in self._uid_locks:
            handle.close()

    def languages(self) -> list[str]:
        return [lang for lang in SUPPORTED_LANGUAGES if lang != "cpp" or self.config.cxx]

    def run_code(self, request: dict) -> dict:
        """Run one request (a validated ``RunCodeRequest`` as a dict) and return the ``RunCodeResponse`` dict."""
        language = request["language"]
        if language not in self.languages():
            why = "g++ was not found on this machine" if language == "cpp" else "it has no runner here"
            return _sandbox_error(
                f"language {language!r} is not supported by the embedded sandbox ({why}); "
                f"supported: {', '.join(self.languages())}"
            )
        slot = self._slots.get()
        workdir = tempfile.mkdtemp(prefix="verl-sandbox-", dir=self.config.workdir_root)
        try:
            return self._run_in(workdir, slot, request)
        except Exception as exc:  # a failure of ours, never of the program: SandboxFusion answers SandboxError
            return _sandbox_error(f"exception on running code: {type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self._slots.put(slot)

    def _run_in(self, workdir: str, slot: int, request: dict) -> dict:
        cfg = self.config
        uid = self._uids[slot]
        if uid is not None:
            os.chown(workdir, uid, uid)
        os.chmod(workdir, 0o700)
        _write_files(workdir, request.get("files") or {})
        env = _program_env(workdir)
        compile_timeout = min(float(request.get("compile_timeout", 10)), cfg.max_timeout_s)
        run_timeout = min(float(request.get("run_timeout", 10)), cfg.max_timeout_s)
        compile_result = None
        if request["language"] == "python":
            _write(workdir, "main.py", request["code"])
            if not self.isolation.namespaces:  # no network namespace: fall back to the Python-level guard
                os.makedirs(os.path.join(workdir, ".sandbox_site"))
                _write(workdir, ".sandbox_site/sitecustomize.py", PYTHON_SOCKET_GUARD)
                env["PYTHONPATH"] = os.path.join(workdir, ".sandbox_site")
            argv = [cfg.python, "main.py"]
        else:
            _write(workdir, "main.cpp", request["code"])
            limits = self._limits(compile_timeout, cfg.compile_memory_mb)
            cmd = [cfg.cxx, "-std=c++17", "main.cpp", "-o", "test", "-lpthread"]
            compile_result = self._command(cmd, workdir, env, slot, limits, compile_timeout, None)
            if compile_result.status != "Finished" or compile_result.return_code != 0:
                return _response(compile_result, None, {}, "")
            argv = ["./test"]
        memory_mb = int(request.get("memory_limit_MB", -1))
        memory_mb = cfg.default_memory_mb if memory_mb <= 0 else min(memory_mb, cfg.max_memory_mb)
        limits = self._limits(run_timeout, memory_mb)
        run_result = self._command(argv, workdir, env, slot, limits, run_timeout, request.get("stdin"))
        files = _fetch_files(workdir, request.get("fetch_files") or [])
        message = ""
        if run_result.stdout_truncated or run_result.stderr_truncated:
            message = f"output exceeded {cfg.max_output_bytes} bytes per stream: truncated and the program killed"
        return _response(compile_result, run_result, files, message)

    def _limits(self, timeout: float, memory_mb: int) -> Limits:
        cfg = self.config
        return Limits(
            cpu_s=max(1, math.ceil(timeout)) + 1,
            memory_bytes=memory_mb << 20,
            file_size_bytes=cfg.max_file_size_mb << 20,
            nproc=cfg.max_processes,
        )

    def _command(
        self, argv: list[str], workdir: str, env: dict, slot: int, limits: Limits, timeout: float, stdin: str | None
    ) -> CommandResult:
        """Start ``argv`` contained, feed stdin, collect capped output until exit or ``timeout``, then sweep."""
        uid = self._uids[slot]
        start = time.monotonic()
        proc = subprocess.Popen(
            uid_prefix(uid) + argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=make_preexec(limits, workdir, self.isolation),
        )
        self._active[proc.pid] = uid
        try:
            out, err, timed_out = _communicate(proc, stdin, start + timeout, self.config.max_output_bytes)
            if timed_out:
                proc.kill()
            return_code = proc.wait()
            elapsed = time.monotonic() - start
        finally:
            sweep(proc.pid, uid)  # children left behind, after a normal exit too
            self._active.pop(proc.pid, None)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        return CommandResult(
            status="TimeLimitExceeded" if timed_out else "Finished",
            execution_time=elapsed,
            return_code=None if timed_out else return_code,
            stdout=out.data.decode(errors="replace"),
            stderr=err.data.decode(errors="replace"),
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
        )


class _Capped:
    def __init__(self, cap: int):
        self.cap, self.data, self.truncated = cap, bytearray(), False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        self.data += chunk[: max(room, 0)]


def _communicate(proc: subprocess.Popen, stdin: str | None, deadline: float, cap: int):
    """Pump stdin/stdout/stderr until the program exits and its output is drained, or the deadline passes.

    A background child may hold the pipes open after the main process exits: we drain for at most
    ``_DRAIN_S`` more and stop (the sweep then kills the child). On overflow of either stream the process group
    is killed at once. Returns ``(stdout, stderr, timed_out)``.
    """
    out, err = _Capped(cap), _Capped(cap)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    pending = (stdin or "").encode()
    if pending:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, None)
    else:
        proc.stdin.close()  # EOF at once, as SandboxFusion does for stdin=None
    open_outputs, exited_at = 2, None
    pidfd = _pidfd(proc.pid)  # readable when the main process exits, so a lingering child cannot delay us
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    try:
        while open_outputs:
            now = time.monotonic()
            if now >= deadline:
                return out, err, True
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _DRAIN_S:
                break
            for key, _ in sel.select(min(deadline - now, _DRAIN_S if exited_at or pidfd is None else 0.5)):
                if key.data == "exit":
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                    continue
                if key.data is None:
                    pending = _feed(proc, sel, pending)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_outputs -= 1
                    continue
                key.data.add(chunk)
                if key.data.truncated:
                    os.killpg(proc.pid, signal.SIGKILL)
                    return out, err, False
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
    try:  # outputs closed (or drained): the program itself may still be running
        proc.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        return out, err, True
    return out, err, False


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: fall back to polling every _DRAIN_S
        return None


def _feed(proc: subprocess.Popen, sel: selectors.BaseSelector, pending: bytes) -> bytes:
    try:
        written = os.write(proc.stdin.fileno(), pending[:65536])
        pending = pending[written:]
    except (BrokenPipeError, BlockingIOError):
        pending = b"" if proc.poll() is not None else pending
    except OSError:
        pending = b""
    if not pending:
        sel.unregister(proc.stdin)
        proc.stdin.close()
    return pending


def _program_env(workdir: str) -> dict:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "TMP": workdir,
        "TEMP": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _inside(workdir: str, path: str) -> str:
    full = os.path.realpath(os.path.join(workdir, path))
    if os.path.commonpath([full, os.path.realpath(workdir)]) != os.path.realpath(workdir):
        raise ValueError(f"file path {path!r} is outside the sandbox's working directory")
    return full


def _write(workdir: str, name: str, text: str) -> None:
    with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
        f.write(text)


def _write_files(workdir: str, files: dict) -> None:
    for path, content in files.items():
        if content is None or "IGNORE_THIS_FILE" in path:
            continue
        full = _inside(workdir, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(base64.b64decode(content))


def _fetch_files(workdir: str, paths: list[str]) -> dict:
    found = {}
    for path in paths:
        try:
            full = _inside(workdir, path)
        except ValueError:
            continue
        if os.path.isfile(full):
            with open(full, "rb") as f:
                found[path] = base64.b64encode(f.read()).decode()
    return found


def _response(compile_result: CommandResult | None, run_result: CommandResult | None, files: dict, message: str):
    steps = [r for r in (compile_result, run_result) if r is not None]
    if any(r.status == "Error" for r in steps):
        failed = next(r for r in steps if r.status == "Error")
        return _sandbox_error(failed.stderr or "", compile_result, run_result)
    ok = all(r.status == "Finished" and r.return_code == 0 for r in steps)
    return {
        "status": "Success" if ok else "Failed",
        "message": message,
        "compile_result": compile_result.to_dict() if compile_result else None,
        "run_result": run_result.to_dict() if run_result else None,
        "executor_pod_name": None,
        "files": files,
    }


def _sandbox_error(message: str, compile_result=None, run_result=None) -> dict:
    return {
        "status": "SandboxError",
        "message": message,
        "compile_result": compile_result.to_dict() if compile_result else None,
        "run_result": run_result.to_dict() if run_result else None,
        "executor_pod_name": None,
        "files": {},
    }
