"""Build the trainer's reward function from the config, and apply it to a batch.

Two config layouts are accepted; the newer key wins when set, and the legacy key is the fallback:

====================================  ==========================================  ==================
newer (verl >= 0.7)                   legacy (verl <= 0.6)                        default
====================================  ==========================================  ==================
``reward.reward_manager.name``        ``reward_model.reward_manager``             ``naive``
``reward.custom_reward_function.*``   ``custom_reward_function.{path,name}``      none / compute_score
``reward.sandbox_fusion.*``           ``reward_model.sandbox_fusion.*``           none
``reward.reward_kwargs``              ``reward_model.reward_kwargs``              {}
====================================  ==========================================  ==================

Setting both layouts of one key to different values is a ``ValueError`` that names both keys (a legacy key left
at its default never conflicts).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import Callable
from typing import Any

from verl.trainer.config.ppo_trainer import CustomRewardFunctionConfig, PPOTrainerConfig
from verl.workers.config.reward_model import RewardModelConfig, SandboxFusionConfig

__all__ = ["compute_reward", "get_custom_reward_fn", "load_reward_manager"]  # + compute_reward_async (lazy, Ray)


def _tree(config: Any) -> PPOTrainerConfig:
    """The typed tree of ``config`` (a composed ``DictConfig`` is built without the trainer's batch checks)."""
    if isinstance(config, PPOTrainerConfig):
        return config
    from verl.trainer.config.build import build_trainer_config

    return build_trainer_config(config, check=False)


def _resolve(new_key: str, new: Any, legacy_key: str, legacy: Any, legacy_default: Any = None) -> Any:
    """``new`` when set, else ``legacy``; both set (legacy not at its default) and unequal raises."""
    if new is None:
        return legacy
    if legacy is None or legacy == legacy_default or legacy == new:
        return new
    raise ValueError(f"{new_key}={new!r} and {legacy_key}={legacy!r} disagree; set only one of them.")


_ANNOUNCED: set[tuple[str, str]] = set()  # custom reward functions already announced (train, val and checks load it)


def _sync_wrapper(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let the managers call an ``async def`` reward function like a plain one."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run


def get_custom_reward_fn(config: Any) -> Callable[..., Any] | None:
    """Load the user's reward function named by ``custom_reward_function.{path,name}`` (or ``reward.…``).

    The file is imported as a module; ``name`` defaults to ``compute_score``. Keyword arguments from
    ``custom_reward_function.reward_kwargs`` are bound with ``functools.partial``.

    Returns:
        The callable, or None when no path is configured.

    Raises:
        FileNotFoundError: the file does not exist (the message names the path and the config key).
        RuntimeError: the file raised while being imported.
        AttributeError: the file defines no attribute ``name``.
    """
    cfg = _tree(config)
    new, legacy = cfg.reward.custom_reward_function, cfg.custom_reward_function
    path = _resolve("reward.custom_reward_function.path", new.path, "custom_reward_function.path", legacy.path)
    if not path:
        return None
    default_name = CustomRewardFunctionConfig.name
    name = _resolve(
        "reward.custom_reward_function.name", new.name, "custom_reward_function.name", legacy.name, default_name
    )
    name = name or default_name
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Reward function file {path!r} not found (custom_reward_function.path).")
    from verl.utils.import_utils import load_module

    try:
        module = load_module(path)
    except ImportError as exc:
        raise RuntimeError(f"Could not import the reward function file {path!r}: {exc}") from exc
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AttributeError(
            f"Reward function {name!r} not found in {path!r} (custom_reward_function.name); callables there: {defined}."
        )
    fn = getattr(module, name)
    if inspect.iscoroutinefunction(fn):
        fn = _sync_wrapper(fn)
    reward_kwargs = {**legacy.reward_kwargs, **new.reward_kwargs}
    if (path, name) not in _ANNOUNCED:
        _ANNOUNCED.add((path, name))
        print(f"using custom reward function {name!r} from {path!r}")
    return functools.partial(fn, **reward_kwargs) if reward_kwargs else fn


def _manager_class(cfg: PPOTrainerConfig) -> type:
    from verl.workers.reward_manager import get_reward_manager_cls

    manager = cfg.reward.reward_manager
    if manager.source == "importlib":
        from verl.utils.import_utils import load_extern_object

        if not manager.module.path:
            raise ValueError("reward.reward_manager.source=importlib needs reward.reward_manager.module.path.")
        return load_extern_object(manager.module.path, manager.module.name)
    default = RewardModelConfig.reward_manager
    legacy = cfg.reward_model.reward_manager
    name = _resolve("reward.reward_manager.name", manager.name, "reward_model.reward_manager", legacy, default)
    return get_reward_manager_cls(name or default)


def _default_scorer(cfg: PPOTrainerConfig) -> Callable[..., Any]:
    """``default_compute_score``, bound to the SandboxFusion settings when a URL is configured."""
    from verl.utils.reward_score import default_compute_score

    new, legacy = cfg.reward.sandbox_fusion, cfg.reward_model.sandbox_fusion
    url = _resolve("reward.sandbox_fusion.url", new.url, "reward_model.sandbox_fusion.url", legacy.url)
    if not url:
        return default_compute_score
    max_concurrent = _resolve(
        "reward.sandbox_fusion.max_concurrent",
        new.max_concurrent,
        "reward_model.sandbox_fusion.max_concurrent",
        legacy.max_concurrent,
        SandboxFusionConfig.max_concurrent,
    )
    memory_limit_mb = _resolve(
        "reward.sandbox_fusion.memory_limit_mb",
        new.memory_limit_mb,
        "reward_model.sandbox_fusion.memory_limit_mb",
        legacy.memory_limit_mb,
        SandboxFusionConfig.memory_limit_mb,
    )
    return functools.partial(
        default_compute_score,
        sandbox_fusion_url=url,
        concurrent_semaphore=threading.Semaphore(int(max_concurrent)),
        memory_limit_mb=int(memory_limit_mb),
    )


def load_reward_manager(config: Any, tokenizer: Any, num_examine: int = 0, **reward_kwargs: Any) -> Any:
    """Instantiate the configured reward manager.

    Args:
        config: the full trainer config (the typed tree, or a composed ``DictConfig`` that is built into it).
        tokenizer: used by the manager to decode prompts and responses.
        num_examine: rows per data source the manager prints (0 for training, 1 for validation).
        **reward_kwargs: extra manager arguments; they override ``reward_model.reward_kwargs`` /
            ``reward.reward_kwargs`` from the config.

    Returns:
        A callable ``manager(data, return_dict=False)``.
    """
    cfg = _tree(config)
    manager_cls = _manager_class(cfg)
    compute_score = get_custom_reward_fn(cfg) or _default_scorer(cfg)
    kwargs = {**cfg.reward_model.reward_kwargs, **cfg.reward.reward_kwargs, **reward_kwargs}
    return manager_cls(
        tokenizer=tokenizer,
        num_examine=num_examine,
        compute_score=compute_score,
        reward_fn_key=cfg.data.reward_fn_key,
        **kwargs,
    )


def check_data_sources(config: Any, *datasets: Any) -> None:
    """Before Ray: every data source of the datasets has a scorer when the built-in rules score them.

    Applies only where ``default_compute_score`` will be called (no custom reward function, no reward model, a
    built-in reward manager); an unknown source would otherwise stop the run at its first reward.

    Raises:
        ValueError: naming the data source, its key (``data.reward_fn_key``) and the two ways to fix it.
    """
    from verl.utils.reward_score import has_scorer, known_data_sources

    cfg = _tree(config)
    model_scored = cfg.reward_model.enable or cfg.reward.reward_model.enable
    if model_scored or get_custom_reward_fn(cfg) is not None:
        return
    if not _manager_class(cfg).__module__.startswith("verl.workers.reward_manager"):
        return  # a user's manager may score any source its own way
    key = cfg.data.reward_fn_key
    for dataset in datasets:
        rows = getattr(dataset, "rows", None)
        if not rows:
            continue
        sources = {str(row.get(key)) for row in rows if isinstance(row, dict)}
        unknown = sorted(s for s in sources if not has_scorer(s))
        if unknown:
            raise ValueError(
                f"no reward rule for {key}={unknown[0]!r} (column {key!r} of the data, data.reward_fn_key); "
                f"the built-in rules know: {', '.join(known_data_sources())}. Either point "
                "custom_reward_function.path=FILE.py custom_reward_function.name=FUNCTION at your scorer, or "
                "write a known data source in that column."
            )


def _accepts_return_dict(reward_fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(reward_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "return_dict" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def compute_reward(data: Any, reward_fn: Callable[..., Any]) -> tuple[Any, dict[str, list]]:
    """Apply a reward manager to a batch.

    Args:
        data: a ``DataProto`` with ``prompts``, ``responses``, ``attention_mask`` and the reward columns.
        reward_fn: a reward manager (or any callable returning a tensor or the ``return_dict`` form).

    Returns:
        ``(reward_tensor (bs, R), reward_extra_infos_dict {key: list})``.
    """
    result = reward_fn(data, return_dict=True) if _accepts_return_dict(reward_fn) else reward_fn(data)
    if isinstance(result, dict):
        return result["reward_tensor"], dict(result.get("reward_extra_info", {}))
    return result, {}


def _compute_reward_task(data: Any, config: Any = None, tokenizer: Any = None, reward_fn: Any = None):
    if reward_fn is None:
        reward_fn = load_reward_manager(config, tokenizer, num_examine=0)
    return compute_reward(data, reward_fn)


_REMOTE: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    # compute_reward_async is a Ray remote function; it is built on first use so importing this module needs no Ray.
    if name == "compute_reward_async":
        if name not in _REMOTE:
            import ray

            _REMOTE[name] = ray.remote(num_cpus=1)(_compute_reward_task)
        return _REMOTE[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
