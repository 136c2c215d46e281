"""Load Hugging Face tokenizers and (multi-modal) processors with the small fixes RL training needs."""

from __future__ import annotations

import logging
import warnings
from typing import Any

__all__ = ["hf_processor", "hf_tokenizer", "set_pad_token_id"]

logger = logging.getLogger(__name__)


def set_pad_token_id(tokenizer: Any) -> None:
    """Use the eos token as pad token when the tokenizer has none (batched generation needs a pad id)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
        warnings.warn(f"tokenizer has no pad token; using eos token {tokenizer.eos_token!r} as pad.", stacklevel=2)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def hf_tokenizer(name_or_path: str, correct_pad_token: bool = True, correct_gemma2: bool = True, **kwargs: Any) -> Any:
    """Load a tokenizer with ``AutoTokenizer.from_pretrained``.

    Args:
        name_or_path: local directory (or hub id, when a hub is reachable).
        correct_pad_token: set ``pad = eos`` when the tokenizer defines no pad token.
        correct_gemma2: gemma-2-2b-it ships ``<eos>`` as eos but ends turns with ``<end_of_turn>``; use the latter.
        **kwargs: passed to ``AutoTokenizer.from_pretrained`` (e.g. ``trust_remote_code``).

    Returns:
        The tokenizer.
    """
    from transformers import AutoTokenizer

    if correct_gemma2 and isinstance(name_or_path, str) and "gemma-2-2b-it" in name_or_path:
        warnings.warn("gemma-2-2b-it: using <end_of_turn> (id 107) as eos token.", stacklevel=2)
        kwargs["eos_token"] = "<end_of_turn>"
        kwargs["eos_token_id"] = 107
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if correct_pad_token:
        set_pad_token_id(tokenizer)
    return tokenizer


def hf_processor(name_or_path: str, **kwargs: Any) -> Any | None:
    """Load a multi-modal processor, or return ``None`` for text-only models.

    ``AutoProcessor`` falls back to returning a plain tokenizer for text-only checkpoints and raises for
    directories without processor files; both cases mean "no processor" to the caller.
    """
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
    except Exception as exc:  # text-only checkpoints legitimately have no processor
        logger.debug("no processor for %s: %s", name_or_path, exc)
        return None
    if processor is None or "Processor" not in type(processor).__name__:
        return None
    return processor
