"""Console logging helpers (see :mod:`verl.utils.logger.aggregate_logger`)."""

from __future__ import annotations

from verl.utils.logger.aggregate_logger import (
    LocalLogger,
    concat_dict_to_str,
    log_with_rank,
    print_rank_0,
    print_with_rank,
)

__all__ = ["LocalLogger", "concat_dict_to_str", "log_with_rank", "print_rank_0", "print_with_rank"]
