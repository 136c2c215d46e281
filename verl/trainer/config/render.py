"""Everything generated from the typed tree: the Hydra YAML files, ``--help`` and the compatibility table.

``python -m verl.trainer.config --write`` rewrites ``ppo_trainer.yaml``, ``ppo_megatron_trainer.yaml`` and the key
table of ``docs/compat.md``; ``--check`` exits non-zero when any of them is stale (the test suite runs it).
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
import typing
from pathlib import Path
from typing import Any

from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.utils.config_keys import UNSET, KeyInfo, field_docs, info_of

__all__ = ["compat_table", "help_text", "megatron_yaml", "trainer_yaml", "write_or_check"]

_PLAIN = re.compile(r"^[A-Za-z_./~][A-Za-z0-9_./~+-]*$")
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}
_WIDTH = 116
# Where verl's users import the config classes from (the `_target_` written into the YAML).
_PUBLIC_PACKAGES = ("verl.workers.config", "verl.trainer.config", "verl.utils.profiler")


# ---- values ------------------------------------------------------------------------------------------------------
def yaml_scalar(value: Any) -> str:
    """One YAML scalar (or flow list/dict of scalars) as Hydra reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if value == "???" or (_PLAIN.match(value) and value.lower() not in _YAML_WORDS and not _numeric(value)):
            return value
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if isinstance(value, dict) and not value:
        return "{}"
    raise TypeError(f"not a flow value: {value!r}")


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _public_path(cls: type) -> str:
    """``verl.workers.config.FSDPActorConfig`` rather than the defining module, when the package exports it."""
    import importlib

    parts = cls.__module__.split(".")
    candidates = [*(".".join(parts[:cut]) for cut in range(1, len(parts))), *_PUBLIC_PACKAGES]
    for name in candidates:
        module = importlib.import_module(name)
        if getattr(module, cls.__name__, None) is cls and cls.__name__ in getattr(module, "__all__", ()):
            return f"{module.__name__}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _node_type(owner: type, field: dataclasses.Field) -> type | None:
    from verl.utils.config import _dataclass_in

    return _dataclass_in(_hints(owner).get(field.name, Any))


def _default_value(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def _follows_text(info: KeyInfo, default: Any) -> str:
    target = info.follows or ""
    if "${" in target:
        return target
    if target.startswith("."):
        return "${" + target + "}"
    # Inside an interpolation a string default is safest double-quoted (paths hold "~" and "/").
    shown = json.dumps(default) if isinstance(default, str) else yaml_scalar(default)
    return "${oc.select:" + target + "," + shown + "}"


# ---- the YAML ----------------------------------------------------------------------------------------------------
def _comment(doc: str, indent: str) -> list[str]:
    if not doc:
        return []
    width = max(_WIDTH - len(indent) - 2, 40)
    return [f"{indent}# {line}" for line in textwrap.wrap(doc, width)]


def _null_node(cls: type, indent: str) -> list[str]:
    """Every leaf of ``cls`` as null: a node of keys the user may write (v0.9 keys, v0.8 spellings)."""
    lines = []
    for field in dataclasses.fields(cls):
        if field.name == "_target_" or not info_of(field).in_yaml:
            continue
        nested = _node_type(cls, field)
        if nested is not None:
            lines.append(f"{indent}{field.name}:")
            lines.extend(_null_node(nested, indent + "  "))
        else:
            lines.append(f"{indent}{field.name}: null")
    return lines


def _mapping(value: dict, indent: str) -> list[str]:
    lines = []
    for name, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{indent}{name}:")
            lines.extend(_mapping(item, indent + "  "))
        else:
            lines.append(f"{indent}{name}: {yaml_scalar(item)}")
    return lines


def _node_lines(node: Any, indent: str, comments: bool = True) -> list[str]:
    cls = type(node)
    docs = field_docs(cls)
    lines = []
    if cls._emit_target:
        lines.append(f"{indent}_target_: {_public_path(cls)}")
    for field in dataclasses.fields(cls):
        info = info_of(field)
        if field.name == "_target_" or not info.in_yaml:
            continue
        if comments:
            lines.extend(_comment(docs.get(field.name, ""), indent))
        value = getattr(node, field.name)
        nested = _node_type(cls, field)
        if info.mandatory:
            lines.append(f"{indent}{field.name}: ???")
        elif info.v09_only or info.per_generation:
            if nested is not None:
                lines.append(f"{indent}{field.name}:")
                lines.extend(_null_node(nested, indent + "  "))
            else:
                lines.append(f"{indent}{field.name}: null")
        elif info.follows:
            lines.append(f"{indent}{field.name}: {_follows_text(info, _default_value(field))}")
        elif info.yaml_default is not UNSET and not dataclasses.is_dataclass(info.yaml_default):
            lines.append(f"{indent}{field.name}: {yaml_scalar(info.yaml_default)}")
        elif info.yaml_default is not UNSET:
            lines.append(f"{indent}{field.name}:")
            lines.extend(_node_lines(info.yaml_default, indent + "  ", comments))
        elif dataclasses.is_dataclass(value):
            lines.append(f"{indent}{field.name}:")
            lines.extend(_node_lines(value, indent + "  ", comments))
        elif isinstance(value, dict) and value:
            lines.append(f"{indent}{field.name}:")
            lines.extend(_mapping(value, indent + "  "))
        else:
            lines.append(f"{indent}{field.name}: {yaml_scalar(value)}")
    return lines


_HEADER = """\
# GENERATED from the typed config tree (verl/trainer/config/ppo_trainer.py and the node classes it holds) by
# `python -m verl.trainer.config --write`; do not edit by hand (tests/trainer/config/test_config_tree.py fails when
# this file is stale). `python -m verl.trainer.main_ppo --help` shows the same keys with their status.
#
# Composed with Hydra in struct mode: `key=value` may only set keys that exist below (a misspelt key fails and
# names the key); `+key=value` adds a key (dataclass-only keys such as +reward_model.reward_kwargs.*).
# null on a verl v0.8/v0.9 key means "not written"; writing any of them selects v0.9's defaults for the keys whose
# default changed (rollout.calculate_log_probs, rollout.max_num_seqs, critic.model.use_remove_padding).
"""


def trainer_yaml(tree: type = PPOTrainerConfig) -> str:
    """The full ``ppo_trainer.yaml`` of ``tree``."""
    root = tree()
    docs = field_docs(tree)
    parts = [_HEADER]
    for field in dataclasses.fields(tree):
        if field.name == "_target_":
            continue
        parts.append("")
        parts.append("# " + "-" * (_WIDTH - 2))
        parts.extend(_comment(docs.get(field.name, ""), ""))
        parts.append(f"{field.name}:")
        parts.extend(_node_lines(getattr(root, field.name), "  "))
    return "\n".join(parts) + "\n"


_MEGATRON_HEADER = """\
# GENERATED by `python -m verl.trainer.config --write`; do not edit by hand.
# PPO / GRPO with Megatron-core workers: ppo_trainer.yaml with the actor, reference and critic switched to the
# megatron strategy and their parallel layout under `megatron` (the reference follows the actor's layout).
#   python -m verl.trainer.main_ppo --config-name=ppo_megatron_trainer actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2 ...
# The Megatron workers are not implemented yet: the megatron strategy is refused before Ray starts.

defaults:
  - ppo_trainer
  - _self_
"""

# Keys of the reference's Megatron layout that are its own rather than the actor's.
_REF_OWN = {"use_distributed_optimizer": False, "use_dist_checkpointing": False, "dist_checkpointing_path": None}
_REF_OWN_FIELDS = ("param_offload", "grad_offload", "optimizer_offload", "override_ddp_config", "override_mcore_model_config")


def _megatron_node(indent: str, follow: str | None = None) -> list[str]:
    from verl.workers.config.engine import McoreEngineConfig

    node = McoreEngineConfig()
    lines = [f"{indent}_target_: {_public_path(McoreEngineConfig)}"]
    for field in dataclasses.fields(McoreEngineConfig):
        if field.name == "_target_":
            continue
        value = getattr(node, field.name)
        if follow and field.name in _REF_OWN:
            value = _REF_OWN[field.name]
        elif follow and field.name not in _REF_OWN_FIELDS:
            text = "${oc.select:" + f"{follow}.{field.name}," + yaml_scalar(value) + "}"
            lines.append(f"{indent}{field.name}: {text}")
            continue
        lines.append(f"{indent}{field.name}: {yaml_scalar(value)}")
    return lines


def megatron_yaml() -> str:
    """``ppo_megatron_trainer.yaml``: an overlay of ppo_trainer.yaml for the Megatron classes."""
    from verl.workers.config.actor import McoreActorConfig
    from verl.workers.config.critic import McoreCriticConfig

    lines = [_MEGATRON_HEADER, "actor_rollout_ref:", "  actor:"]
    lines += [f"    _target_: {_public_path(McoreActorConfig)}", "    strategy: megatron", "    load_weight: true"]
    lines += ["    megatron:", *_megatron_node("      ")]
    lines += ["  ref:", "    load_weight: true", "    megatron:"]
    lines += _megatron_node("      ", follow="actor_rollout_ref.actor.megatron")
    lines += ["", "critic:", f"  _target_: {_public_path(McoreCriticConfig)}", "  strategy: megatron"]
    lines += ["  load_weight: true", "  megatron:", *_megatron_node("    ")]
    return "\n".join(lines) + "\n"


# ---- --help and the compatibility table ----------------------------------------------------------------------------
def _leaves(cls: type, node: Any, prefix: str = ""):
    """``(path, owner, field, value)`` of every key, in declaration order, null nodes of v0.9 keys expanded."""
    for field in dataclasses.fields(cls):
        if field.name == "_target_" or not field.init:
            continue
        path = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(node, field.name) if node is not None else None
        nested = _node_type(cls, field)
        info = info_of(field)
        if value is None and dataclasses.is_dataclass(info.yaml_default):
            value = info.yaml_default
        if nested is not None and (dataclasses.is_dataclass(value) or value is None):
            if value is None and not (info.v09_only or info.per_generation):
                yield path, cls, field, value
                continue
            yield from _leaves(type(value) if value is not None else nested, value, path)
            continue
        yield path, cls, field, value


def _default_text(info: KeyInfo, field: dataclasses.Field, value: Any) -> str:
    if info.mandatory:
        return "??? (required)"
    if info.per_generation:
        return f"{yaml_scalar(info.v07_default)} (v0.7 keys) / {yaml_scalar(info.v09_default)} (v0.9 keys)"
    if info.v09_only:
        unwritten = info.unwritten_value("0.9")
        return f"null (unset: {yaml_scalar(unwritten)})" if unwritten is not None else "null"
    if info.follows:
        return _follows_text(info, _default_value(field))
    try:
        return yaml_scalar(value)
    except TypeError:
        return json.dumps(value)


def status_text(info: KeyInfo) -> str:
    """What our code does with a key, in a few words."""
    if info.alias_of:
        return f"v0.8+ spelling of {info.alias_of}"
    if info.refuse is not None and info.effect != "implemented":
        return f"refused unless {info.refuse.allowed}: {info.refuse.fix}"
    if info.refuse is not None:
        return f"implemented; refused unless {info.refuse.allowed}: {info.refuse.fix}"
    if info.effect == "engine":
        return f"engine only (vLLM/SGLang): {info.reason}"
    if info.effect == "inert":
        return f"accepted, no effect: {info.reason}"
    return "implemented"


def _generation_text(info: KeyInfo) -> str:
    if info.ours:
        return "ours"
    if info.since:
        return f"v{info.since}+"
    return "v0.7, v0.9"


def help_text(prefix: str = "", tree: type = PPOTrainerConfig) -> str:
    """The typed tree with docs, defaults and status, for ``python -m verl.trainer.main_ppo --help [prefix]``."""
    lines = [
        "usage: python -m verl.trainer.main_ppo [key=value ...] [+new.key=value ...]",
        "       python -m verl.trainer.main_ppo --help [key.prefix]   (this text, or the keys under a prefix)",
        "       python -m verl.trainer.main_ppo --hydra-help          (Hydra's own options: --cfg job, -m, ...)",
        "",
        "Keys of verl's v0.7 and v0.9 generations are both accepted. A run that writes any v0.9-only key gets v0.9's",
        "defaults where they changed (shown as 'v0.7 keys / v0.9 keys'). Status: implemented, refused (any value",
        "but the allowed one stops the run before Ray starts), engine only (read by vLLM/SGLang), or no effect.",
        "",
    ]
    root = tree()
    shown = 0
    for path, owner, field, value in _leaves(tree, root):
        if prefix and not (path == prefix or path.startswith(prefix + ".")):
            continue
        info = info_of(field)
        doc = field_docs(owner).get(field.name, "")
        tp = _hints(owner).get(field.name, Any)
        type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"{path} = {_default_text(info, field, value)}   [{type_name}; {_generation_text(info)}]")
        for text in (doc, status_text(info) if status_text(info) != "implemented" else ""):
            lines.extend(textwrap.wrap(text, 112, initial_indent="    ", subsequent_indent="    "))
        shown += 1
    if prefix and not shown:
        lines.append(f"no key starts with {prefix!r}")
    return "\n".join(lines) + "\n"


COMPAT_BEGIN = "<!-- BEGIN GENERATED KEY TABLE: python -m verl.trainer.config --write -->"
COMPAT_END = "<!-- END GENERATED KEY TABLE -->"


def compat_table(tree: type = PPOTrainerConfig) -> str:
    """Markdown: every key we accept, refuse or map, with its generation and default (for docs/compat.md)."""
    counts: dict[str, int] = {}
    rows = []
    for path, _owner, field, value in _leaves(tree, tree()):
        info = info_of(field)
        status = status_text(info)
        kind = status.split(":")[0].split(" ")[0].rstrip(";")
        counts[kind] = counts.get(kind, 0) + 1
        cell = status.replace("|", "\\|")
        default = _default_text(info, field, value).replace("|", "\\|")
        rows.append(f"| `{path}` | {_generation_text(info)} | `{default}` | {cell} |")
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    head = [
        COMPAT_BEGIN,
        "",
        f"{len(rows)} keys ({summary}). Generated from the typed tree; `python -m verl.trainer.main_ppo --help` "
        "shows the same with each key's doc.",
        "",
        "| key | generation | default | here |",
        "|---|---|---|---|",
    ]
    return "\n".join([*head, *rows, "", COMPAT_END])


# ---- writing / checking ------------------------------------------------------------------------------------------
def _targets() -> dict[Path, str]:
    config_dir = Path(__file__).resolve().parent
    return {
        config_dir / "ppo_trainer.yaml": trainer_yaml(),
        config_dir / "ppo_megatron_trainer.yaml": megatron_yaml(),
    }


def _compat_path() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "compat.md"


def _with_table(text: str) -> str:
    table = compat_table()
    if COMPAT_BEGIN in text and COMPAT_END in text:
        before = text[: text.index(COMPAT_BEGIN)]
        after = text[text.index(COMPAT_END) + len(COMPAT_END) :]
        return before + table + after
    return text.rstrip("\n") + "\n\n## Every config key\n\n" + table + "\n"


def write_or_check(write: bool) -> list[str]:
    """Rewrite (``write``) or compare the generated files; returns the stale ones."""
    stale = []
    outputs = dict(_targets())
    compat = _compat_path()
    if compat.exists():
        outputs[compat] = _with_table(compat.read_text())
    for path, text in outputs.items():
        if not path.exists() or path.read_text() != text:
            stale.append(str(path))
            if write:
                path.write_text(text)
    return stale
