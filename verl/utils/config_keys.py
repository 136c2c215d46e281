"""What a config field means beyond its type and default: the metadata of the one typed config tree.

Every key of ``python -m verl.trainer.main_ppo`` is a dataclass field declared with :func:`key`. Besides the
default, the field says

* what our code does with it (``effect``): ``implemented`` (read and honoured), ``engine`` (read only by the server
  engines, vLLM and SGLang; the hf engine has nothing it could tune) or ``inert`` (accepted, with the reason it has no
  effect of its own: speed-only, copied elsewhere, or only used by a feature that is refused);
* which values stop a run before Ray starts (``refuse``: a :class:`Refuse` rule);
* which verl generation spells it (``since``: ``"0.8"``/``"0.9"`` for keys that v0.7.1 did not have; ``ours``
  for this project's own keys), and a default that depends on the generation the user wrote (``v09_default``);
* that it derives its default from another key (``follows``, a YAML interpolation) or is another spelling of one
  (``alias_of``).

The yaml, ``--help``, the compatibility table and the refuse-before-Ray rule are all generated from these fields
(``verl.trainer.config.render`` and ``verl.trainer.config.build``). Field docs are the string literals written
right after each field (read from the source with ``ast``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass
from typing import Any

__all__ = ["EFFECTS", "UNSET", "KeyInfo", "Leaf", "Refuse", "field_docs", "info_of", "key", "walk"]

EFFECTS = ("implemented", "engine", "inert")
_META = "verl_key"


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()
"""No generation-specific default (``KeyInfo.v09_default``)."""


@dataclass(frozen=True)
class Refuse:
    """Values a key may take; any other value stops the run before Ray starts.

    Attributes:
        ok: True for a value we handle exactly as verl does.
        allowed: the accepted value(s), in words (for the message, ``--help`` and docs/compat.md).
        fix: what the user should do instead.
        verl: what verl does with the key.
        bad_example: one refused value (the tests use it).
        applies: the rule only applies when this holds for the whole config (a plain nested dict); None: always.
        example_extra: further overrides the tests need for ``bad_example`` to be refused.
    """

    ok: Callable[[Any], bool]
    allowed: str
    fix: str
    verl: str
    bad_example: Any
    applies: Callable[[dict], bool] | None = None
    example_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    """The metadata :func:`key` attaches to a field."""

    effect: str = "implemented"
    reason: str = ""
    refuse: Refuse | None = None
    since: str | None = None
    v07_default: Any = UNSET
    v09_default: Any = UNSET
    follows: str | None = None
    alias_of: str | None = None
    ours: bool = False
    choices: tuple | None = None
    mandatory: bool = False
    in_yaml: bool = True
    yaml_default: Any = UNSET

    @property
    def v09_only(self) -> bool:
        """A key verl v0.7.1 did not have: its YAML default is null ("not written") and writing it means v0.9."""
        return self.since is not None

    @property
    def per_generation(self) -> bool:
        """A key of both generations whose default changed: null in the YAML, resolved by the generation written."""
        return self.since is None and self.v07_default is not UNSET

    def unwritten_value(self, generation: str) -> Any:
        """The value a null (unwritten) key takes under ``generation`` ("0.7" or "0.9")."""
        if self.per_generation:
            return self.v09_default if generation == "0.9" else self.v07_default
        return None if self.v09_default is UNSET else self.v09_default


_DEFAULT_INFO = KeyInfo()


def key(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | Any = MISSING,
    effect: str | None = None,
    reason: str = "",
    refuse: Refuse | None = None,
    since: str | None = None,
    v07_default: Any = UNSET,
    v09_default: Any = UNSET,
    follows: str | None = None,
    alias_of: str | None = None,
    ours: bool = False,
    choices: tuple | None = None,
    mandatory: bool = False,
    in_yaml: bool = True,
    yaml_default: Any = UNSET,
) -> Any:
    """A dataclass field carrying :class:`KeyInfo` (see the module docstring for what each argument means).

    Without ``effect``, a key with a ``refuse`` rule is a feature we do not implement (``inert``: only the allowed
    value passes, and it changes nothing); a key we implement that refuses some values says ``effect="implemented"``.

    ``since`` keys default to None (the user did not write them) and then take ``v09_default``. Keys of both
    generations whose default changed give ``v07_default`` and ``v09_default`` and default to None: the loader
    resolves them by the generation the user wrote. ``choices`` are checked by ``BaseConfig.__post_init__``.
    """
    if effect is None:
        # A key with a refusal and no stated effect is a feature we do not implement: only its "off" value passes.
        effect = "implemented" if refuse is None else "inert"
        reason = reason or (refuse.fix if refuse is not None else "")
    if effect not in EFFECTS:
        raise ValueError(f"effect={effect!r} must be one of {EFFECTS}")
    if effect != "implemented" and not reason:
        raise ValueError(f"a key with effect={effect!r} needs the reason")
    info = KeyInfo(
        effect,
        reason,
        refuse,
        since,
        v07_default,
        v09_default,
        follows,
        alias_of,
        ours,
        choices,
        mandatory,
        in_yaml,
        yaml_default,
    )
    kwargs: dict[str, Any] = {"metadata": {_META: info}}
    if factory is not MISSING:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def info_of(field: dataclasses.Field) -> KeyInfo:
    """The field's :class:`KeyInfo` (a plain field is an implemented verl key without further rules)."""
    return field.metadata.get(_META, _DEFAULT_INFO)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: doc}`` from the string literal following each field in the class body (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                if (
                    isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                ):
                    docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


@dataclass(frozen=True)
class Leaf:
    """One key of the tree: its dotted path, the field that declares it and the value at hand."""

    path: str
    owner: type
    field: dataclasses.Field
    value: Any

    @property
    def info(self) -> KeyInfo:
        return info_of(self.field)

    @property
    def doc(self) -> str:
        return field_docs(self.owner).get(self.field.name, "")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def walk(node: Any, prefix: str = "", into_aliases: bool = True) -> Iterator[Leaf]:
    """Every leaf below a config instance, depth first in field order.

    A field holding a dataclass instance is descended into (its own leaves are listed, not the node); mappings,
    lists and scalars are leaves. ``into_aliases=False`` skips the nodes that only spell another node differently.
    """
    for field in dataclasses.fields(node):
        if field.name == "_target_" or not field.init:
            continue
        path = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(node, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if into_aliases or info_of(field).alias_of is None:
                yield from walk(value, path, into_aliases)
            continue
        yield Leaf(path, type(node), field, value)
