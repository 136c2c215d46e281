"""``BaseConfig``: the parent of every typed config view (``verl.workers.config.*``, ``verl.trainer.config.*``).

A ``BaseConfig`` is a dataclass that also reads like a read-only mapping, so code written against the Hydra
``DictConfig`` (``cfg["lr"]``, ``cfg.get("lr", 0.0)``, ``for key in cfg``) keeps working when handed the typed
view instead. Fields are frozen once set; a subclass lists the few fields workers legitimately rewrite at start
up (e.g. per-rank batch sizes) in ``_mutable_fields``.

Build instances from YAML with :func:`verl.utils.config.omega_conf_to_dataclass`.
"""

from __future__ import annotations

import collections.abc
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import Any, ClassVar

__all__ = ["BaseConfig", "check_choice"]


@dataclass
class BaseConfig(collections.abc.Mapping):
    """Frozen-by-default dataclass with read-only ``Mapping`` access to its fields."""

    # Names of fields that may be reassigned after construction. Subclasses extend it with ``|``.
    _mutable_fields: ClassVar[frozenset[str]] = frozenset({"_target_"})
    # YAML keys a subclass knowingly does not model (e.g. FSDP-only keys on a Megatron node); dropped on load.
    _ignored_keys: ClassVar[frozenset[str]] = frozenset()

    _target_: str = ""
    """Dotted path of the class this node instantiates (kept for round trips to YAML)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # The first assignment (from the generated __init__) always succeeds; later ones only for mutable fields.
        if name in self.__dict__ and name not in type(self)._mutable_fields:
            raise FrozenInstanceError(
                f"{type(self).__name__}.{name} is frozen after construction; build a new config with "
                f"dataclasses.replace(cfg, {name}=...) instead"
            )
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r} of {type(self).__name__}")

    def _set(self, name: str, value: Any) -> None:
        """Rewrite a field from ``__post_init__`` (normalisation at construction time), bypassing the freeze."""
        object.__setattr__(self, name, value)

    # ---- Mapping interface -------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"{type(self).__name__} keys are field names (str), got {type(key).__name__}: {key!r}")
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return field ``key``, or ``default`` when this config has no such field."""
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._field_names()

    def __iter__(self):
        return iter(self._field_names())

    def __len__(self) -> int:
        return len(self._field_names())

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_choice(key: str, value: Any, allowed: tuple, fix: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``; the message names the key and the choices."""
    if value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        hint = f" {fix}" if fix else ""
        raise ValueError(f"{key}={value!r} is not valid; choose one of {choices}.{hint}")
