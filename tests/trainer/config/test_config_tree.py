"""The one typed config tree: generated files are fresh, defaults live only in the tree, every key is honoured or
refused before Ray, and verl's v0.7 and v0.9 spellings both work.

"Read by code" is decided mechanically from the token stream of every ``.py`` file under ``verl/`` except the tree
modules (comments, docstrings and f-strings do not count): an attribute access ``.leaf`` or a string literal naming
the leaf (``"leaf"``, ``"a.b.leaf"``). Generic leaf names (``enable``, ``path``, ``seed``...) also need their parent's
name in the same file within a few lines.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import tokenize
import typing
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from verl.trainer.config.build import build_trainer_config, key_generation, refusal_problems
from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.trainer.config.render import compat_table, help_text, key_rows, write_or_check
from verl.utils.config import compose_config, plain_container
from verl.utils.config_keys import UNSET, info_of

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "verl"

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


def _build(*overrides: str) -> PPOTrainerConfig:
    return build_trainer_config(compose_config(overrides=[*VALID, *overrides]))


# ---- the tree's node classes and the modules that define them ----------------------------------------------------
def _node_classes() -> set[type]:
    from verl.utils.config import _dataclass_in
    from verl.workers.config import McoreActorConfig, McoreCriticConfig

    seen: set[type] = set()

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            nested = _dataclass_in(hints.get(field.name))
            if nested is not None:
                visit(nested)
                for sub in nested.__subclasses__():
                    visit(sub)

    for root in (PPOTrainerConfig, McoreActorConfig, McoreCriticConfig):
        visit(root)
    return seen


TREE_FILES = {Path(sys.modules[c.__module__].__file__).resolve() for c in _node_classes()} | {
    (PACKAGE / "base_config.py").resolve(),
    (PACKAGE / "utils" / "config_keys.py").resolve(),
    (PACKAGE / "trainer" / "config" / "render.py").resolve(),
}


# ---- generated files --------------------------------------------------------------------------------------------
def test_generated_yaml_and_compat_table_are_fresh():
    stale = write_or_check(write=False)
    assert not stale, f"regenerate with `python -m verl.trainer.config --write`; stale: {stale}"


def test_the_yaml_composes_to_exactly_the_tree():
    plain = plain_container(compose_config(overrides=["actor_rollout_ref.rollout.name=hf"]))
    built = build_trainer_config(plain, check=False)
    yaml_keys = {row.path for row in key_rows()}
    assert len(yaml_keys) > 500
    missing = [path for path in yaml_keys if _lookup(plain, path) is _ABSENT]
    assert not missing, f"keys of the tree not in ppo_trainer.yaml: {missing}"
    assert built.actor_rollout_ref.rollout.response_length == 512  # an interpolation of data.max_response_length


_ABSENT = object()


def _lookup(data, path):
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def test_every_key_has_a_one_line_doc():
    undocumented = [row.path for row in key_rows() if not row.doc]
    assert not undocumented, f"keys without a doc string after the field: {undocumented}"


# ---- one default per key -----------------------------------------------------------------------------------------
def _tree_defaults() -> dict[str, set]:
    defaults: dict[str, set] = defaultdict(set)
    for cls in _node_classes():
        for field in dataclasses.fields(cls):
            info = info_of(field)
            for value in (field.default, info.v07_default, info.v09_default, info.yaml_default):
                if value is not dataclasses.MISSING and value is not UNSET and value is not None:
                    try:
                        defaults[field.name].add(value)
                    except TypeError:  # unhashable (a node instance)
                        pass
    return defaults


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    return _ABSENT


# Parameters named like a tree key whose meaning is not that key's (verl's public signatures).
UNRELATED_PARAMETERS = {
    ("verl/utils/logger/aggregate_logger.py", "rank"): "a process rank, not model.lora.rank",
    ("verl/utils/profiler/performance.py", "rank"): "a process rank, not model.lora.rank",
    ("verl/trainer/ppo/metric_utils.py", "seed"): "the bootstrap's seed, not an fsdp/data seed",
    ("verl/workers/actor/base.py", "calculate_entropy"): "verl's compute_log_prob flag, set per call by the worker",
    ("verl/workers/actor/dp_actor.py", "calculate_entropy"): "verl's compute_log_prob flag, set per call",
    ("verl/trainer/main_eval.py", "strict"): "a row-check flag, not checkpoint.strict",
    ("verl/workers/rollout/generation_backend.py", "dtype"): "the served model's dtype, not rollout.dtype",
    ("verl/single_controller/base/worker_group.py", "n_gpus_per_node"): "a resource pool's size (verl's signature)",
    ("verl/single_controller/ray/base.py", "ray_wait_register_center_timeout"): "verl's RayWorkerGroup signature",
    ("verl/utils/dataset/spd_dataset.py", "prompt_key"): "the SPD builder's CLI default column",
    ("verl/utils/fs.py", "use_shm"): "verl's copy_to_local signature; the trainer passes model.use_shm",
    ("verl/utils/hf_models.py", "trust_remote_code"): "loader flag; every caller passes the model node's value",
    ("verl/utils/model.py", "trust_remote_code"): "loader flag; every caller passes the model node's value",
    ("verl/utils/hf_models.py", "seed"): "value-head init seed; the worker passes fsdp_config.seed",
    ("verl/utils/fsdp_utils.py", "fsdp_size"): "verl's create_device_mesh signature; the worker passes fsdp_size",
    ("verl/utils/torch_functional.py", "truncation"): "verl's tokenize helpers; the dataset passes data.truncation",
    ("verl/utils/torch_functional.py", "min_lr_ratio"): "verl's schedule helpers; the builder passes optim's value",
    ("verl/utils/torch_functional.py", "num_cycles"): "verl's schedule helpers; the builder passes optim's value",
    ("verl/workers/reward_manager/abstract.py", "reward_fn_key"): "verl's reward-manager signature",
    ("verl/workers/reward_manager/naive.py", "reward_fn_key"): "verl's reward-manager signature",
    ("verl/workers/reward_manager/batch.py", "reward_fn_key"): "verl's reward-manager signature",
    ("verl/workers/reward_manager/dapo.py", "reward_fn_key"): "verl's reward-manager signature",
    ("verl/utils/reward_score/sandbox_fusion/utils.py", "memory_limit_mb"): "verl's check_correctness signature",
    ("verl/workers/rollout/logit_capture.py", "temperature"): "sampling of one call, passed by every engine",
    ("verl/workers/rollout/logit_capture.py", "top_k"): "sampling of one call, passed by every engine",
    ("verl/workers/rollout/logit_capture.py", "top_p"): "sampling of one call, passed by every engine",
}


def literal_default_sites() -> list[str]:
    """Places under ``verl/`` (outside the tree) that write a tree key's default as a second literal.

    * a config read with a literal fallback: ``x.get("key", 0.2)``, ``getattr(x, "key", 0.2)``, ``cfg_get(x, "key",
      0.2)`` (in ``verl/trainer`` and ``verl/workers`` any literal fallback of a tree key counts; elsewhere one equal
      to the key's default);
    * a parameter named after a tree key whose default literal equals that key's default (write ``= AlgoConfig.gamma``
      instead), unless listed in ``UNRELATED_PARAMETERS`` with the reason.
    """
    defaults = _tree_defaults()
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in TREE_FILES:
            continue
        rel = path.relative_to(REPO).as_posix()
        strict = rel.startswith(("verl/trainer/", "verl/workers/"))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                args = node.args
                key_arg = fallback = None
                if name == "get" and len(args) == 2:
                    key_arg, fallback = args
                elif name in ("getattr", "cfg_get") and len(args) == 3:
                    key_arg, fallback = args[1], args[2]
                if key_arg is None or not isinstance(key_arg, ast.Constant) or key_arg.value not in defaults:
                    continue
                value = _literal(fallback)
                if value is _ABSENT or value is None:
                    continue
                if strict or any(value == d and type(value) is type(d) for d in defaults[key_arg.value]):
                    sites.append(f"{rel}:{node.lineno}: {name}({key_arg.value!r}, {value!r})")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                positional = a.posonlyargs + a.args
                pairs = list(zip(positional[len(positional) - len(a.defaults) :], a.defaults))
                pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
                for arg, default in pairs:
                    value = _literal(default)
                    if arg.arg not in defaults or value is _ABSENT or value is None:
                        continue
                    if (rel, arg.arg) in UNRELATED_PARAMETERS:
                        continue
                    if any(value == d and type(value) is type(d) for d in defaults[arg.arg]):
                        sites.append(f"{rel}:{node.lineno}: def {node.name}({arg.arg}={value!r})")
    return sites


def test_no_default_is_written_twice():
    sites = literal_default_sites()
    assert not sites, (
        "config defaults written again outside the typed tree (read the typed node, or reference the tree's "
        "default, e.g. `gamma: float = AlgoConfig.gamma`):\n  " + "\n  ".join(sites)
    )


def test_the_default_scan_sees_a_planted_duplicate(tmp_path, monkeypatch):
    planted = PACKAGE / "trainer" / "_planted_duplicate_for_test.py"
    planted.write_text('def f(cfg, clip_ratio=0.2):\n    return cfg.get("kl_loss_coef", 0.001)\n')
    try:
        sites = [s for s in literal_default_sites() if "_planted_duplicate_for_test" in s]
    finally:
        planted.unlink()
    assert len(sites) == 2, sites


def test_unrelated_parameter_entries_still_exist():
    for rel, name in UNRELATED_PARAMETERS:
        source = (REPO / rel).read_text()
        assert re.search(rf"\b{name}\s*(:[^=]+)?=", source), (rel, name)


# ---- every implemented key is read ------------------------------------------------------------------------------
GENERIC = frozenset(
    "enable name path type mode dtype backend tool save_path seed n k ids port file url module source steps shuffle "
    "strategy num_workers nnodes n_gpus_per_node tool_config ranks all_ranks format model_path discrete rank alpha "
    "enabled action".split()
)
NEARBY_LINES = 10
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_LITERAL = re.compile(r"^([rbuRBU]*)(['\"])(.*)\2$", re.S)


@cache
def _reads() -> dict[str, dict[str, list[tuple[int, str | None]]]]:
    reads: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.resolve() in TREE_FILES:
            continue
        rel = path.relative_to(REPO).as_posix()
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for i, tok in enumerate(tokens):
            line = tok.start[0]
            if tok.type == tokenize.NAME and i > 0 and tokens[i - 1].string == ".":
                parent = tokens[i - 2].string if i > 1 and tokens[i - 2].type == tokenize.NAME else None
                reads[tok.string][rel].append((line, parent))
            elif tok.type == tokenize.NAME:
                reads[tok.string][rel].append((line, "<variable>"))
            elif tok.type == tokenize.STRING:
                match = _LITERAL.match(tok.string)
                if not match or "f" in match.group(1).lower() or not _DOTTED.match(match.group(3)):
                    continue
                parts = match.group(3).split(".")
                for j, part in enumerate(parts):
                    reads[part][rel].append((line, parts[j - 1] if j else None))
    return reads


def is_read(key: str) -> bool:
    parts = key.split(".")
    leaf, parent = parts[-1], (parts[-2] if len(parts) > 1 else None)
    sites = {f: [(ln, p) for ln, p in acc if p != "<variable>"] for f, acc in _reads().get(leaf, {}).items()}
    sites = {f: acc for f, acc in sites.items() if acc}
    if leaf not in GENERIC or parent is None:
        return bool(sites)
    for file, accesses in sites.items():
        parent_lines = [ln for ln, _ in _reads().get(parent, {}).get(file, [])]
        for line, seen in accesses:
            if seen == parent or any(line - NEARBY_LINES <= p <= line for p in parent_lines):
                return True
    return False


def test_every_implemented_key_is_read_by_code():
    unread = [row.path for row in key_rows() if row.effect == "implemented" and not is_read(row.path)]
    assert not unread, (
        "keys declared implemented that no code under verl/ reads (implement them, or declare them "
        "effect='inert'/'engine' with the reason, or refuse them):\n  " + "\n  ".join(unread)
    )


def test_the_read_scanner_tells_read_from_unread():
    assert is_read("trainer.total_epochs")
    assert is_read("critic.enable")  # generic leaf next to its parent
    assert not is_read("actor_rollout_ref.rollout.prometheus.port")
    assert not is_read("trainer.no_such_key")


def test_keys_without_effect_say_why():
    for row in key_rows():
        if row.info.effect != "implemented":
            assert len(row.info.reason) > 10, row.path


# ---- refusals ------------------------------------------------------------------------------------------------------
def _refused_rows():
    return [row for row in key_rows() if row.info.refuse is not None and row.context is None]


def _override(key: str, value) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"{key}={value}"


@pytest.mark.parametrize("path", sorted(row.path for row in _refused_rows()))
def test_refused_value_stops_the_build_naming_the_key(path):
    rule = next(row.info.refuse for row in _refused_rows() if row.path == path)
    config = compose_config(overrides=[*VALID, _override(path, rule.bad_example), *rule.example_extra])
    with pytest.raises(ValueError) as info:
        build_trainer_config(config)
    assert path in str(info.value) and "not supported" in str(info.value)


def test_the_default_config_passes_the_refusals():
    assert refusal_problems(compose_config(overrides=VALID)) == []


def test_every_offending_key_is_reported_together():
    config = compose_config(overrides=[*VALID, "actor_rollout_ref.model.use_liger=true", "critic.model.lora_rank=8"])
    problems = "\n".join(refusal_problems(config))
    assert "actor_rollout_ref.model.use_liger=True" in problems
    assert "critic.model.lora_rank=8" in problems


def _run_main_ppo(command: list[str], *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "HYDRA_FULL_ERROR": "1"}
    env.pop("RAY_ADDRESS", None)  # never attach to a cluster that happens to be running
    start = time.monotonic()
    cwd = tempfile.mkdtemp(prefix="config_tree_")  # Hydra's outputs/ folder goes there, not into the checkout
    result = subprocess.run([*command, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - start


MAIN_PPO = [sys.executable, "-m", "verl.trainer.main_ppo"]


def test_main_ppo_names_every_refused_key_at_once_before_ray():
    rows = _refused_rows()
    bad = [_override(row.path, row.info.refuse.bad_example) for row in rows]
    extra = sorted({o for row in rows for o in row.info.refuse.example_extra})
    result, elapsed = _run_main_ppo(MAIN_PPO, *VALID, "trainer.device=cpu", *bad, *extra)
    assert result.returncode != 0
    missing = [row.path for row in rows if f"{row.path}=" not in result.stderr]
    assert not missing, f"not named: {missing}\n{result.stderr[-3000:]}"
    assert "Started a local Ray instance" not in result.stdout + result.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"


def test_main_ppo_refuses_before_ray_or_torch_is_imported():
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['main_ppo', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('verl.trainer.main_ppo', run_name='__main__')\n"
        "finally:\n"
        "    print('IMPORTED', 'ray' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    result, _ = _run_main_ppo([sys.executable, "-c", probe], *VALID, "actor_rollout_ref.model.use_liger=true")
    assert result.returncode != 0
    assert "actor_rollout_ref.model.use_liger" in result.stderr
    assert "IMPORTED False False" in result.stderr, result.stderr[-2000:]


# ---- both generations of keys --------------------------------------------------------------------------------------
def test_v07_keys_keep_v07_defaults():
    cfg = _build()
    assert cfg.__dict__["_generation"] == ("0.7", ())
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is False
    assert cfg.actor_rollout_ref.rollout.max_num_seqs == 1024
    assert cfg.critic.model.use_remove_padding is False


def test_writing_a_v09_key_selects_v09_defaults():
    cfg = _build("trainer.use_v1=false")
    assert cfg.__dict__["_generation"] == ("0.9", ("trainer.use_v1",))
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    assert cfg.actor_rollout_ref.rollout.max_num_seqs == 256
    assert cfg.critic.model.use_remove_padding is True


def test_an_explicit_value_wins_over_the_generation_default():
    cfg = _build("trainer.use_v1=false", "actor_rollout_ref.rollout.calculate_log_probs=false")
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is False


def test_v09_use_v1_true_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"trainer.use_v1=True is not supported.*set trainer.use_v1=false"):
        _build("trainer.use_v1=true")


def test_critic_fsdp_is_the_v08_spelling_of_critic_model_fsdp_config():
    cfg = _build("critic.fsdp.param_offload=true", "critic.fsdp.fsdp_size=2")
    assert cfg.critic.model.fsdp_config.param_offload is True and cfg.critic.model.fsdp_config.fsdp_size == 2
    assert cfg.critic.fsdp is None
    plain = plain_container(compose_config(overrides=["actor_rollout_ref.rollout.name=hf", "critic.fsdp.seed=1"]))
    assert key_generation(plain)[0] == "0.9"


def test_both_spellings_with_different_values_is_an_error_naming_both():
    with pytest.raises(ValueError) as info:
        _build("critic.fsdp.fsdp_size=2", "critic.model.fsdp_config.fsdp_size=4")
    assert "critic.fsdp.fsdp_size=2" in str(info.value) and "critic.model.fsdp_config.fsdp_size=4" in str(info.value)
    cfg = _build("critic.fsdp.fsdp_size=2", "critic.model.fsdp_config.fsdp_size=2")  # the same value is fine
    assert cfg.critic.model.fsdp_config.fsdp_size == 2


@pytest.mark.parametrize(
    "override, named",
    [
        ("distillation.enabled=true", "on-policy distillation is not implemented"),
        ("skip.rollout.enable=true", "replaying dumped generations is not implemented"),
        ("actor_rollout_ref.rollout.disaggregation.enabled=true", "disaggregation is not implemented"),
        ("critic.model.lora.rank=8", "LoRA on the critic is not implemented"),
        ("actor_rollout_ref.model.lora.type=dora", "only plain LoRA adapters are implemented"),
        ("actor_rollout_ref.rollout.multi_turn.function_tool_path=/t.py", "function tools are not implemented"),
        ("actor_rollout_ref.actor.policy_loss.dro_beta=0.1", "dro policy loss is not implemented"),
    ],
)
def test_v09_features_we_do_not_have_are_refused_with_the_reason(override, named):
    with pytest.raises(ValueError, match=named):
        _build(override)


def test_v09_sample_grpo_command_builds_with_local_paths():
    # reference/verl_v09_keys.md section 7 (its keys, local paths, one node of 2 CPU ranks, use_v1=false)
    overrides = [
        "algorithm.adv_estimator=grpo",
        "data.train_files=/data/train.parquet",
        "data.val_files=/data/test.parquet",
        "data.train_batch_size=512",
        "data.max_prompt_length=1024",
        "data.max_response_length=1024",
        "data.filter_overlong_prompts=True",
        "data.truncation=error",
        "algorithm.use_kl_in_reward=False",
        "actor_rollout_ref.model.path=/models/tiny",
        "actor_rollout_ref.model.use_remove_padding=True",
        "actor_rollout_ref.model.enable_gradient_checkpointing=True",
        "actor_rollout_ref.actor.optim.lr=1e-6",
        "actor_rollout_ref.actor.ppo_mini_batch_size=256",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.actor.fsdp_config.param_offload=False",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=3000",
        "actor_rollout_ref.actor.use_dynamic_bsz=True",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.6",
        "actor_rollout_ref.rollout.enable_chunked_prefill=False",
        "actor_rollout_ref.rollout.enforce_eager=False",
        "actor_rollout_ref.rollout.free_cache_engine=True",
        "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=4096",
        "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=4096",
        "actor_rollout_ref.rollout.n=5",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.fsdp_config.param_offload=True",
        "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True",
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=8192",
        "trainer.critic_warmup=0",
        "trainer.logger=[console]",
        "trainer.project_name=verl_grpo_example_geo3k",
        "trainer.experiment_name=glm41v_9b_function_rm",
        "trainer.n_gpus_per_node=2",
        "trainer.nnodes=1",
        "trainer.save_freq=20",
        "trainer.test_freq=5",
        "trainer.total_epochs=15",
        "trainer.use_v1=false",
    ]
    cfg = build_trainer_config(compose_config(overrides=overrides))
    assert cfg.__dict__["_generation"][0] == "0.9"
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True  # v0.9's default
    assert cfg.actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes == 4096


# ---- --help --------------------------------------------------------------------------------------------------------
def test_help_prints_the_typed_tree_with_docs_and_status():
    result, _ = _run_main_ppo(MAIN_PPO, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for row in list(key_rows())[::25]:
        assert f"{row.path} = " in out, row.path
    assert "Upper clip epsilon" in out  # a field's doc
    assert "refused unless false: activation offloading is not implemented" in out  # a status
    assert "false (v0.7 keys) / true (v0.9 keys)" in out  # calculate_log_probs shows both generations


def test_help_with_a_prefix_shows_only_that_subtree():
    text = help_text("algorithm.kl_ctrl")
    keys = [line.split(" = ")[0] for line in text.splitlines() if " = " in line and not line.startswith(" ")]
    assert keys == [
        "algorithm.kl_ctrl.type",
        "algorithm.kl_ctrl.kl_coef",
        "algorithm.kl_ctrl.horizon",
        "algorithm.kl_ctrl.target_kl",
    ]


def test_compat_table_lists_every_key():
    table = compat_table()
    missing = [row.path for row in key_rows() if f"| `{row.path}` |" not in table]
    assert not missing, missing
    docs = (REPO / "docs" / "compat.md").read_text()
    assert table in docs
