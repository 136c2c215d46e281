"""Small pure-Python helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


def append_to_dict(data: dict[str, list], new_data: dict[str, Any]) -> None:
    """Append each value of ``new_data`` to the list stored under the same key in ``data``."""
    for key, val in new_data.items():
        data.setdefault(key, []).append(val)


def union_two_dict(dict1: dict, dict2: dict) -> dict:
    """Merge ``dict2`` into ``dict1`` in place; a key present in both must hold the same value."""
    for key, val in dict2.items():
        if key in dict1:
            assert dict1[key] == val, f"{key} in dict1 and dict2 differ: {dict1[key]!r} vs {val!r}"
        dict1[key] = val
    return dict1


@contextlib.contextmanager
def temp_env_var(key: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a ``with`` block, then restore the old state."""
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


class _DynamicEnumMember:
    __slots__ = ("name", "value", "_enum")

    def __init__(self, enum_name: str, name: str, value: int):
        self._enum = enum_name
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"<{self._enum}.{self.name}: {self.value}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, _DynamicEnumMember) and (self._enum, self.name) == (other._enum, other.name)

    def __hash__(self) -> int:
        return hash((self._enum, self.name))

    def __reduce__(self):
        # Members pickle by name so that Ray workers resolve the same member from their own registry.
        return (_lookup_member, (self._enum, self.name))


_ENUMS: dict[str, type[DynamicEnum]] = {}


def _lookup_member(enum_name: str, name: str) -> _DynamicEnumMember:
    return _ENUMS[enum_name].from_name(name)


class _DynamicEnumMeta(type):
    def __getattr__(cls, name: str):
        members = cls.__dict__.get("_members")
        if members is not None and name in members:
            return members[name]
        raise AttributeError(f"{cls.__name__} has no member {name!r}")

    def __iter__(cls):
        return iter(cls._members.values())

    def __contains__(cls, item) -> bool:
        return isinstance(item, _DynamicEnumMember) and item._enum == cls.__name__ and item.name in cls._members


class DynamicEnum(metaclass=_DynamicEnumMeta):
    """An enum whose members can be added at run time (used for dispatch and execute modes).

    Subclass it, then call ``register("name")``; members are reached as ``Cls.NAME`` and pickle by name.
    """

    _members: dict[str, _DynamicEnumMember] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._members = {}
        _ENUMS[cls.__name__] = cls

    @classmethod
    def register(cls, name: str) -> _DynamicEnumMember:
        key = name.upper()
        if key not in cls._members:
            cls._members[key] = _DynamicEnumMember(cls.__name__, key, len(cls._members))
        return cls._members[key]

    @classmethod
    def remove(cls, name: str) -> None:
        cls._members.pop(name.upper(), None)

    @classmethod
    def from_name(cls, name: str) -> _DynamicEnumMember | None:
        return cls._members.get(name.upper())

    @classmethod
    def names(cls) -> list[str]:
        return list(cls._members)


def cfg_get(config: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a DictConfig, a dict, a dataclass config or ``None``.

    A missing key, a ``None`` config and an explicit ``null`` value all give ``default``, so callers can write one
    line whatever shape of config they were handed.
    """
    if config is None:
        return default
    getter = getattr(config, "get", None)
    value = getter(key, default) if callable(getter) else getattr(config, key, default)
    return default if value is None else value
