"""Config plumbing that knows no particular tree: compose Hydra configs, turn nodes into typed dataclasses.

* :func:`compose_config` builds the same ``DictConfig`` that ``python -m verl.trainer.main_ppo k=v ...`` sees
  (struct mode: a misspelt key fails and names the key; ``+key=value`` adds), for tests and tools.
* :func:`omega_conf_to_dataclass` builds a ``BaseConfig`` subclass from a node, following ``_target_`` (also on
  nested nodes). Keys the dataclass does not declare are errors naming the full key, except on open nodes (kept
  as extras) and those a class lists in ``_ignored_keys``; a value of the wrong type names the key and the type.
* :func:`to_plain` turns a typed tree back into nested dicts (for trackers and ``--cfg``-style printing).

The trainer's tree, its pre-flight checks and ``validate_config`` live above this module, in
``verl.trainer.config`` (``verl.utils`` imports nothing from the trainer or the workers);
``verl.utils.config.validate_config`` stays importable for verl's callers and resolves to it by name.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = [
    "as_config",
    "build_dataclass",
    "compose_config",
    "get_config_dir",
    "omega_conf_to_dataclass",
    "to_plain",
]

T = TypeVar("T")


# ---- composing --------------------------------------------------------------------------------------------------
def get_config_dir() -> str:
    """Absolute path of the packaged trainer config folder (``verl/trainer/config``)."""
    return str(Path(__file__).resolve().parent.parent / "trainer" / "config")


def compose_config(
    config_name: str = "ppo_trainer",
    overrides: Sequence[str] | None = None,
    config_dir: str | None = None,
) -> DictConfig:
    """Compose a trainer config with Hydra, exactly as the command line would.

    Args:
        config_name: YAML name without extension (``ppo_trainer``, ``ppo_megatron_trainer`` or a user config).
        overrides: Hydra override strings, e.g. ``["algorithm.adv_estimator=grpo", "+new.key=1"]``.
        config_dir: folder holding ``config_name``; defaults to the packaged config folder. A user config there
            can extend ``ppo_trainer`` through ``hydra.searchpath`` and ``defaults``.

    Returns:
        The composed ``DictConfig`` in struct mode (interpolations are not resolved yet).
    """
    from hydra import compose, initialize_config_dir
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    # A caller may already run inside a Hydra app; put its global state back afterwards.
    backup = get_gh_backup()
    if backup is not None:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    try:
        directory = str(Path(config_dir).resolve()) if config_dir else get_config_dir()
        with initialize_config_dir(config_dir=directory, version_base=None):
            return compose(config_name=config_name, overrides=list(overrides or []))
    finally:
        if backup is not None:
            restore_gh_from_backup(backup)


# ---- typed views ------------------------------------------------------------------------------------------------
def omega_conf_to_dataclass(config: Any, dataclass_type: type[T] | None = None) -> T | Any:
    """Build a typed config object from a ``DictConfig`` (or plain mapping) node.

    Args:
        config: the node, e.g. ``cfg.actor_rollout_ref.actor``; ``None`` gives ``None``; an already built
            dataclass instance is returned unchanged.
        dataclass_type: class to build; when omitted the node's ``_target_`` names it. Nested nodes with a
            ``_target_``, or whose field is annotated with a dataclass, are built recursively.

    Returns:
        The instance; its ``__post_init__`` validation has run.

    Raises:
        ValueError: a key the class does not declare (naming the full key and the valid ones), a missing
            ``_target_``, a mandatory ``???`` value left unset, or a failed value check.
    """
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return config
    path = _node_path(config)
    data = plain_container(config, path)
    if dataclass_type is None:
        target = data.get("_target_")
        if not target:
            where = path or "the config node"
            raise ValueError(f"{where} has no _target_; pass dataclass_type= to omega_conf_to_dataclass")
        dataclass_type = _import_target(target, path)
    return build_dataclass(dataclass_type, data, path)


def _is_omegaconf(value: Any) -> bool:
    # omegaconf is only imported by callers that hold its objects; the maths never needs it.
    module = sys.modules.get("omegaconf")
    return module is not None and isinstance(value, (module.DictConfig, module.ListConfig))


def as_config(value: Any, cls: type[T]) -> T:
    """A ``cls`` instance from ``None`` (the defaults), an instance, a ``DictConfig`` or a (partial) mapping."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if _is_omegaconf(value):
        return build_dataclass(cls, plain_container(value), _node_path(value))
    if isinstance(value, Mapping):
        return build_dataclass(cls, dict(value))
    if dataclasses.is_dataclass(value):
        names = {f.name for f in dataclasses.fields(cls)}
        return build_dataclass(cls, {k: v for k, v in to_plain(value).items() if k in names})
    raise TypeError(f"cannot read a {cls.__name__} from {type(value).__name__}")


def plain_container(config: Any, path: str = "") -> dict[str, Any]:
    """A resolved plain dict of a ``DictConfig`` or mapping; an unset ``???`` value is a ``ValueError`` naming it."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(config, DictConfig):
        node = config
    elif isinstance(config, Mapping):
        node = OmegaConf.create(dict(config))
    else:
        raise TypeError(f"expected a DictConfig or a mapping, got {type(config).__name__}")
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        key = err.full_key or path
        raise ValueError(f"{key} is mandatory (???) and unset; pass {key}=<value> on the command line") from err


def _node_path(config: Any) -> str:
    if _is_omegaconf(config):
        try:
            return str(config._get_full_key(None) or "")
        except Exception:  # a detached node has no key; the path only decorates error messages
            return ""
    return ""


def _import_target(target: str, path: str) -> type:
    module_name, _, attr = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        where = f"{path}._target_" if path else "_target_"
        raise ValueError(f"{where}={target!r} cannot be imported ({err}); fix the dotted path") from err


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_dataclass(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build ``cls`` from a plain dict: unknown keys refused (or kept on open nodes), nested nodes built too."""
    if not dataclasses.is_dataclass(cls):
        return cls(**{k: v for k, v in data.items() if k != "_target_"})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    ignored = getattr(cls, "_ignored_keys", frozenset())
    unknown = [k for k in data if k not in names and k not in ignored]
    extras = {}
    if unknown and getattr(cls, "_open", False):
        extras = {k: data[k] for k in unknown}
    elif unknown:
        shown = ", ".join(_join(path, k) for k in unknown)
        valid = ", ".join(n for n in names if n != "_target_")
        raise ValueError(
            f"unknown config key(s) {shown} for {cls.__name__}; check the spelling (valid keys: {valid}) "
            "or remove the key"
        )
    data = _fold_newer_spellings(cls, data, path)
    kwargs = {k: _convert(_node_type(cls, k), v, _join(path, k)) for k, v in data.items() if k in names}
    try:
        instance = cls(**kwargs)
    except ValueError as err:
        raise _with_path(err, cls, path) from None
    if extras:
        object.__setattr__(instance, "_extras", extras)
    return instance


@functools.cache
def _node_type(cls: type, name: str) -> Any:
    """The type a field's value is built as: its annotation, or the class of its default node when that is a
    subclass (``actor: ActorConfig`` defaults to an ``FSDPActorConfig``; a node without ``_target_`` builds one)."""
    annotation = _hints(cls).get(name, Any)
    declared = _dataclass_in(annotation)
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if declared is None or field is None or field.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return annotation
    default = field.default_factory()  # type: ignore[misc]
    return type(default) if isinstance(default, declared) else annotation


def _written(value: Any) -> bool:
    """A node of newer keys counts as written when any of its leaves is not null (the YAML writes them null)."""
    if isinstance(value, Mapping):
        return any(_written(v) for k, v in value.items() if k != "_target_")
    return value is not None


def _fold_newer_spellings(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """Nodes of verl v0.8/v0.9 keys: unwritten (all null) ones become None; a written newer spelling of an older
    node (``alias_of``, relative to this node) is copied onto it, and both set to different values is an error."""
    from verl.utils.config_keys import info_of

    data = dict(data)
    for field in dataclasses.fields(cls):
        info = info_of(field)
        value = data.get(field.name)
        if not isinstance(value, Mapping) or not (info.v09_only or info.alias_of):
            continue
        if info.alias_of and _written(value):
            _copy_onto(data, info.alias_of, value, _join(path, field.name), _join(path, info.alias_of), cls)
        if info.alias_of or not _written(value):
            data[field.name] = None
    return data


def _copy_onto(data: dict, alias_of: str, value: Mapping, newer: str, older: str, cls: type) -> None:
    *parents, last = alias_of.split(".")
    node = data
    for part in parents:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    target = dict(node.get(last) or {})
    older_cls = _dataclass_in(_hints(_owner_class(cls, parents)).get(last, Any))
    defaults = {f.name: _default_of(f) for f in dataclasses.fields(older_cls)} if older_cls else {}
    for name, given in value.items():
        if name == "_target_" or given is None:
            continue
        current = target.get(name, defaults.get(name))
        if current not in (given, defaults.get(name)):
            raise ValueError(
                f"{newer}.{name}={given!r} and {older}.{name}={current!r} disagree (the first is verl v0.8+'s "
                "spelling of the second); set only one of them"
            )
        target[name] = given
    node[last] = target


def _owner_class(cls: type, parents: list[str]) -> type:
    for part in parents:
        cls = _dataclass_in(_hints(cls).get(part, Any)) or cls
    return cls


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def _with_path(err: ValueError, cls: type, path: str) -> ValueError:
    """Name the node by its full key where a shared class could only name itself (``FSDPEngineConfig.dtype``)."""
    text = str(err)
    prefix = f"{cls.__name__}."
    if path and text.startswith(prefix):
        text = f"{path}.{text[len(prefix) :]}"
    return ValueError(text)


def _convert(tp: Any, value: Any, path: str) -> Any:
    if isinstance(value, dict):
        target = value.get("_target_")
        if target:
            return build_dataclass(_import_target(target, path), value, path)
        nested = _dataclass_in(tp)
        return build_dataclass(nested, value, path) if nested is not None else value
    return _check_scalar(tp, value, path)


def _union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _dataclass_in(tp: Any) -> type | None:
    for arg in _union_args(tp):
        if isinstance(arg, type) and dataclasses.is_dataclass(arg):
            return arg
    return None


def _check_scalar(tp: Any, value: Any, path: str) -> Any:
    """Check a value against a plain scalar annotation (bool/int/float/str, optionally ``| None``)."""
    args = _union_args(tp)
    if value is None or not all(a in (bool, int, float, str) for a in args):
        return value
    if isinstance(value, bool):
        ok = bool in args
    elif isinstance(value, int):
        ok = int in args or float in args
        if ok and int not in args:
            value = float(value)
    else:
        ok = isinstance(value, tuple(args))
    if not ok:
        expected = " or ".join(a.__name__ for a in args)
        raise ValueError(f"{path}={value!r} has type {type(value).__name__}; expected {expected}")
    return value


def to_plain(config: Any) -> Any:
    """Nested plain dicts/lists of a typed tree, a ``DictConfig`` or a mapping (extras of open nodes included)."""
    if _is_omegaconf(config):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(config, resolve=True)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out = {f.name: to_plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.name != "_target_"}
        out.update({k: to_plain(v) for k, v in (config.__dict__.get("_extras") or {}).items()})
        return out
    if isinstance(config, Mapping):
        return {k: to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_plain(v) for v in config]
    return config


def __getattr__(name: str) -> Any:
    # verl exposes validate_config here; it checks the trainer's tree, which lives above verl.utils.
    if name in ("validate_config", "KNOWN_ADV_ESTIMATORS", "GROUP_ADV_ESTIMATORS"):
        return getattr(importlib.import_module("verl.trainer.config.build"), name)
    raise AttributeError(f"module 'verl.utils.config' has no attribute {name!r}")
