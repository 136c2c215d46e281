"""What a run prints: a compact step line on a terminal, verl's full line elsewhere, and no third-party chatter.

* On a terminal, each training step is one line that fits 80 columns (step, score, policy loss, KL, entropy,
  response length, seconds, tokens/s) printed above the progress bar. When the output is a file or a pipe (CI, a
  ``tee``'d log), the line is verl's own ``step:N - key:value - ...`` with every metric, which users' scripts parse.
  ``VERL_CONSOLE=compact`` or ``VERL_CONSOLE=full`` chooses either way. Every metric always reaches the ``file``,
  tensorboard and wandb backends with verl's names.
* The libraries under a run print start-up notes nobody acts on (vLLM's ~90 INFO/WARNING lines per engine, torch's
  "Triton not available", Ray's token-authentication notice). :func:`quiet_third_party` sets, before those libraries
  start, the levels and switches they read themselves. ``VERL_LOGGING_LEVEL=INFO`` (or ``DEBUG``) keeps everything,
  as do the libraries' own variables when the user has set them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["compact_step_line", "console_style", "is_terminal", "quiet_third_party", "verbose"]

COLUMNS = 80

# (label, verl metric names in order of preference, format)
_STEP_FIELDS = (
    ("score", ("critic/score/mean",), "{:.3f}"),
    ("loss", ("actor/pg_loss",), "{:+.3f}"),
    ("kl", ("actor/kl_loss", "actor/ppo_kl"), "{:.2g}"),
    ("ent", ("actor/entropy",), "{:.2f}"),
    ("len", ("response_length/mean",), "{:.0f}"),
    ("", ("timing_s/step",), "{:.1f}s"),
    (" ", ("perf/throughput",), "{:.0f}tok/s"),  # joined to the seconds by one space
)


def verbose() -> bool:
    """True when the user asked for every log line (``VERL_LOGGING_LEVEL=INFO`` or ``DEBUG``)."""
    return os.environ.get("VERL_LOGGING_LEVEL", "WARN").upper() in ("INFO", "DEBUG", "NOTSET")


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def console_style() -> str:
    """``compact`` on a terminal, ``full`` otherwise; ``VERL_CONSOLE`` overrides."""
    chosen = os.environ.get("VERL_CONSOLE", "").strip().lower()
    if chosen in ("compact", "full"):
        return chosen
    return "compact" if is_terminal() else "full"


def _number(value: Any) -> float | None:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def compact_step_line(data: Mapping[str, Any], step: int, width: int = COLUMNS - 1) -> str:
    """One line of at most ``width`` characters for a step's metrics (validation steps show their core metrics).

    Example:
        >>> compact_step_line({"critic/score/mean": 0.5, "actor/pg_loss": -0.01, "timing_s/step": 1.25}, 3)
        'step   3  score 0.500  loss -0.010  1.2s'
    """
    head = f"step {step:>3}"
    parts: list[tuple[str, str]] = []  # (separator, text)
    for label, names, fmt in _STEP_FIELDS:
        value = next((v for v in (_number(data.get(n)) for n in names) if v is not None), None)
        if value is not None:
            parts.append((" ", fmt.format(value)) if label == " " else ("  ", f"{label} {fmt.format(value)}".strip()))
    if not parts:  # a validation-only step: its val-core metrics, shortened
        core = {k: v for k, v in data.items() if k.startswith("val-core/") and _number(v) is not None}
        shown = core or {k: v for k, v in data.items() if k.startswith("val") and _number(v) is not None}
        head = f"val  {step:>3}"
        for key, value in shown.items():
            short = key.removeprefix("val-core/").removeprefix("val-aux/")
            parts.append(("  ", f"{short} {_number(value):.3f}"))
    line = head
    for sep, text in parts:
        if len(line) + len(sep) + len(text) > width:
            break
        line += sep + text
    return line


# --------------------------------------------------------------------------------------------- third-party chatter
_QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM: ~90 INFO/WARNING start-up lines per engine and rank
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings (vLLM CPU's NUMA binding note)
    "RAY_DEDUP_LOGS": "0",
}
_QUIET_LOGGERS = ("torch._library.triton",)  # "Triton not available" on CPU machines
# (message prefix, category): vLLM's kernel dispatcher touches torch.distributed.reduce_op, deprecated by torch
_QUIET_WARNINGS = (("`torch.distributed.reduce_op` is deprecated", FutureWarning),)


def quiet_third_party(local_ray_cluster: bool = False) -> dict[str, str]:
    """Set the variables the libraries read to stay quiet (only those the user has not set) in this process, whose
    environment child processes and a Ray cluster started from here inherit; returns them for a Ray runtime env.

    ``local_ray_cluster``: this process is about to start Ray's local cluster; Ray's notice that it turned its
    token authentication on (which stays on) is dropped.
    """
    if verbose():
        return {}
    chosen = {k: v for k, v in _QUIET_ENV.items() if k not in os.environ}
    if not is_terminal() and "RAY_COLOR_PREFIX" not in os.environ:
        chosen["RAY_COLOR_PREFIX"] = "0"  # no ANSI colour codes in log files
    present = os.environ.get("PYTHONWARNINGS", "")
    filters = [f"ignore:{m}:{c.__name__}" for m, c in _QUIET_WARNINGS if m not in present]
    if filters:  # for child processes (this variable is read at interpreter start) ...
        chosen["PYTHONWARNINGS"] = ",".join([w for w in [present] if w] + filters)
    for message, category in _QUIET_WARNINGS:  # ... and for this one
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    # megatron-core's import-time notes (no Apex / Transformer Engine: the torch fallbacks are used; deprecations)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.")
    os.environ.update(chosen)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if local_ray_cluster and "RAY_AUTH_MODE" not in os.environ:
        # Ray >= 2.5x turns token authentication on for a local cluster (kept) and says so at every start.
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        if not any(isinstance(f, _DropMessage) for f in notice.filters):
            notice.addFilter(_DropMessage("Token authentication is enabled for this Ray cluster"))
    return chosen


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix`` (one known notice, nothing else)."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)
