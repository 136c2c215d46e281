"""Console metric logging and rank-aware log helpers.

:class:`LocalLogger` is the ``console`` tracking backend: one line per step, ``step:3 - critic/score/mean:0.5 - ...``,
numeric values only (on a terminal, a compact line of the main metrics instead). It prints through ``tqdm.write`` when tqdm is installed, so a progress bar drawn by the
trainer is redrawn below the line instead of being torn in half.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["LocalLogger", "concat_dict_to_str", "log_with_rank", "print_rank_0", "print_with_rank"]


def _as_number(value: Any) -> float | int | None:
    """The value as a Python number, or None when it is not a single number (strings, lists, dicts)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Number):
        return value  # type: ignore[return-value]
    # Scalar tensors and numpy 0-d arrays expose item(); avoid importing torch just to check.
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return None


def _format_number(value: float | int) -> str:
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{value:.6g}"


def concat_dict_to_str(data: Mapping[str, Any], step: int) -> str:
    """Render ``data`` as ``step:{step} - key:val - ...``, skipping values that are not numbers.

    Example:
        >>> concat_dict_to_str({"loss": 0.25, "note": "x", "n": 3}, step=2)
        'step:2 - loss:0.25 - n:3'
    """
    parts = [f"step:{step}"]
    for key, value in data.items():
        number = _as_number(value)
        if number is not None:
            parts.append(f"{key}:{_format_number(number)}")
    return " - ".join(parts)


def _write_line(line: str) -> None:
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
    else:
        tqdm.write(line)


class LocalLogger:
    """Prints one line of numeric metrics per step.

    Args:
        print_to_console: when False, ``log`` is a no-op (kept for call sites that build it unconditionally).
    """

    def __init__(self, print_to_console: bool = False):
        self.print_to_console = print_to_console

    def log(self, data: Mapping[str, Any], step: int) -> None:
        """Print ``data`` for ``step`` as a single line: verl's full ``key:value`` line, or on a terminal a compact
        line of the main metrics (:mod:`verl.utils.console`; ``VERL_CONSOLE=full|compact`` chooses)."""
        if self.print_to_console:
            from verl.utils.console import compact_step_line, console_style

            if console_style() == "compact":
                _write_line(compact_step_line(data, step=step))
            else:
                _write_line(concat_dict_to_str(data, step=step))

    def flush(self) -> None:
        """Nothing is buffered; present so every backend has the same methods."""

    def finish(self) -> None:
        """Nothing to close; present so every backend has the same methods."""


def _current_rank() -> int:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def print_rank_0(message: str) -> None:
    """Print only on global rank 0 (or when torch.distributed is not initialised)."""
    if _current_rank() == 0:
        print(message, flush=True)


def print_with_rank(message: str, rank: int = 0, log_only_rank_0: bool = False) -> None:
    """Print ``[Rank r] message``; with ``log_only_rank_0`` only rank 0 prints."""
    if not log_only_rank_0 or rank == 0:
        print(f"[Rank {rank}] {message}", flush=True)


def log_with_rank(
    message: str,
    rank: int,
    logger: logging.Logger,
    level: int = logging.INFO,
    log_only_rank_0: bool = False,
) -> None:
    """Log ``[Rank r] message`` through ``logger``; with ``log_only_rank_0`` other ranks stay silent."""
    if not log_only_rank_0 or rank == 0:
        logger.log(level, f"[Rank {rank}] {message}")
