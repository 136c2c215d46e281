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

from verl.utils.config_keys import info_of

__all__ = ["BaseConfig", "check_choice"]


@dataclass
class BaseConfig(collections.abc.Mapping):
    """Frozen-by-default dataclass with read-only ``Mapping`` access to its fields."""

    # Names of fields that may be reassigned after construction. Subclasses extend it with ``|``.
    _mutable_fields: ClassVar[frozenset[str]] = frozenset({"_target_"})
    # YAML keys a subclass knowingly does not model (e.g. FSDP-only keys on a Megatron node); dropped on load.
    _ignored_keys: ClassVar[frozenset[str]] = frozenset()
    # Open nodes keep keys they do not declare (``+data.my_key=...`` for a custom dataset) as read-only extras,
    # reachable like fields (``cfg.my_key``, ``cfg["my_key"]``); closed nodes refuse them.
    _open: ClassVar[bool] = False
    # Whether the generated YAML writes ``_target_`` for this node (verl's public config classes do).
    _emit_target: ClassVar[bool] = True
    # The node's usual dotted path, for messages of instances built outside the loader (the loader names the
    # actual path of shared node classes).
    _path: ClassVar[str] = ""

    _target_: str = ""
    """Dotted path of the class this node instantiates (kept for round trips to YAML)."""

    def __post_init__(self) -> None:
        # Keys declared with ``key(..., choices=...)`` are checked for every instance, however it was built; a null
        # key whose default depends on the verl generation takes v0.7's here (the trainer's loader resolves it
        # from the keys the user wrote before the node is built).
        for f in fields(self):
            info = info_of(f)
            value = getattr(self, f.name)
            if isinstance(value, collections.abc.Mapping) and not isinstance(value, BaseConfig):
                # verl's classes take a plain dict for a node (CriticConfig(model={...})): build the node now
                from verl.utils.config import _dataclass_in, _hints, build_dataclass

                node_cls = _dataclass_in(_hints(type(self)).get(f.name))
                if node_cls is not None:
                    object.__setattr__(self, f.name, build_dataclass(node_cls, dict(value), f.name))
            if getattr(self, f.name) is None and (info.v09_only or info.per_generation):
                object.__setattr__(self, f.name, info.unwritten_value("0.7"))
            if info.choices is not None:
                check_choice(f"{self._path or type(self).__name__}.{f.name}", getattr(self, f.name), info.choices)

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

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: the extra keys of an open node.
        extras = self.__dict__.get("_extras")
        if extras is not None and name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    @property
    def extras(self) -> dict[str, Any]:
        """Keys this open node holds beyond its fields (empty for closed nodes)."""
        return dict(self.__dict__.get("_extras") or {})

    # ---- Mapping interface -------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"{type(self).__name__} keys are field names (str), got {type(key).__name__}: {key!r}")
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """Return field ``key``, or ``default`` when this config has no such field."""
        return getattr(self, key, default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in self._field_names() or key in self.extras)

    def __iter__(self):
        return iter((*self._field_names(), *self.extras))

    def __len__(self) -> int:
        return len(self._field_names()) + len(self.extras)

    @classmethod
    def _field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_choice(key: str, value: Any, allowed: tuple, fix: str = "") -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``; the message names the key and the choices."""
    if value not in allowed:
        import difflib

        choices = ", ".join(repr(a) for a in allowed)
        hint = f" {fix}" if fix else ""
        leaf = key.rsplit(".", 1)[-1].split(" ")[0]
        near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
        guess = f" did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"Invalid {leaf}: {key}={value!r} is not valid;{guess} choose one of {choices}.{hint}")
