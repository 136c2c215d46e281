"""Load the interactions listed in ``actor_rollout_ref.rollout.multi_turn.interaction_config_path``.

YAML format::

    interaction:
      - name: gsm8k                                                   # optional; default from the class name
        class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction
        config: {}                                                    # passed to the constructor, plus "name"

Without ``name`` the class's simple name is lower-cased with a trailing ``Interaction`` removed
(``Gsm8kInteraction`` -> ``gsm8k``). Every problem (missing file, bad YAML, a class that cannot be imported or is
not a ``BaseInteraction``, a duplicate name) raises ``ValueError`` naming the file and the entry; an import failure
is also the ``ModuleNotFoundError`` / ``AttributeError`` verl raises there, so either ``except`` catches it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from verl.interactions.base import BaseInteraction

__all__ = ["get_interaction_class", "initialize_interactions_from_config"]

_KEY = "actor_rollout_ref.rollout.multi_turn.interaction_config_path"


class InteractionModuleNotFound(ValueError, ModuleNotFoundError):
    """The module of an interaction's ``class_name`` cannot be imported."""


class InteractionClassNotFound(ValueError, AttributeError):
    """The module imports but has no attribute of that name."""


def get_interaction_class(cls_name: str) -> type[BaseInteraction]:
    """Import ``pkg.module.Class``; raises ``ValueError`` when it cannot be imported or is no BaseInteraction."""
    module_name, _, attr = cls_name.rpartition(".")
    if not module_name:
        raise ValueError(f"class_name {cls_name!r} must be a dotted path like 'pkg.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InteractionModuleNotFound(f"class_name {cls_name!r} cannot be imported: {exc}") from exc
    if not hasattr(module, attr):
        raise InteractionClassNotFound(f"class_name {cls_name!r} cannot be imported: {module_name} has no {attr!r}")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, BaseInteraction)):
        raise ValueError(f"class_name {cls_name!r} is not a subclass of verl.interactions.base.BaseInteraction")
    return cls


def default_interaction_name(cls_name: str) -> str:
    """``pkg.mod.Gsm8kInteraction`` -> ``gsm8k``."""
    simple = cls_name.rpartition(".")[2]
    return (simple[: -len("Interaction")] if simple.endswith("Interaction") else simple).lower()


def _load_entries(path: str) -> list[Any]:
    import yaml

    if not path or not os.path.isfile(path):
        raise ValueError(f"interaction config file {path!r} does not exist (set {_KEY} to an existing YAML file)")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ValueError(f"interaction config {path!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("interaction"), list):
        raise ValueError(
            f"interaction config {path!r} must have a top-level key 'interaction' holding a list of "
            "{name, class_name, config} entries"
        )
    return data["interaction"]


def initialize_interactions_from_config(path: str) -> dict[str, BaseInteraction]:
    """Instantiate every interaction in the YAML at ``path``; returns ``{name: interaction}``."""
    interactions: dict[str, BaseInteraction] = {}
    for index, entry in enumerate(_load_entries(path)):
        where = f"interaction config {path!r}, entry {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str):
            raise ValueError(f"{where}: each entry needs a 'class_name' string, got {entry!r}")
        unknown = set(entry) - {"name", "class_name", "config"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed: name, class_name, config")
        cls_name = entry["class_name"]
        name = entry.get("name") or default_interaction_name(cls_name)
        where = f"{where} ({name!r})"
        if name in interactions:
            raise ValueError(f"{where}: Duplicate interaction name {name!r} found; names must be unique")
        try:
            cls = get_interaction_class(cls_name)
        except ValueError as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        config = dict(entry.get("config") or {})
        config["name"] = name
        interactions[name] = cls(config=config)
    return interactions
