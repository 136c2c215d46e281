"""Rollout engine interface and the registry of engines, keyed ``(name, mode)``.

Engines are registered by dotted path and imported only when asked for, so ``import verl.workers.rollout`` never
pulls in vLLM or SGLang. ``mode`` is ``"sync"`` (the engine lives in the training process and is driven through
``generate_sequences``) or ``"async"`` (the engine serves requests; the agent loop talks to it).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl.protocol import DataProto

__all__ = ["BaseRollout", "get_rollout_class", "register_rollout"]

_ROLLOUT_REGISTRY: dict[tuple[str, str], str] = {
    ("hf", "sync"): "verl.workers.rollout.hf_rollout.HFRollout",
    ("hf", "async"): "verl.workers.rollout.hf_rollout.HFRollout",
    ("vllm", "async"): "verl.workers.rollout.vllm_rollout.ServerAdapter",
    # 0.6-era scripts still say mode=sync for the server engines; both modes reach the same adapter.
    ("vllm", "sync"): "verl.workers.rollout.vllm_rollout.ServerAdapter",
    ("sglang", "async"): "verl.workers.rollout.sglang_rollout.sglang_rollout.ServerAdapter",
    ("sglang", "sync"): "verl.workers.rollout.sglang_rollout.sglang_rollout.ServerAdapter",
    ("sglang_with_logit", "async"): (
        "verl.workers.rollout.sglang_rollout.sglang_rollout_with_logit.SGLangRolloutWithLogit"
    ),
    ("sglang_with_logit", "sync"): (
        "verl.workers.rollout.sglang_rollout.sglang_rollout_with_logit.SGLangRolloutWithLogit"
    ),
    ("spd", "sync"): "verl.workers.rollout.spd_rollout.SPDRollout",
}

# The pip extra that provides each engine's backend, for the ImportError hint.
_EXTRAS = {"vllm": "vllm", "sglang": "sglang", "sglang_with_logit": "sglang"}


class BaseRollout:
    """A generation engine.

    Sync engines (hf, spd) override ``generate_sequences``; async (server) engines implement ``resume``,
    ``update_weights`` and ``release`` and are driven by the agent loop. The defaults suit an engine that
    generates with the training module itself: nothing to wake, nothing to free.

    Args:
        config: the ``actor_rollout_ref.rollout`` subtree (DictConfig, dataclass config or dict).
        model_config: the ``actor_rollout_ref.model`` subtree, when the engine loads the model itself.
        device_mesh: the rollout device mesh (dp, tp, pp), when the engine is sharded.
    """

    def __init__(self, config: Any, model_config: Any = None, device_mesh: Any = None, *args, **kwargs):
        self.config = config
        self.model_config = model_config
        self.device_mesh = device_mesh

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """Generate responses for left-padded prompts; see the output contract in ``hf_rollout``."""
        raise NotImplementedError(f"{type(self).__name__} is a server engine; drive it through the agent loop")

    async def resume(self, tags: list[str]) -> None:
        """Re-acquire memory for ``tags`` (``"weights"``, ``"kv_cache"``) before generating. No-op by default."""

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
        """Load new policy weights, given as ``(name, tensor)`` pairs, into the engine."""
        raise NotImplementedError(f"{type(self).__name__} does not accept weight updates")

    async def release(self) -> None:
        """Free engine memory (weights, KV cache) while training runs. No-op by default."""


def register_rollout(name: str, mode: str, target: str) -> None:
    """Register an engine class by dotted path (``"pkg.module.Class"``) under ``(name, mode)``."""
    if mode not in ("sync", "async"):
        raise ValueError(f"rollout mode must be 'sync' or 'async', got {mode!r}")
    _ROLLOUT_REGISTRY[(name, mode)] = target


def get_rollout_class(rollout_name: str, mode: str = "async") -> type[BaseRollout]:
    """Import and return the engine class registered under ``(rollout_name, mode)``.

    Raises:
        ValueError: the key is not registered (the message lists the registered keys).
        ImportError: the engine's module cannot be imported (the message names the pip extra to install).
    """
    key = (rollout_name, mode)
    if key not in _ROLLOUT_REGISTRY:
        known = ", ".join(f"({n!r}, {m!r})" for n, m in sorted(_ROLLOUT_REGISTRY))
        raise ValueError(
            f"unknown rollout engine {rollout_name!r} with mode {mode!r}; registered (name, mode) keys: {known}. "
            "Set actor_rollout_ref.rollout.name / .mode to one of them."
        )
    module_path, _, class_name = _ROLLOUT_REGISTRY[key].rpartition(".")
    try:
        module = importlib.import_module(module_path)
    except ImportError as err:
        extra = _EXTRAS.get(rollout_name)
        hint = f"install it with `pip install verl[{extra}]`" if extra else "check the verl installation"
        raise ImportError(
            f"rollout engine {rollout_name!r} (mode {mode!r}) needs {module_path}, which failed to import: {err}; "
            f"{hint}"
        ) from err
    try:
        return getattr(module, class_name)
    except AttributeError as err:
        raise ImportError(f"{module_path} has no class {class_name!r} (registered for {key})") from err
