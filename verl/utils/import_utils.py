"""Import user code by file path or module name, and mark deprecated functions."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated", "import_external_libs", "load_extern_object", "load_module"]


def load_module(module_path: str, module_name: str | None = None) -> Any:
    """Import a module from a ``.py`` file path or a dotted module name.

    A file path is recognised by the ``.py`` suffix or an existing file. File modules are registered in
    ``sys.modules`` under ``module_name`` (default: a name derived from the absolute path) so that pickling
    objects defined in them works inside the same process.

    Raises:
        FileNotFoundError: a ``.py`` path that does not exist.
        ImportError: a dotted name that cannot be imported, or a file that fails while executing.
    """
    looks_like_file = module_path.endswith(".py") or os.path.sep in module_path or os.path.isfile(module_path)
    if not looks_like_file:
        return importlib.import_module(module_path)
    path = os.path.abspath(os.path.expanduser(module_path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Python file {path!r} not found.")
    name = module_name or "verl_extern_" + path.replace(os.path.sep, "_").replace(".", "_")
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == path:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ImportError(f"Error while executing {path!r}: {type(exc).__name__}: {exc}") from exc
    return module


def load_extern_object(module_path: str, object_name: str) -> Any:
    """Return attribute ``object_name`` of the module at ``module_path`` (file path or dotted name).

    Raises:
        AttributeError: the module has no such attribute; the message names the module and the attribute.
    """
    module = load_module(module_path)
    if not hasattr(module, object_name):
        raise AttributeError(f"{module_path!r} has no attribute {object_name!r}.")
    return getattr(module, object_name)


def import_external_libs(external_libs: str | list[str] | None = None, key: str = "model.external_lib") -> None:
    """Import each named module for its side effects (typically registering models with transformers' Auto classes).

    Raises:
        ValueError: naming ``key`` and the module when one cannot be imported.
    """
    if not external_libs:
        return
    if isinstance(external_libs, str):
        external_libs = [external_libs]
    for lib in external_libs:
        try:
            importlib.import_module(lib)
        except ImportError as exc:
            raise ValueError(f"{key}={lib!r} cannot be imported ({exc}); check the module name and PYTHONPATH") from exc


def deprecated(replacement: str = "") -> Callable[[Callable], Callable]:
    """Decorator that emits a ``FutureWarning`` on every call of the wrapped function.

    Example:
        >>> @deprecated("new_fn")
        ... def old_fn():
        ...     return 1
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     old_fn()
        1
    """

    def decorator(fn: Callable) -> Callable:
        message = f"{fn.__name__} is deprecated" + (f"; use {replacement} instead." if replacement else ".")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            warnings.warn(message, category=FutureWarning, stacklevel=2)
            return fn(*args, **kwargs)

        return wrapper

    return decorator
