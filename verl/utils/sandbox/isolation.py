"""OS-level containment for one sandboxed program: resource limits, namespaces, an unprivileged uid, the sweep.

What is applied, in the child between ``fork`` and ``exec`` (:func:`make_preexec`), in this order:

* a new session and process group (``start_new_session=True`` in the caller), so the whole program can be killed
  with one ``killpg``;
* ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL one second later), ``RLIMIT_DATA`` (heap + private mappings, so a memory
  hog gets ``MemoryError``/``bad_alloc``; chosen over ``RLIMIT_AS`` because ``RLIMIT_AS`` also counts the address
  space glibc reserves per thread, which is why SandboxFusion with ``memory_limit_MB=1024`` cannot start a Python
  thread), ``RLIMIT_FSIZE`` (SIGXFSZ on a too-large file), ``RLIMIT_CORE = 0``, ``RLIMIT_NOFILE``;
* namespaces, when the probe found them working: a new network namespace (only a downed loopback, so every
  connection fails with ``ENETUNREACH``) and a new mount namespace in which every mount is made read-only
  recursively (``mount_setattr``) except a bind mount of the program's temp dir. Without root, both come inside a
  new user namespace, which unprivileged users may create on most kernels;
* ``RLIMIT_NPROC`` last: inside a user namespace the kernel counts it per namespace (so per program); for a
  dropped uid it counts per uid (one uid per concurrency slot). It is skipped when neither applies, because it
  would then count every process of the server's own user.

When the server runs as root it also drops the program to an unprivileged uid (one per slot, reserved
host-wide by :func:`claim_uids` so two sandboxes never share one) with
``setpriv``, keeping only ``CAP_DAC_READ_SEARCH`` as an ambient capability so an interpreter under ``/root``
stays executable; without it ``RLIMIT_NPROC`` would not apply (root is exempt) and root could write anywhere.

Fallbacks (chosen once by :func:`probe`): without namespaces, Python programs get a ``sitecustomize`` that makes
``socket.socket.connect``/``sendto``/``bind`` raise ``PermissionError`` (a Python-level guard only: ctypes can get
around it), and writes are confined only by file permissions plus ``HOME``/``TMPDIR`` pointing into the temp dir.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_SYS_MOUNT_SETATTR = 442  # same number on x86_64 and aarch64 (new syscalls share numbers across arches)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

# Installed as sitecustomize.py for Python programs when there is no network namespace.
PYTHON_SOCKET_GUARD = """
import socket as _s
def _refuse(*_a, **_k):
    raise PermissionError(1, "network access is disabled in the sandbox")
for _name in ("connect", "connect_ex", "sendto", "bind"):
    setattr(_s.socket, _name, _refuse)
_s.create_connection = _refuse
_s.getaddrinfo = _refuse
del _s, _refuse, _name
"""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class Isolation:
    """What the probe found working on this machine (see the module docstring)."""

    namespaces: bool  # network + read-only mount namespace
    drop_uid: bool  # root only: run programs as uid_base + slot
    uid_base: int = 61000  # first uid tried when dropping root (see claim_uids)

    @property
    def network(self) -> str:
        return "network namespace (no interfaces up)" if self.namespaces else "python socket guard (sitecustomize)"

    @property
    def filesystem(self) -> str:
        if self.namespaces:
            return "read-only mount namespace, temp dir writable"
        return "file permissions of the dropped uid" if self.drop_uid else "file permissions only (HOME/TMPDIR moved)"

    def describe(self) -> dict:
        return {
            "network": self.network,
            "filesystem": self.filesystem,
            "uid": "one reserved uid per slot (dropped from root)" if self.drop_uid else os.getuid(),
            "process_limit": self.nproc_applies,
        }

    @property
    def nproc_applies(self) -> bool:
        return self.drop_uid or (self.namespaces and os.geteuid() != 0)


@dataclass(frozen=True)
class Limits:
    """Per-program limits; sizes in bytes, times in seconds."""

    cpu_s: int
    memory_bytes: int | None  # None: unlimited
    file_size_bytes: int
    nproc: int
    nofile: int = 1024


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount_setattr(path: str, attr_set: int, attr_clr: int) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    ret = _libc.syscall(
        _SYS_MOUNT_SETATTR, _AT_FDCWD, path.encode(), _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(ret, f"mount_setattr({path})")


def _enter_namespaces(workdir: str) -> None:
    """New net + mount namespaces (inside a new user namespace unless root); everything read-only but workdir."""
    flags = _CLONE_NEWNET | _CLONE_NEWNS | (0 if os.geteuid() == 0 else _CLONE_NEWUSER)
    _check(_libc.unshare(flags), "unshare")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    wd = workdir.encode()
    _check(_libc.mount(wd, wd, None, _MS_BIND | _MS_REC, None), "bind mount of the temp dir")
    _mount_setattr("/", _MOUNT_ATTR_RDONLY, 0)
    _mount_setattr(workdir, 0, _MOUNT_ATTR_RDONLY)
    os.chdir(workdir)  # the old cwd points below the read-only mount, not at the new bind mount


def make_preexec(limits: Limits, workdir: str, isolation: Isolation):
    """The function run in the child between fork and exec (it must only make system calls)."""

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        if limits.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.nofile, limits.nofile))
        if isolation.namespaces:
            _enter_namespaces(workdir)
        if isolation.nproc_applies:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))

    return preexec


def uid_prefix(uid: int | None) -> list[str]:
    """The ``setpriv`` command that drops root to ``uid`` (empty when not dropping)."""
    if uid is None:
        return []
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all,+dac_read_search",
        "--ambient-caps=+dac_read_search",
        "--",
    ]


def claim_uids(count: int, uid_base: int, span: int = 4096) -> tuple[list[int], list]:
    """Reserve ``count`` uids no other live sandbox on this host uses (one ``flock``-ed file per uid, released
    when this process exits), so that sweeping by uid never touches another sandbox's programs.

    Returns the uids and the open lock files (keep them open)."""
    import fcntl
    import tempfile

    lock_dir = os.path.join(tempfile.gettempdir(), "verl-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    uids, handles = [], []
    for uid in range(uid_base, uid_base + span):
        handle = open(os.path.join(lock_dir, str(uid)), "a")  # noqa: SIM115 - held for the runner's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        uids.append(uid)
        handles.append(handle)
        if len(uids) == count:
            return uids, handles
    raise RuntimeError(f"no {count} free sandbox uids in [{uid_base}, {uid_base + span})")


def sweep(pgid: int, uid: int | None, rounds: int = 50) -> int:
    """SIGKILL everything the program left: its process group, its session and (dropped uid) every process of
    its uid, which also catches children that called ``setsid``. Repeats until none is left (a fork bomb
    keeps forking while it is being killed). Returns how many processes were signalled."""
    killed = 0
    for _ in range(rounds):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        found = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                mine = (uid is not None and entry.stat().st_uid == uid) or os.getsid(pid) == pgid
                if mine and _is_alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    found += 1
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                continue
        killed += found
        if not found:
            if uid is not None:
                _wait_until_reaped(uid)
            return killed
        time.sleep(0.01)
    logger.warning("sandbox: processes of group %d still alive after %d kill rounds", pgid, rounds)
    return killed


def _wait_until_reaped(uid: int, timeout_s: float = 3.0) -> None:
    """Wait until no process of ``uid`` is left, zombies included.

    Killed orphans are reaped by init, sometimes only after a while; until then they still count towards the
    uid's ``RLIMIT_NPROC``, so the slot's next program could fail to start a thread or a child.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = 0
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    left += entry.stat().st_uid == uid
                except FileNotFoundError:
                    continue
        if not left:
            return
        if time.monotonic() > deadline:
            logger.warning("sandbox: %d processes of uid %d not reaped after %.0f s", left, uid, timeout_s)
            return
        time.sleep(0.01)


def _is_alive(pid: int) -> bool:
    """False for zombies (already dead, waiting to be reaped by their parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _try(isolation: Isolation, python: str) -> str | None:
    """Run a tiny Python program under ``isolation``; None when it works, else the reason."""
    import tempfile

    workdir = tempfile.mkdtemp(prefix="verl-sandbox-probe-")
    uid, handles = None, []
    try:
        if isolation.drop_uid:
            (uid,), handles = claim_uids(1, isolation.uid_base)
            os.chown(workdir, uid, uid)
        limits = Limits(cpu_s=10, memory_bytes=1 << 30, file_size_bytes=1 << 20, nproc=64)
        argv = uid_prefix(uid) + [python, "-S", "-c", "open('probe', 'w').write('ok')"]
        proc = subprocess.run(
            argv,
            cwd=workdir,
            preexec_fn=make_preexec(limits, workdir, isolation),
            start_new_session=True,
            capture_output=True,
            timeout=30,
        )
        if proc.returncode != 0:
            return f"exit code {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-300:]}"
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for handle in handles:
            handle.close()


def probe(mode: str = "auto", python: str = sys.executable, uid_base: int = 61000) -> Isolation:
    """Pick the strongest isolation that works here.

    Args:
        mode: ``"auto"`` (namespaces and uid drop when they work) or ``"none"`` (limits, sessions and the
            Python socket guard only: the fallback path, also used to test it).
        python: the interpreter programs will run with.
        uid_base: first uid used when dropping root.
    """
    root = os.geteuid() == 0
    candidates = [Isolation(False, False, uid_base)]
    if mode == "auto":
        drop = [True, False] if root and shutil.which("setpriv") else [False]
        candidates = [Isolation(ns, d, uid_base) for ns in (True, False) for d in drop]
    elif mode != "none":
        raise ValueError(f"sandbox isolation={mode!r} is unknown; use 'auto' or 'none'")
    for cand in candidates:
        reason = _try(cand, python)
        if reason is None:
            logger.info("sandbox isolation: %s", cand.describe())
            return cand
        logger.info("sandbox isolation %s unavailable: %s", cand, reason)
    return candidates[-1]
