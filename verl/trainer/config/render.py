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
# verl.workers.megatron_workers trains the actor, reference and critic with tensor parallelism (docs/megatron.md).

defaults:
  - ppo_trainer
  - _self_
"""

# Keys of the reference's Megatron layout that are its own rather than the actor's.
_REF_OWN = {"use_distributed_optimizer": False, "use_dist_checkpointing": False, "dist_checkpointing_path": None}
_REF_OWN_FIELDS = (
    "param_offload",
    "grad_offload",
    "optimizer_offload",
    "override_ddp_config",
    "override_mcore_model_config",
)


def _megatron_node(indent: str, follow: str | None = None) -> list[str]:
    from verl.workers.config.engine import McoreEngineConfig

    lines = [f"{indent}_target_: {_public_path(McoreEngineConfig)}"]
    for field in dataclasses.fields(McoreEngineConfig):
        if field.name == "_target_":
            continue
        value = _default_value(field)
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


_GENERATION_HEADER = """\
# GENERATED by `python -m verl.trainer.config --write` from verl/trainer/config/generation.py; do not edit by hand.
# `python -m verl.trainer.main_generation_server`: generate responses for a parquet of chat prompts with standalone
# rollout replicas (OpenAI-compatible servers), then optionally score them. verl's ppo_trainer keys (the ones it
# reads: data.train_files/prompt_key/apply_chat_template_kwargs, actor_rollout_ref.model.path,
# actor_rollout_ref.rollout.{name, n, temperature, top_p, top_k, do_sample, response_length, load_format, parallel
# sizes, engine settings}, trainer.{nnodes, n_gpus_per_node, device}, ray_kwargs) plus data.output_path and the
# `generation` block. replicas = trainer.n_gpus_per_node * trainer.nnodes / (tp * dp * pp).
defaults:
  - ppo_trainer
  - _self_
"""


def generation_server_yaml() -> str:
    """``generation_server.yaml``: the generation server's additions to ppo_trainer.yaml."""
    from verl.trainer.config.generation import GenerationConfig, GenerationDataConfig, GenerationServerConfig

    output = next(f for f in dataclasses.fields(GenerationDataConfig) if f.name == "output_path")
    lines = [_GENERATION_HEADER, "data:", *_comment(field_docs(GenerationDataConfig)["output_path"], "  ")]
    lines.append(f"  output_path: {yaml_scalar(output.default)}")
    lines += ["", "actor_rollout_ref:", "  rollout:"]
    for name, (value, why) in GenerationServerConfig.ROLLOUT_OVERLAY.items():
        lines += [*_comment(why, "    "), f"    {name}: {yaml_scalar(value)}"]
    lines += ["", "generation:", *_node_lines(GenerationConfig(), "  ")]
    return "\n".join(lines) + "\n"


_GROUP_HEADER = """\
# GENERATED by `python -m verl.trainer.config --write`; do not edit by hand. One node of the trainer's tree on its
# own ({cls}), in verl's config-group layout: compose it with Hydra from this folder and build it with
# verl.utils.config.omega_conf_to_dataclass. Keys that follow another node of the full tree fall back to defaults.
"""


def node_yaml(cls: type) -> str:
    """A config-group file holding one node (``actor/dp_actor.yaml``, ``critic/dp_critic.yaml`` ...)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a default Megatron layout announces that TP=1 turns sequence_parallel off
        node = cls()
    return _GROUP_HEADER.format(cls=cls.__name__) + "\n".join(_node_lines(node, "")) + "\n"


def _group_files(config_dir: Path) -> dict[Path, str]:
    from verl.workers.config import ActorConfig, CriticConfig, FSDPCriticConfig, McoreActorConfig, McoreCriticConfig
    from verl.workers.config.actor import FSDPActorConfig

    groups = {
        "actor": {"actor": ActorConfig, "dp_actor": FSDPActorConfig, "megatron_actor": McoreActorConfig},
        "critic": {"critic": CriticConfig, "dp_critic": FSDPCriticConfig, "megatron_critic": McoreCriticConfig},
    }
    return {
        config_dir / group / f"{name}.yaml": node_yaml(cls)
        for group, files in groups.items()
        for name, cls in files.items()
    }


# ---- --help and the compatibility table ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyRow:
    """One key as ``--help`` and the compatibility table show it."""

    path: str
    owner: type
    field: dataclasses.Field
    value: Any
    context: KeyInfo | None = None  # the enclosing node's info when that node is a v0.9 block or a newer spelling
    context_path: str = ""

    @property
    def info(self) -> KeyInfo:
        return info_of(self.field)

    @property
    def doc(self) -> str:
        return field_docs(self.owner).get(self.field.name, "")

    @property
    def generation(self) -> str:
        info = self.context if self.context is not None and self.context.since else self.info
        if info.ours:
            return "ours"
        return f"v{info.since}+" if info.since else "v0.7, v0.9"

    @property
    def _inherits(self) -> bool:
        # A plain leaf of a node that has no effect of its own (data.datagen.path) shows the node's status.
        info, context = self.info, self.context
        return (
            context is not None and context.effect != "implemented" and info.effect == "implemented" and not info.refuse
        )

    @property
    def effect(self) -> str:
        """What our code does with the key: implemented, engine, inert, or alias (a newer spelling)."""
        if self.context is not None and self.context.alias_of:
            return "alias"
        return self.context.effect if self._inherits else self.info.effect

    @property
    def status(self) -> str:
        if self.context is not None and self.context.alias_of:
            parent = self.context_path.rpartition(".")[0]
            older = f"{parent + '.' if parent else ''}{self.context.alias_of}"
            return f"v0.8+ spelling of {older}{self.path[len(self.context_path) :]}"
        return status_text(self.context if self._inherits else self.info)

    @property
    def default(self) -> str:
        if self.context is not None and self.context.alias_of:
            return "null (unset: the older key's value)"
        if self.context is not None and self.context.since and not self.info.v09_only:
            return f"null (unset: {_default_text(self.info, self.field, self.value)})"
        return _default_text(self.info, self.field, self.value)


def key_rows(cls: type = PPOTrainerConfig, node: Any = None, prefix: str = "", context=None, context_path=""):
    """Every key of the tree in declaration order (v0.9 blocks and newer spellings expanded), as :class:`KeyRow`."""
    node = cls() if node is None and not prefix and context is None else node
    for field in dataclasses.fields(cls):
        info = info_of(field)
        if field.name == "_target_" or not field.init or not info.in_yaml:
            continue
        path = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(node, field.name) if node is not None else None
        if value is None and dataclasses.is_dataclass(info.yaml_default):
            value = info.yaml_default
        nested = _node_type(cls, field)
        if nested is not None and dataclasses.is_dataclass(value):
            inert = context is None and info.effect != "implemented"
            yield from key_rows(type(value), value, path, info if inert else context, path if inert else context_path)
        elif nested is not None and (info.v09_only or info.alias_of):
            yield from key_rows(nested, None, path, info, path)
        else:
            yield KeyRow(path, cls, field, value, context, context_path)


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
    if value is None and info.yaml_default is not UNSET:
        value = info.yaml_default
    if value is None:
        value = _default_value(field)
    try:
        return yaml_scalar(value)
    except TypeError:
        return json.dumps(value)


def status_text(info: KeyInfo) -> str:
    """What our code does with a key, in a few words."""
    if info.refuse is not None and info.effect != "implemented":
        return f"refused unless {info.refuse.allowed}: {info.refuse.fix}"
    if info.refuse is not None:
        return f"implemented; refused unless {info.refuse.allowed}: {info.refuse.fix}"
    if info.effect == "engine":
        return f"engine only (vLLM/SGLang): {info.reason}"
    if info.effect == "inert":
        return f"accepted, no effect: {info.reason}"
    return "implemented"


def _help_rows(tree: type):
    """The tree's keys, then the Megatron nodes that ppo_megatron_trainer.yaml adds (``*.megatron.*``)."""
    from verl.workers.config.engine import McoreEngineConfig

    yield from key_rows(tree)
    if tree is PPOTrainerConfig:
        for path in ("actor_rollout_ref.actor.megatron", "actor_rollout_ref.ref.megatron", "critic.megatron"):
            yield from key_rows(McoreEngineConfig, McoreEngineConfig(), path)


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
    shown = 0
    for row in _help_rows(tree):
        if prefix and not (row.path == prefix or row.path.startswith(prefix + ".")):
            continue
        tp = _hints(row.owner).get(row.field.name, Any)
        type_name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        lines.append(f"{row.path} = {row.default}   [{type_name}; {row.generation}]")
        for text in (row.doc, "" if row.status == "implemented" else row.status):
            lines.extend(textwrap.wrap(text, 112, initial_indent="    ", subsequent_indent="    "))
        shown += 1
    if prefix and not shown:
        lines.append(f"no key starts with {prefix!r}")
    return "\n".join(lines) + "\n"


COMPAT_BEGIN = "<!-- BEGIN GENERATED KEY TABLE: python -m verl.trainer.config --write -->"
COMPAT_END = "<!-- END GENERATED KEY TABLE -->"


def _summary_kind(status: str) -> str:
    for start, kind in (
        ("implemented", "implemented"),
        ("refused", "refused"),
        ("engine", "read by vLLM/SGLang only"),
        ("accepted", "accepted without effect"),
        ("v0.8+ spelling", "newer spellings of other keys"),
    ):
        if status.startswith(start):
            return kind
    raise ValueError(f"unclassified key status {status!r}")


def compat_table(tree: type = PPOTrainerConfig) -> str:
    """Markdown: every key we accept, refuse or map, with its generation and default (for docs/compat.md)."""
    counts: dict[str, int] = {}
    rows = []
    for row in key_rows(tree):
        kind = _summary_kind(row.status)
        counts[kind] = counts.get(kind, 0) + 1
        cell = row.status.replace("|", "\\|")
        default = row.default.replace("|", "\\|")
        rows.append(f"| `{row.path}` | {row.generation} | `{default}` | {cell} |")
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
        config_dir / "generation_server.yaml": generation_server_yaml(),
        **_group_files(config_dir),
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
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return stale
