"""Rollout engine interface and the registry of engines, keyed ``(name, mode)``.

Engines are registered by dotted path and imported only when asked for, so ``import verl.workers.rollout`` never
pulls in vLLM or SGLang. ``mode`` is ``"sync"`` (the engine lives in the training process and is driven through
``generate_sequences``) or ``"async"`` (the engine serves requests; the agent loop talks to it).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from verl.protocol import DataProto
    from verl.workers.rollout.engine import InferenceEngine

__all__ = ["BaseRollout", "EngineRollout", "get_rollout_class", "register_rollout"]

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


async def _off_the_loop(fn, *args: Any) -> Any:
    """Run a blocking engine call on a worker thread (SGLang's blocking methods run an event loop of their own and
    fail inside a running one), on the caller's CUDA device."""
    import torch

    device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def call() -> Any:
        if device is not None:
            torch.cuda.set_device(device)
        return fn(*args)

    return await asyncio.get_running_loop().run_in_executor(None, call)


class EngineRollout(BaseRollout):
    """``generate_sequences`` and the hybrid-engine lifecycle over an :class:`~verl.workers.rollout.engine.
    InferenceEngine`: the one implementation behind ``hf``, ``vllm``, ``sglang`` and ``sglang_with_logit``.

    Subclasses build ``self.engine`` and only translate. The worker drives the lifecycle with the blocking methods
    (``wake_up`` -> ``load_weights`` -> ``generate_sequences`` -> ``sleep``); verl's ``async`` faces (``resume``,
    ``update_weights``, ``release``) run the same calls off the event loop.

    Meta keys of the prompts override the config: ``validate`` (-> ``val_kwargs``), ``do_sample``, ``temperature``,
    ``top_p``, ``top_k``, ``response_length``, ``seed`` (row i samples with ``seed + i``), ``calculate_log_probs``,
    ``eos_token_id``, ``pad_token_id``.
    """

    engine: InferenceEngine
    #: capture the sampled token's logprob even when ``logit_capture.enable`` is off (the with-logit engine).
    capture_by_default = False

    def __init__(self, config: Any, model_config: Any = None, device_mesh: Any = None, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        from verl.workers.rollout.logit_capture import CaptureSpec

        spec = CaptureSpec.from_config(self.config.logit_capture)
        self.capture_spec = CaptureSpec() if spec is None and self.capture_by_default else spec

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """One response per prompt row (the trainer repeats rows for ``n``); output keys as in ``hf_rollout``."""
        from verl.workers.rollout.engine_io import assemble_output, prompt_token_lists, rollout_sampling
        from verl.workers.rollout.logit_capture import check_capture_budget

        start = time.perf_counter()
        engine = self.engine
        sampling = rollout_sampling(
            self.config, prompts.meta_info, engine.eos_token_ids, engine.pad_token_id, self.capture_spec
        )
        token_prompts = prompt_token_lists(prompts)
        if self.capture_spec is not None:
            check_capture_budget(self.capture_spec, len(token_prompts), sampling.response_length, engine.vocab_size)
        outputs = engine.generate(token_prompts, [sampling.row(i) for i in range(len(token_prompts))])
        out = assemble_output(prompts, outputs, sampling)
        out.meta_info["timing"] = {"generate_sequences": time.perf_counter() - start}
        return out

    # ---- the hybrid-engine lifecycle, blocking (what the worker calls) ----
    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Re-acquire weights / KV cache (``tags``; None = all) after ``sleep``."""
        self.engine.wake_up(tags)

    def sleep(self) -> None:
        """Free engine memory while training runs (``rollout.free_cache_engine``)."""
        self.engine.sleep()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int | None = None) -> None:
        """Load HF-named weights, ``rollout.update_weights_bucket_megabytes`` per engine call."""
        size = bucket_bytes or int(self.config.update_weights_bucket_megabytes) << 20
        self.engine.update_weights(weights, size)

    def abort_all(self) -> None:
        """Stop the ``generate_sequences`` in flight (rows keep their tokens; ``meta_info["aborted_rows"]``)."""
        self.engine.abort_all()

    # ---- verl's async faces ----
    async def resume(self, tags: list[str]) -> None:
        await _off_the_loop(self.wake_up, tags)

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
        await _off_the_loop(self.load_weights, weights, kwargs.get("bucket_bytes"))

    async def release(self) -> None:
        await _off_the_loop(self.sleep)


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
        import difflib

        known = ", ".join(f"({n!r}, {m!r})" for n, m in sorted(_ROLLOUT_REGISTRY))
        names = sorted({n for n, _ in _ROLLOUT_REGISTRY})
        near = [n for n in difflib.get_close_matches(str(rollout_name), names, n=1, cutoff=0.6) if n != rollout_name]
        guess = f" did you mean actor_rollout_ref.rollout.name={near[0]}?" if near else ""
        raise ValueError(
            f"unknown rollout engine {rollout_name!r} with mode {mode!r} (actor_rollout_ref.rollout.name / .mode);"
            f"{guess} "
            f"registered (name, mode) keys: {known}. Set actor_rollout_ref.rollout.name / .mode to one of them."
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
