"""The SGLang rollout engine (``rollout.name=sglang``). Importing this module needs SGLang (GPU only: it has no CPU
build); the translation lives in ``adapter.py``, which imports without it."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("sglang") is None:
    raise ImportError(
        "rollout engine 'sglang' needs the sglang package, which is not installed: `pip install verl[sglang]` on a "
        "GPU machine (SGLang has no CPU build; use rollout.name=hf or vllm on CPU)"
    )

from verl.workers.rollout.sglang_rollout.adapter import SGLangAdapter  # noqa: E402

__all__ = ["ServerAdapter"]


class ServerAdapter(SGLangAdapter):
    """``sglang.Engine`` behind the rollout interface; see ``adapter.SGLangAdapter``."""
