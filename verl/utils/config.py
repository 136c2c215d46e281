"""Config plumbing: compose the packaged Hydra config, turn nodes into typed dataclasses, validate a run's config.

* :func:`compose_config` builds the same ``DictConfig`` that ``python -m verl.trainer.main_ppo k=v ...`` sees
  (struct mode: a misspelt key fails and names the key; ``+key=value`` adds), for tests and tools.
* :func:`omega_conf_to_dataclass` builds a ``BaseConfig`` subclass from a node, following ``_target_`` (also on
  nested nodes). Keys the dataclass does not declare are errors, except those a class lists in ``_ignored_keys``.
* :func:`validate_config` checks the batch-size arithmetic and the choices a run depends on, before any worker
  starts, and raises ``ValueError`` naming the key(s), the value(s) and a fix.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import sys
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from verl.utils.batch_sizes import check_log_prob_batch, check_mini_fits_train_batch, check_training_batch

__all__ = [
    "KNOWN_ADV_ESTIMATORS",
    "GROUP_ADV_ESTIMATORS",
    "compose_config",
    "get_config_dir",
    "omega_conf_to_dataclass",
    "validate_config",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Names of core_algos.AdvantageEstimator (kept literal so validating a config does not import the maths).
KNOWN_ADV_ESTIMATORS = (
    "gae",
    "grpo",
    "reinforce_plus_plus",
    "reinforce_plus_plus_baseline",
    "remax",
    "rloo",
    "opo",
    "grpo_passk",
    "gpg",
    "rloo_vectorized",
    "grpo_vectorized",
    "optimal_token_baseline",
    "tir_optimal_token_baseline",
    "gdpo",
)
# Estimators whose baseline comes from the other responses to the same prompt: they need rollout.n > 1.
GROUP_ADV_ESTIMATORS = (
    "grpo",
    "grpo_vectorized",
    "grpo_passk",
    "rloo",
    "rloo_vectorized",
    "reinforce_plus_plus_baseline",
    "opo",
    "gpg",
    "gdpo",
)


# ---- composing --------------------------------------------------------------------------------------------------
def get_config_dir() -> str:
    """Absolute path of the packaged config folder (``verl/trainer/config``)."""
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
    data = _to_plain_dict(config, path)
    if dataclass_type is None:
        target = data.get("_target_")
        if not target:
            where = path or "the config node"
            raise ValueError(f"{where} has no _target_; pass dataclass_type= to omega_conf_to_dataclass")
        dataclass_type = _import_target(target, path)
    return _build(dataclass_type, data, path)


def _node_path(config: Any) -> str:
    if isinstance(config, DictConfig):
        try:
            return str(config._get_full_key(None) or "")
        except Exception:  # a detached node has no key; the path only decorates error messages
            return ""
    return ""


def _to_plain_dict(config: Any, path: str) -> dict[str, Any]:
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


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    if not dataclasses.is_dataclass(cls):
        return cls(**{k: v for k, v in data.items() if k != "_target_"})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    ignored = getattr(cls, "_ignored_keys", frozenset())
    unknown = [k for k in data if k not in names and k not in ignored]
    if unknown:
        shown = ", ".join(_join(path, k) for k in unknown)
        valid = ", ".join(n for n in names if n != "_target_")
        raise ValueError(
            f"unknown config key(s) {shown} for {cls.__name__}; check the spelling (valid keys: {valid}) "
            "or remove the key"
        )
    hints = _hints(cls)
    kwargs = {k: _convert(hints.get(k, Any), v, _join(path, k)) for k, v in data.items() if k in names}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:
    if isinstance(value, dict):
        target = value.get("_target_")
        if target:
            return _build(_import_target(target, path), value, path)
        nested = _dataclass_in(tp)
        return _build(nested, value, path) if nested is not None else value
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


# ---- validation -------------------------------------------------------------------------------------------------
_CHOICES = {
    "trainer.device": ("cuda", "npu", "cpu"),
    "trainer.use_legacy_worker_impl": ("auto", "enable", "disable"),
    "trainer.resume_mode": ("auto", "disable", "resume_path"),
    "data.truncation": ("error", "left", "right", "middle"),
}


def validate_config(
    config: DictConfig,
    use_reference_policy: bool,
    use_critic: bool,
    n_ranks: int | None = None,
) -> None:
    """Check a composed trainer config before any worker, model or dataset is created.

    Args:
        config: the full trainer config (``ppo_trainer.yaml`` plus overrides).
        use_reference_policy: a reference policy will run (KL loss or in-reward KL).
        use_critic: a critic will run (GAE, or ``critic.enable``).
        n_ranks: training ranks; defaults to ``trainer.n_gpus_per_node * trainer.nnodes``.

    Raises:
        ValueError: naming the offending key(s), their values and how to fix them.
    """
    from verl.trainer.config import AlgoConfig
    from verl.utils.config_audit import check_refused_keys
    from verl.workers.config import FSDPActorConfig, FSDPCriticConfig, HFModelConfig, RolloutConfig
    from verl.workers.config.actor import McoreActorConfig
    from verl.workers.config.critic import McoreCriticConfig

    check_refused_keys(config)  # keys we do not implement come first, each with its fix (config_audit.py)
    rollout_node = config.actor_rollout_ref.rollout
    _check_choices(config)
    n_ranks = _resolve_ranks(config, n_ranks)
    megatron = config.actor_rollout_ref.actor.strategy == "megatron"
    actor = _typed(config.actor_rollout_ref.actor, McoreActorConfig if megatron else FSDPActorConfig)
    rollout = _typed(rollout_node, RolloutConfig)
    algo = _typed(config.algorithm, AlgoConfig)
    _typed(config.actor_rollout_ref.model, HFModelConfig)
    _check_adv_estimator(algo.adv_estimator, rollout.n)

    train_bsz = int(config.data.train_batch_size)
    if train_bsz < 1:
        raise ValueError(f"data.train_batch_size={train_bsz} must be >= 1 (prompts per step)")
    dp = _data_parallel_size(actor, n_ranks, "actor_rollout_ref.actor")
    step_ranks = dp if megatron else n_ranks
    if (train_bsz * rollout.n) % step_ranks:
        raise ValueError(
            f"data.train_batch_size * actor_rollout_ref.rollout.n = {train_bsz} * {rollout.n} = "
            f"{train_bsz * rollout.n} sequences cannot be split evenly over {step_ranks} ranks "
            f"(trainer.n_gpus_per_node * trainer.nnodes); choose a train_batch_size or n whose product is a "
            f"multiple of {step_ranks}"
        )
    _check_mini_batch("actor_rollout_ref.actor", actor, train_bsz, rollout.n, dp)
    _check_log_prob_micro("actor_rollout_ref.rollout", rollout_node, dp)
    if use_reference_policy:
        _check_log_prob_micro("actor_rollout_ref.ref", config.actor_rollout_ref.ref, dp)
    if use_critic:
        critic_megatron = config.critic.strategy == "megatron"
        critic = _typed(config.critic, McoreCriticConfig if critic_megatron else FSDPCriticConfig)
        critic_dp = _data_parallel_size(critic, n_ranks, "critic")
        _check_mini_batch("critic", critic, train_bsz, rollout.n, critic_dp)
    if algo.use_kl_in_reward and actor.use_kl_loss:
        logger.warning(
            "both algorithm.use_kl_in_reward and actor_rollout_ref.actor.use_kl_loss are on: the KL to the reference "
            "policy is penalised twice (in the reward and in the loss)"
        )
    _check_algorithm_inputs(config)


def _check_algorithm_inputs(config: DictConfig) -> None:
    """Features that need an input the run would otherwise not produce: refuse now instead of silently skipping."""
    algo, actor = config.algorithm, config.actor_rollout_ref.actor
    rollout = config.actor_rollout_ref.rollout
    corr = algo.get("rollout_correction") or {}
    wants_corr = corr.get("bypass_mode") or corr.get("rollout_is") or corr.get("rollout_rs")
    if wants_corr and not rollout.get("calculate_log_probs", False):
        raise ValueError(
            "algorithm.rollout_correction (rollout_is / rollout_rs / bypass_mode) compares the rollout's log-probs "
            "with the trainer's, but actor_rollout_ref.rollout.calculate_log_probs=False; set it to True"
        )
    if algo.adv_estimator in ("optimal_token_baseline", "tir_optimal_token_baseline"):
        if not actor.get("calculate_sum_pi_squared", False):
            raise ValueError(
                f"algorithm.adv_estimator={algo.adv_estimator} needs sum_v pi(v)^2 from the old-log-prob pass; set "
                "actor_rollout_ref.actor.calculate_sum_pi_squared=True"
            )
        if corr.get("bypass_mode"):
            raise ValueError(
                f"algorithm.adv_estimator={algo.adv_estimator} needs the old-log-prob pass, which "
                "algorithm.rollout_correction.bypass_mode=True skips; turn one of them off"
            )
    if algo.adv_estimator == "gdpo" and not algo.get("gdpo_reward_keys"):
        raise ValueError(
            "algorithm.adv_estimator=gdpo needs algorithm.gdpo_reward_keys (the reward function's per-sample score "
            "names, e.g. [accuracy, format])"
        )
    if algo.get("use_pf_ppo", False) and algo.adv_estimator != "gae":
        raise ValueError(
            f"algorithm.use_pf_ppo=True resamples only in the GAE branch (as in verl), but adv_estimator="
            f"{algo.adv_estimator}; use adv_estimator=gae or set algorithm.use_pf_ppo=False"
        )
    groups = algo.get("filter_groups") or {}
    if groups.get("enable", False):
        if not groups.get("metric"):
            raise ValueError(
                "algorithm.filter_groups.enable=True needs algorithm.filter_groups.metric (seq_reward, "
                "seq_final_reward, or a column the reward function returns such as acc)"
            )
        if groups.metric == "seq_final_reward" and algo.use_kl_in_reward:
            raise ValueError(
                "algorithm.filter_groups.metric=seq_final_reward with algorithm.use_kl_in_reward=True is not supported "
                "(groups are filtered before the KL penalty is computed); use metric=seq_reward"
            )


def _check_choices(config: DictConfig) -> None:
    """The mandatory engine name is set and the enumerated trainer/data keys hold known values."""
    if OmegaConf.is_missing(config.actor_rollout_ref.rollout, "name"):
        raise ValueError(
            "actor_rollout_ref.rollout.name is unset (???); pass actor_rollout_ref.rollout.name=hf (CPU), vllm or sglang"
        )
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(config, key)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not valid; choose one of {', '.join(allowed)}")


def _check_log_prob_micro(prefix: str, node: DictConfig, dp: int) -> None:
    """A log-prob pass (rollout recompute or reference) has exactly one micro-batch size, unless dynamic."""
    check_log_prob_batch(prefix, node, dp)


def _typed(node: DictConfig, default_type: type) -> Any:
    """Typed view of a node: its own ``_target_`` if it has one, else ``default_type``."""
    return omega_conf_to_dataclass(node, None if node.get("_target_") else default_type)


def _resolve_ranks(config: DictConfig, n_ranks: int | None) -> int:
    if n_ranks is None:
        per_node = int(OmegaConf.select(config, "trainer.n_gpus_per_node", default=1))
        nnodes = int(OmegaConf.select(config, "trainer.nnodes", default=1))
        if per_node < 1 or nnodes < 1:
            raise ValueError(
                f"trainer.n_gpus_per_node={per_node} and trainer.nnodes={nnodes} must both be >= 1 "
                "(on CPU, n_gpus_per_node is the number of training processes)"
            )
        n_ranks = per_node * nnodes
    if n_ranks < 1:
        raise ValueError(f"n_ranks={n_ranks} must be >= 1")
    return n_ranks


def _data_parallel_size(worker: Any, n_ranks: int, prefix: str) -> int:
    """Ranks that hold distinct data: world / sequence-parallel (FSDP) or world / (tp * pp * cp) (Megatron)."""
    megatron = getattr(worker, "megatron", None)
    if megatron is not None:
        keys = ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size")
        split = 1
        for key in keys:
            split *= getattr(megatron, key)
        what = f"{prefix}.megatron tp * pp * cp"
    else:
        split = getattr(worker, "ulysses_sequence_parallel_size", 1)
        what = f"{prefix}.ulysses_sequence_parallel_size"
    if n_ranks % split:
        raise ValueError(
            f"{what} = {split} does not divide the {n_ranks} training ranks (trainer.n_gpus_per_node * "
            f"trainer.nnodes); choose a value that divides {n_ranks}"
        )
    return n_ranks // split


def _check_mini_batch(prefix: str, worker: Any, train_bsz: int, n: int, dp: int) -> None:
    """ppo_mini_batch_size (prompts) fits the train batch, splits over dp ranks and over micro batches."""
    check_mini_fits_train_batch(prefix, worker.ppo_mini_batch_size, train_bsz)
    check_training_batch(prefix, worker, n, dp)


def _check_adv_estimator(name: str, n: int) -> None:
    known = set(KNOWN_ADV_ESTIMATORS)
    # Estimators a user registered at run time live in core_algos' registry; consult it only if already loaded.
    core_algos = sys.modules.get("verl.trainer.ppo.core_algos")
    known |= set(getattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {}) or {})
    if name not in known:
        raise ValueError(
            f"algorithm.adv_estimator={name!r} is not a known advantage estimator; choose one of "
            f"{', '.join(sorted(known))} (or register yours with core_algos.register_adv_est before validating)"
        )
    if name in GROUP_ADV_ESTIMATORS and n < 2:
        warnings.warn(
            f"algorithm.adv_estimator={name} compares the responses to the same prompt, but "
            f"actor_rollout_ref.rollout.n={n}: each group holds one response, so there is no group baseline; set "
            "actor_rollout_ref.rollout.n >= 2",
            UserWarning,
            stacklevel=3,
        )
