"""Resolve model and data paths to local files.

Upstream verl copies ``hdfs://`` paths into a local cache before use. This implementation works with local
paths only: they pass through after an existence check, and any remote scheme raises an error that says so.
"""

from __future__ import annotations

import os
import re

__all__ = ["copy_to_local", "is_non_local", "local_path"]

# Any "<scheme>://" prefix except file:// is a path this build cannot open.
_REMOTE_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")


def is_non_local(path: str) -> bool:
    """Return True for ``hdfs://``, ``s3://`` and other remote URLs (``file://`` counts as local)."""
    match = _REMOTE_SCHEME.match(str(path))
    return bool(match) and match.group("scheme").lower() != "file"


def local_path(path: str | os.PathLike) -> str:
    """Strip a ``file://`` prefix and expand ``~``; remote schemes raise ``ValueError``."""
    text = os.fspath(path)
    if is_non_local(text):
        scheme = _REMOTE_SCHEME.match(text).group("scheme")
        raise ValueError(
            f"Remote path {text!r} ({scheme}://) is not supported here: only local paths can be opened. "
            "Copy the file or directory to local disk first and pass that path instead."
        )
    if text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.expanduser(text)


def copy_to_local(
    src: str | os.PathLike,
    cache_dir: str | None = None,
    filelock: str = ".file.lock",
    verbose: bool = False,
    always_recopy: bool = False,
    use_shm: bool = False,
) -> str:
    """Return a local path for ``src`` (the signature matches upstream's ``copy_to_local``).

    Local paths are returned unchanged (after ``~`` expansion) once they are known to exist; nothing is copied,
    so ``cache_dir``, ``filelock``, ``always_recopy`` and ``use_shm`` have no effect here.

    Args:
        src: a local file or directory path (``file://`` accepted).
        cache_dir: unused; kept for signature compatibility.
        filelock: unused; kept for signature compatibility.
        verbose: print the resolved path.
        always_recopy: unused; kept for signature compatibility.
        use_shm: unused; kept for signature compatibility.

    Returns:
        The local path as a string.

    Raises:
        ValueError: ``src`` is a remote URL such as ``hdfs://...``.
        FileNotFoundError: the local path does not exist.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> copy_to_local(d) == d
        True
    """
    del cache_dir, filelock, always_recopy, use_shm
    path = local_path(src)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Path {path!r} does not exist (given as {os.fspath(src)!r}).")
    if verbose:
        print(f"copy_to_local: using local path {path}")
    return path
