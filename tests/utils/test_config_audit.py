"""verl.utils.config_audit: every key of ppo_trainer.yaml is read by code, refused before Ray, or listed with a reason.

How "read" is decided (mechanically, from the token stream of every ``.py`` file under ``verl/`` except the typed
config definitions ``verl/workers/config/*.py``, ``verl/trainer/config/*.py``, ``verl/base_config.py`` and the audit
module itself; comments and docstrings are not tokens of this kind, f-strings are skipped, so error messages do
not count):

* an attribute access ``.leaf``, or a plain string literal equal to ``leaf`` (covers ``["leaf"]``, ``get("leaf")``,
  ``getattr(x, "leaf")``), or a component of a dotted-path literal such as ``"reward.sandbox_fusion.url"``
  (``OmegaConf.select`` paths);
* for generic leaf names (:data:`GENERIC`: ``enable``, ``path``, ``name``, ``seed``...) that is not enough: the
  pair ``parent.leaf`` must occur (attribute chain or dotted-path literal), or the parent's name must occur in the
  same file at most :data:`NEARBY_LINES` lines before the leaf, as an access or as a variable named after the node
  (the node fetched, then its leaf read: ``fsdp_config = ...; fsdp_config.get("seed")``), or
  the key is in ``READ_THROUGH_NODE`` naming a file where the leaf is accessed.

A key passes when it is read, or listed in one of the audit tables.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
import tokenize
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from verl.utils import config_audit
from verl.utils.config import compose_config, validate_config

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "verl"
EXCLUDED_FILES = ("verl/base_config.py", "verl/utils/config_audit.py")
EXCLUDED_DIRS = ("verl/workers/config/", "verl/trainer/config/")
# Leaf names too common to prove anything on their own (``.dtype`` is a tensor attribute, ``"name"`` is everywhere).
GENERIC = frozenset(
    "enable name path type mode dtype backend tool save_path seed n k ids port file url module source steps shuffle "
    "strategy num_workers nnodes n_gpus_per_node tool_config ranks all_ranks format model_path discrete".split()
)
NEARBY_LINES = 10
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LITERAL = re.compile(r"^([rbuRBU]*)(['\"])(.*)\2$", re.S)
_VARIABLE = "<variable>"


# ---- the scanner ---------------------------------------------------------------------------------------------------
def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf (scalars, lists and empty mappings) of an unresolved config."""
    keys = []
    for key in node.keys():
        path = f"{prefix}.{key}" if prefix else str(key)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and len(child) > 0 and not OmegaConf.is_interpolation(node, key):
            keys.extend(leaf_keys(child, path))
        else:
            keys.append(path)
    return keys


def _accessed_names(source: str) -> list[tuple[str, int, str | None]]:
    """``(name, line, parent or None)`` for every attribute access and plain string literal naming a key."""
    found = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        line = tok.start[0]
        if tok.type == tokenize.NAME and i > 0 and tokens[i - 1].string == ".":
            parent = tokens[i - 2].string if i > 1 and tokens[i - 2].type == tokenize.NAME else None
            found.append((tok.string, line, parent))
        elif tok.type == tokenize.NAME:
            found.append((tok.string, line, _VARIABLE))  # a variable named after a node: counts as a parent only
        elif tok.type == tokenize.STRING:
            match = _LITERAL.match(tok.string)
            if not match or "f" in match.group(1).lower() or not _DOTTED.match(match.group(3)):
                continue
            parts = match.group(3).split(".")
            found.extend((part, line, parts[j - 1] if j else None) for j, part in enumerate(parts))
    return found


@cache
def scan() -> dict[str, dict[str, list[tuple[int, str | None]]]]:
    """``{leaf name: {file: [(line, parent), ...]}}`` over the package, minus the config definitions."""
    reads: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in EXCLUDED_FILES or rel.startswith(EXCLUDED_DIRS):
            continue
        for name, line, parent in _accessed_names(path.read_text()):
            reads[name][rel].append((line, parent))
    return reads


def is_read(key: str) -> bool:
    parts = key.split(".")
    leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else None)
    sites = {
        file: [(line, seen) for line, seen in accesses if seen != _VARIABLE]
        for file, accesses in scan().get(leaf, {}).items()
    }
    sites = {file: accesses for file, accesses in sites.items() if accesses}
    if leaf not in GENERIC or parent is None:
        return bool(sites)
    parent_sites = scan().get(parent, {})
    for file, accesses in sites.items():
        parent_lines = [line for line, _ in parent_sites.get(file, [])]
        for line, seen_parent in accesses:
            if seen_parent == parent or any(line - NEARBY_LINES <= p <= line for p in parent_lines):
                return True
    return False


@cache
def default_keys() -> tuple[str, ...]:
    return tuple(leaf_keys(compose_config(overrides=[])))


# ---- the walk ------------------------------------------------------------------------------------------------------
def test_the_walk_sees_the_whole_tree():
    keys = default_keys()
    assert len(keys) > 400, len(keys)
    assert "actor_rollout_ref.actor.checkpoint.async_save" in keys
    assert "actor_rollout_ref.model.override_config" in keys  # an empty mapping is a leaf


def test_every_key_is_read_or_audited():
    unaccounted = [key for key in default_keys() if not is_read(key) and config_audit.audit_entry(key) is None]
    assert not unaccounted, (
        f"{len(unaccounted)} config key(s) are neither read by code under verl/ nor listed in "
        "verl/utils/config_audit.py (implement them, or refuse them in REFUSED_KEYS, or say why in another table):\n  "
        + "\n  ".join(unaccounted)
    )


def test_the_scanner_tells_read_from_unread():
    assert is_read("trainer.total_epochs")
    assert is_read("reward.sandbox_fusion.url")  # a dotted-path literal
    assert is_read("critic.enable")  # generic leaf: config.critic.get("enable")
    assert not is_read("actor_rollout_ref.rollout.prometheus.port")  # generic leaf, parent nowhere near
    assert not is_read("trainer.no_such_key")


def test_every_audit_entry_names_a_real_key():
    keys = default_keys()
    tables = {
        **dict.fromkeys(config_audit.REFUSED_KEYS, "REFUSED_KEYS"),
        **dict.fromkeys(config_audit.ENGINE_KEYS, "ENGINE_KEYS"),
        **dict.fromkeys(config_audit.NOT_READ_BY_CODE, "NOT_READ_BY_CODE"),
        **dict.fromkeys(config_audit.IMPLEMENTED_ELSEWHERE_PENDING, "IMPLEMENTED_ELSEWHERE_PENDING"),
        **dict.fromkeys(config_audit.READ_THROUGH_NODE, "READ_THROUGH_NODE"),
    }
    import fnmatch

    stale = [f"{table}: {pattern}" for pattern, table in tables.items() if not fnmatch.filter(keys, pattern)]
    assert not stale, "audit entries that match no key of ppo_trainer.yaml (typo, or the key was removed):\n  " + (
        "\n  ".join(stale)
    )


def test_read_through_node_entries_point_at_a_reader():
    for key, file in config_audit.READ_THROUGH_NODE.items():
        assert key.rsplit(".", 1)[-1] in scan() and file in scan()[key.rsplit(".", 1)[-1]], (key, file)


def test_refused_keys_are_not_also_excused_elsewhere():
    for key in config_audit.REFUSED_KEYS:
        assert config_audit.audit_entry(key)[0] == "REFUSED_KEYS", key


def test_the_default_config_passes_the_refusals():
    assert config_audit.refused_key_problems(compose_config(overrides=[])) == []


# ---- refusals ------------------------------------------------------------------------------------------------------
VALID = [
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.model.path=/models/tiny",
    "algorithm.adv_estimator=grpo",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
    "critic.ppo_micro_batch_size_per_gpu=2",
    "trainer.n_gpus_per_node=2",
]


def _override(key: str, value) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"{key}={value}"


@pytest.mark.parametrize("key", sorted(config_audit.REFUSED_KEYS))
def test_validate_config_refuses_the_key(key):
    rule = config_audit.REFUSED_KEYS[key]
    config = compose_config(overrides=[*VALID, _override(key, rule.bad_example), *rule.example_extra])
    with pytest.raises(ValueError) as info:
        validate_config(config, use_reference_policy=True, use_critic=True)
    assert key in str(info.value)
    assert "not supported" in str(info.value)


def test_allowed_values_pass_the_refusals():
    config = compose_config(
        overrides=[
            *VALID,
            "actor_rollout_ref.model.lora_rank=0",
            "algorithm.kl_penalty=low_var_kl+",
            "actor_rollout_ref.actor.kl_loss_type=k3",
            "actor_rollout_ref.actor.optim.clip_grad=0.5",  # legacy path: verl ignores it too
            "trainer.use_legacy_worker_impl=enable",
        ]
    )
    assert config_audit.refused_key_problems(config) == []


def test_every_offending_key_is_reported_together():
    config = compose_config(
        overrides=[*VALID, "actor_rollout_ref.model.use_liger=true", "actor_rollout_ref.model.lora_rank=8"]
    )
    with pytest.raises(ValueError) as info:
        config_audit.check_refused_keys(config)
    assert "actor_rollout_ref.model.use_liger=True" in str(info.value)
    assert "actor_rollout_ref.model.lora_rank=8" in str(info.value)


def _run_main_ppo(command: list[str], *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "1"}
    env.pop("RAY_ADDRESS", None)  # never attach to a cluster that happens to be running
    start = time.monotonic()
    result = subprocess.run([*command, *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - start


MAIN_PPO = [sys.executable, "-m", "verl.trainer.main_ppo"]
ISSUE_REFUSALS = [  # the refusals issue 9 names, plus one of the ignored keys it lists
    ("actor_rollout_ref.model.lora_rank", "8"),
    ("algorithm.kl_penalty", "full"),
    ("actor_rollout_ref.actor.kl_loss_type", "full"),
    ("actor_rollout_ref.model.use_liger", "true"),
]


@pytest.mark.parametrize(("key", "value"), ISSUE_REFUSALS)
def test_main_ppo_refuses_the_key_before_ray_starts(key, value):
    """The real entry point: non-zero exit in under 10 s with the key in stderr, and no Ray instance."""
    result, elapsed = _run_main_ppo(MAIN_PPO, *VALID, "trainer.device=cpu", f"{key}={value}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert key in result.stderr, output[-2000:]
    assert "Started a local Ray instance" not in output
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_main_ppo_names_every_refused_key_at_once():
    bad = [_override(key, rule.bad_example) for key, rule in config_audit.REFUSED_KEYS.items()]
    extra = sorted({o for rule in config_audit.REFUSED_KEYS.values() for o in rule.example_extra})
    result, elapsed = _run_main_ppo(MAIN_PPO, *VALID, "trainer.device=cpu", *bad, *extra)
    assert result.returncode != 0
    missing = [key for key in config_audit.REFUSED_KEYS if f"{key}=" not in result.stderr]
    assert not missing, f"not named: {missing}\n{result.stderr[-3000:]}"
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_main_ppo_refuses_before_ray_or_torch_is_imported():
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['main_ppo', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('verl.trainer.main_ppo', run_name='__main__')\n"
        "finally:\n"
        "    print('IMPORTED', 'ray' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    result, _ = _run_main_ppo([sys.executable, "-c", probe], *VALID, "actor_rollout_ref.model.lora_rank=8")
    assert result.returncode != 0
    assert "actor_rollout_ref.model.lora_rank" in result.stderr
    assert "IMPORTED False False" in result.stderr, result.stderr[-2000:]


# ---- multi-modal rows ----------------------------------------------------------------------------------------------
def test_rows_with_images_are_refused_naming_column_and_file(tmp_path):
    import pandas as pd

    from verl.utils.dataset.rl_dataset import RLHFDataset

    rows = [
        {"prompt": [{"role": "user", "content": "hi"}], "images": [], "data_source": "x"},
        {"prompt": [{"role": "user", "content": "see"}], "images": [{"bytes": b"\x89PNG"}], "data_source": "x"},
    ]
    path = tmp_path / "mm.parquet"
    pd.DataFrame(rows).to_parquet(path)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 16})
    with pytest.raises(ValueError) as info:
        RLHFDataset(str(path), tokenizer=None, config=config)
    assert "images" in str(info.value) and "mm.parquet" in str(info.value)


def test_empty_multi_modal_columns_are_fine(tmp_path):
    import pandas as pd

    from verl.utils.dataset.rl_dataset import RLHFDataset

    rows = [{"prompt": [{"role": "user", "content": "hi"}], "images": [], "videos": None, "data_source": "x"}]
    path = tmp_path / "text.parquet"
    pd.DataFrame(rows).to_parquet(path)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 16})
    assert len(RLHFDataset(str(path), tokenizer=None, config=config)) == 1


def test_main_ppo_refuses_multi_modal_rows_before_ray_starts(tiny_model_dir, tmp_path):
    import pandas as pd

    rows = [
        {
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
            "videos": [{"video": "clip.mp4"}] if i == 3 else [],
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)},
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "video.parquet")
    overrides = [
        *VALID,
        "trainer.device=cpu",
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        f"data.train_files={tmp_path}/video.parquet",
        f"data.val_files={tmp_path}/video.parquet",
    ]
    result, _ = _run_main_ppo(MAIN_PPO, *overrides)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "'videos'" in result.stderr and "video.parquet" in result.stderr, output[-2000:]
    assert "Started a local Ray instance" not in output


def test_compat_md_lists_every_refused_and_engine_key():
    text = (REPO / "docs" / "compat.md").read_text()
    missing = [key for key in [*config_audit.REFUSED_KEYS, *config_audit.ENGINE_KEYS] if f"`{key}`" not in text]
    assert not missing, f"docs/compat.md does not list: {missing}"
