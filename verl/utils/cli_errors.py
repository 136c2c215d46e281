"""Errors a user can fix, reported as one short paragraph instead of a stack trace.

The entry points (``main_ppo``, ``main_generation_server``, ``main_eval``) check their input before any work starts:
unknown keys, bad values, missing paths and data columns. Those checks raise ordinary exceptions (``ValueError``,
``FileNotFoundError``...) so that library callers and tests see the usual types; the code that runs them wraps
itself in :func:`preflight`, which marks whatever escapes as the user's to fix. The command-line wrapper then
prints the message alone (:func:`report`), with the stack trace only under ``HYDRA_FULL_ERROR=1`` (Hydra's own
switch, which verl users already know) or ``VERL_FULL_ERROR=1``.

Unknown keys are caught before Hydra composes the job (:func:`check_overrides`): Hydra's message suggests
``+key=value``, which silently adds the misspelt key; ours names the closest keys of the config.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = [
    "check_overrides",
    "close_matches",
    "config_keys",
    "did_you_mean",
    "exit_on_user_error",
    "full_error_requested",
    "is_user_error",
    "paragraph",
    "preflight",
    "report",
    "run_hydra_cli",
    "unknown_key_message",
]

_MARK = "_verl_user_error"
_USER_ERROR_TYPES = (ValueError, TypeError, KeyError, AttributeError, ImportError, OSError)


def full_error_requested() -> bool:
    """True when the user asked for stack traces (``HYDRA_FULL_ERROR=1`` or ``VERL_FULL_ERROR=1``)."""
    return any(os.environ.get(name, "") not in ("", "0") for name in ("HYDRA_FULL_ERROR", "VERL_FULL_ERROR"))


@contextlib.contextmanager
def preflight() -> Iterator[None]:
    """Mark input errors raised inside the block as the user's to fix (the exception itself is unchanged)."""
    try:
        yield
    except _USER_ERROR_TYPES as exc:
        with contextlib.suppress(AttributeError):  # a few builtin exception objects refuse new attributes
            setattr(exc, _MARK, True)
        raise


def is_user_error(exc: BaseException) -> bool:
    return bool(getattr(exc, _MARK, False))


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])  # str(KeyError) adds quotes around the message
    return str(exc)


def paragraph(text: str, width: int = 100) -> str:
    """``text`` wrapped for a terminal; dotted keys and paths are never split."""
    return "\n".join(
        textwrap.fill(line, width=width, break_on_hyphens=False, break_long_words=False) for line in text.splitlines()
    )


def report(exc: BaseException, command: str, stream=None) -> None:
    """Print ``exc`` as the one paragraph a user reads, with how to see the stack trace."""
    stream = stream or sys.stderr
    body = _message(exc).strip() or type(exc).__name__
    print(paragraph(f"{command}: error: {body}"), file=stream)
    print("(checked before any work started; HYDRA_FULL_ERROR=1 shows the stack trace)", file=stream, flush=True)


# ---------------------------------------------------------------------------------------------------- did you mean
def close_matches(word: str, candidates: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The candidates closest to ``word`` (best first)."""
    return difflib.get_close_matches(str(word), sorted(set(map(str, candidates))), n=n, cutoff=cutoff)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    matches = close_matches(word, candidates, n=1)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def config_keys(node: Mapping, prefix: str = "", leaves_only: bool = False) -> list[str]:
    """Every dotted key of a nested mapping, inner nodes included (``a``, ``a.b``, ``a.b.c``) unless
    ``leaves_only``."""
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            if not leaves_only:
                keys.append(path)
            keys.extend(config_keys(value, path + ".", leaves_only))
        else:
            keys.append(path)
    return keys


def _suggest_keys(key: str, known: Sequence[str], leaves: Sequence[str] = ()) -> list[str]:
    """Close keys for a misspelt dotted key: a sibling spelt nearly the same, else a near spelling of the whole
    path or the same leaf under another node (``actor_rollout_ref.optim.lr`` -> ``...actor.optim.lr``)."""
    known_set = set(known)
    parent, _, leaf = key.rpartition(".")
    if parent in known_set or not parent:
        siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
        near = close_matches(leaf, siblings, n=2, cutoff=0.6)
        if near:
            return [f"{parent}.{s}" if parent else s for s in near]
    pool = leaves or known  # a value goes to a leaf: suggest leaves when they are known
    tail = key.split(".")[-2:]
    found = [k for k in pool if k.split(".")[-len(tail) :] == tail]
    found += close_matches(key, pool, n=3, cutoff=0.8)
    ancestors = {key.rsplit(".", i)[0] for i in range(1, key.count(".") + 1)}
    return list(dict.fromkeys(k for k in found if k != key and k not in ancestors))[:3]


def unknown_key_message(
    key: str, value: str | None, known: Sequence[str], help_command: str | None = None, leaves: Sequence[str] = ()
) -> str:
    """The paragraph for an override whose key the config does not have."""
    shown = f"{key}={value}" if value is not None else key
    text = f"unknown config key {key!r} (from {shown!r})."
    suggestions = _suggest_keys(key, known, leaves)
    if suggestions:
        text += " Did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
    text += f" To add a key the config does not have (e.g. for a custom class), write it as +{shown}."
    if help_command:
        parent = key.rpartition(".")[0]
        while parent and parent not in set(known):
            parent = parent.rpartition(".")[0]
        text += f" `{help_command} --help {parent}`" if parent else f" `{help_command} --help`"
        text += " lists the keys there."
    return text


# ------------------------------------------------------------------------------------------------- hydra overrides
def _flag_value(argv: Sequence[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1 :]
    return None


def _overrides(argv: Sequence[str]) -> list[str]:
    """The ``key=value`` overrides of a Hydra command line (flags and their values left out)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            skip = "=" not in arg and arg in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
            continue
        if "=" in arg:
            out.append(arg)
    return out


_UNKNOWN = re.compile(r"Could not override '([^']+)'|Key '([^']+)' is not in struct")


def check_overrides(
    argv: Sequence[str], config_dir: str, config_name: str, help_command: str | None = None
) -> str | None:
    """The error paragraph for the unknown keys among ``argv``'s overrides, or None when every key exists.

    The config is composed the way Hydra will compose it (``--config-path`` / ``--config-name`` honoured), so a
    user's own yaml, config groups and ``+key`` additions are judged by Hydra's rules; only overrides of keys that
    do not exist are reported, all of them at once.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException
    from omegaconf import OmegaConf

    path = _flag_value(argv, ("--config-path", "-cp"))
    if path is not None:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            return None  # Hydra reports a bad --config-path itself
        config_dir = path
    config_name = _flag_value(argv, ("--config-name", "-cn")) or config_name
    overrides = [o for o in _overrides(argv) if not o.lstrip("+~").startswith("hydra.")]
    unknown: list[tuple[str, str]] = []
    remaining = list(overrides)
    for _ in range(len(overrides) + 1):
        try:
            with initialize_config_dir(config_dir=config_dir, version_base=None):
                cfg = compose(config_name=config_name, overrides=remaining)
        except ConfigCompositionException as exc:
            text = f"{exc} {exc.__cause__ or ''}"
            match = _UNKNOWN.search(text)
            key = (match.group(1) or match.group(2)) if match else None
            culprit = next((o for o in remaining if key and o.split("=", 1)[0] == key), None)
            if culprit is None:
                return None  # some other composition problem: Hydra's own message is the right one
            remaining.remove(culprit)
            unknown.append((key, culprit.split("=", 1)[1]))
            continue
        except Exception:  # noqa: BLE001 - the pre-check must never hide Hydra's own report
            return None
        break
    else:
        return None
    if not unknown:
        return None
    tree = OmegaConf.to_container(cfg, resolve=False)
    known, leaves = config_keys(tree), config_keys(tree, leaves_only=True)
    return "\n".join(unknown_key_message(key, value, known, help_command, leaves) for key, value in unknown)


@contextlib.contextmanager
def exit_on_user_error(command: str) -> Iterator[None]:
    """Inside an entry point: an error marked by :func:`preflight` is printed as a paragraph and exits with 1."""
    try:
        yield
    except Exception as exc:
        if not is_user_error(exc) or full_error_requested():
            raise
        report(exc, command)
        sys.exit(1)


def run_hydra_cli(
    hydra_main, *, config_dir: str, config_name: str, command: str, key_help: bool = False, argv=None
) -> None:
    """Run a ``@hydra.main`` function after checking the command line's keys (unknown ones exit with 2).
    ``key_help``: the command prints a node's keys with ``--help PREFIX`` (the message points there)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = check_overrides(argv, config_dir, config_name, help_command=command if key_help else None)
    if problem:
        print(paragraph(f"{command}: error: {problem}"), file=sys.stderr, flush=True)
        sys.exit(2)
    hydra_main()
