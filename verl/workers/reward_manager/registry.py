"""Registry of reward manager classes, selected by ``reward_model.reward_manager`` (or ``reward.reward_manager.name``).

Register a custom manager with ``@register("my_manager")`` in a module that is imported before the trainer
builds its reward function (e.g. the file named by ``custom_reward_function.path``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["REWARD_MANAGER_REGISTRY", "get_reward_manager_cls", "register"]

REWARD_MANAGER_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator that registers a reward manager under ``name``.

    Re-registering the same class is a no-op; a different class under a taken name raises ``ValueError``.

    Example:
        >>> @register("doc_manager")
        ... class DocManager:
        ...     pass
        >>> get_reward_manager_cls("doc_manager") is DocManager
        True
    """

    def decorator(cls: type) -> type:
        existing = REWARD_MANAGER_REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"Reward manager {name!r} is already registered: {existing!r} (new: {cls!r}).")
        REWARD_MANAGER_REGISTRY[name] = cls
        return cls

    return decorator


def get_reward_manager_cls(name: str) -> type:
    """Return the manager class registered under ``name`` (case-sensitive).

    Raises:
        ValueError: ``"Unknown reward manager: <name>"`` followed by the registered names.
    """
    if name not in REWARD_MANAGER_REGISTRY:
        raise ValueError(f"Unknown reward manager: {name}. Registered: {', '.join(sorted(REWARD_MANAGER_REGISTRY))}.")
    return REWARD_MANAGER_REGISTRY[name]
