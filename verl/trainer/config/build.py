"""From the composed Hydra config to the validated, typed tree, once, before Ray starts.

:func:`build_trainer_config` runs these steps on the plain (resolved) config and raises one ``ValueError`` per
problem class, each naming the key(s), the value(s) and a fix:

1. **refusals**: every key declared with a ``Refuse`` rule holding a value we do not implement (all of them at once);
2. **generation**: which verl generation the user wrote: v0.9 if any key verl v0.7.1 did not have is set (the
   ``since`` keys are null in the YAML until written); keys whose default changed take that generation's default;
3. **types**: the typed tree is built (unknown keys, wrong types and each node's own checks fail naming the key);
   v0.8/v0.9 spellings of v0.7 keys (``critic.fsdp.*`` -> ``critic.model.fsdp_config.*``) are copied onto the v0.7
   key on the way (``verl.utils.config.build_dataclass``), both given with different values is an error naming both;
4. **cross-key checks** (:func:`check_trainer_config`): batch-size arithmetic over the ranks, the estimator, inputs
   a feature needs.

Nothing mutates the tree afterwards: facts decided at run time (per-rank batch sizes, the run's length) are
arguments of the workers, not config writes.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import sys
import typing
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from verl.trainer.config.algorithm import parse_rollout_rs
from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.utils.batch_sizes import check_log_prob_batch, check_mini_fits_train_batch, check_training_batch
from verl.utils.config import build_dataclass, plain_container
from verl.utils.config_keys import KeyInfo, info_of

__all__ = [
    "GROUP_ADV_ESTIMATORS",
    "KNOWN_ADV_ESTIMATORS",
    "build_trainer_config",
    "check_trainer_config",
    "key_generation",
    "need_critic",
    "need_reference_policy",
    "need_reward_model",
    "refusal_problems",
    "validate_config",
]

logger = logging.getLogger(__name__)

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


# ---- walking the plain config along the tree's classes ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Site:
    path: str
    owner: type
    field: dataclasses.Field
    info: KeyInfo
    value: Any
    present: bool


def _node_class(declared: type, data: Mapping) -> type:
    """The class a node builds: its ``_target_`` when it names a subclass, else the declared class."""
    target = data.get("_target_") if isinstance(data, Mapping) else None
    if target:
        from verl.utils.config import _import_target

        return _import_target(target, "")
    return declared


def _dataclass_of(tp: Any) -> type | None:
    from verl.utils.config import _dataclass_in

    return _dataclass_in(tp)


def visit(cls: type, data: Mapping | None, path: str = "") -> Iterator[_Site]:
    """Every declared leaf and node under ``cls``, with the value the plain ``data`` gives it (if any)."""
    data = data if isinstance(data, Mapping) else {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name == "_target_" or not field.init:
            continue
        here = f"{path}.{field.name}" if path else field.name
        present = field.name in data
        value = data.get(field.name)
        yield _Site(here, cls, field, info_of(field), value, present)
        nested = _dataclass_of(hints.get(field.name, Any))
        if nested is not None and isinstance(value, Mapping):
            yield from visit(_node_class(nested, value), value, here)


def _written(value: Any) -> bool:
    """A since-key (or node of them) counts as written when any of its leaves is not null."""
    if isinstance(value, Mapping):
        return any(_written(v) for k, v in value.items() if k != "_target_")
    return value is not None


def key_generation(data: Mapping, tree: type = PPOTrainerConfig) -> tuple[str, list[str]]:
    """``("0.9", keys)`` when the user wrote keys verl v0.7.1 did not have, else ``("0.7", [])``."""
    written = [s.path for s in visit(tree, data) if s.info.v09_only and s.present and _written(s.value)]
    return ("0.9" if written else "0.7"), written


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def refusal_problems(config: Any, tree: type = PPOTrainerConfig) -> list[str]:
    """One message per key set to a value we do not implement (empty when the config is fine)."""
    data = config if isinstance(config, dict) else plain_container(config)
    problems = []
    for site in visit(tree, data):
        rule = site.info.refuse
        if rule is None or not site.present or rule.ok(site.value):
            continue
        if rule.applies is not None and not rule.applies(data):
            continue
        problems.append(f"{site.path}={site.value!r} is not supported (allowed: {rule.allowed}): {rule.fix}")
    return problems


def check_refused_keys(config: Any, tree: type = PPOTrainerConfig) -> None:
    """Stop a run that sets keys we do not implement (all of them in one ``ValueError``, each with its fix)."""
    problems = refusal_problems(config, tree)
    if problems:
        raise ValueError("unsupported config value(s), refused before starting:\n  " + "\n  ".join(problems))


def _get(data: dict, path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _set(data: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _resolve_generation_defaults(data: dict, tree: type, generation: str) -> None:
    for site in list(visit(tree, data)):
        if site.info.per_generation and site.present and site.value is None:
            _set(data, site.path, site.info.unwritten_value(generation))


# ---- the pipeline ------------------------------------------------------------------------------------------------
def build_trainer_config(
    config: Any,
    tree: type = PPOTrainerConfig,
    device: str | None = None,
    n_ranks: int | None = None,
    check: bool = True,
) -> PPOTrainerConfig:
    """The validated typed tree of a composed config (a ``DictConfig``, a plain mapping or an already built tree).

    Args:
        config: the composed trainer config.
        tree: the root class (``PPOTrainerConfig`` or a recipe's subclass).
        device: when given, ``trainer.device`` of the result (``cpu`` on a machine without CUDA).
        n_ranks: training ranks for the batch-size checks (default: trainer.n_gpus_per_node * nnodes).
        check: run the cross-key checks (:func:`check_trainer_config`) with the roles the config implies.

    Returns:
        The tree; ``tree.generation`` tells which verl generation's defaults were applied.

    Raises:
        ValueError: naming the key(s), value(s) and the fix (see the module docstring for the order of checks).
    """
    if isinstance(config, tree):
        if check:
            check_trainer_config(config, n_ranks=n_ranks)
        return config
    data = copy.deepcopy(config) if isinstance(config, dict) else plain_container(config)
    check_refused_keys(data, tree)
    _check_reference_follows_megatron_actor(data)
    generation, written = key_generation(data, tree)
    _resolve_generation_defaults(data, tree, generation)
    if device is not None:
        data.setdefault("trainer", {})["device"] = device
    typed = build_dataclass(tree, data)
    object.__setattr__(typed, "_generation", (generation, tuple(written)))
    if check:
        check_trainer_config(typed, n_ranks=n_ranks)
    return typed


def describe_generation(cfg: PPOTrainerConfig) -> str:
    """One line saying which generation's defaults the run uses and why."""
    generation, written = cfg.__dict__.get("_generation", ("0.7", ()))
    if generation == "0.9":
        shown = ", ".join(written[:3]) + (" ..." if len(written) > 3 else "")
        return f"verl v0.9 keys written ({shown}): v0.9 defaults apply (e.g. rollout.calculate_log_probs=true)"
    return "verl v0.7 keys only: v0.7 defaults apply (write any v0.9 key, e.g. trainer.use_v1=false, for v0.9's)"


# ---- which roles a run needs -------------------------------------------------------------------------------------
def need_reference_policy(config: Any) -> bool:
    """A frozen reference policy is needed for the KL term, in the reward or in the loss."""
    return bool(config.algorithm.use_kl_in_reward or config.actor_rollout_ref.actor.use_kl_loss)


def need_reward_model(config: Any) -> bool:
    """``reward_model.enable``: a model-based reward scores the responses."""
    return bool(config.reward_model.enable)


def need_critic(config: Any) -> bool:
    """``critic.enable`` wins when set; otherwise a critic runs only for GAE."""
    if config.critic.enable is not None:
        return bool(config.critic.enable)
    return config.algorithm.adv_estimator == "gae"


# ---- cross-key checks --------------------------------------------------------------------------------------------
def check_trainer_config(
    cfg: PPOTrainerConfig,
    use_reference_policy: bool | None = None,
    use_critic: bool | None = None,
    n_ranks: int | None = None,
) -> None:
    """Checks between keys of a built tree: sizes over the ranks, the estimator, inputs a feature needs."""
    use_reference_policy = need_reference_policy(cfg) if use_reference_policy is None else use_reference_policy
    use_critic = need_critic(cfg) if use_critic is None else use_critic
    arr, trainer = cfg.actor_rollout_ref, cfg.trainer
    if n_ranks is None:
        if trainer.n_gpus_per_node < 1 or trainer.nnodes < 1:
            raise ValueError(
                f"trainer.n_gpus_per_node={trainer.n_gpus_per_node} and trainer.nnodes={trainer.nnodes} must both "
                "be >= 1 (on CPU, n_gpus_per_node is the number of training processes)"
            )
        n_ranks = trainer.n_gpus_per_node * trainer.nnodes
    if n_ranks < 1:
        raise ValueError(f"n_ranks={n_ranks} must be >= 1")
    _check_adv_estimator(cfg.algorithm.adv_estimator, arr.rollout.n)
    train_bsz = cfg.data.train_batch_size
    if train_bsz < 1:
        raise ValueError(f"data.train_batch_size={train_bsz} must be >= 1 (prompts per step)")
    dp = _data_parallel_size(arr.actor, n_ranks, "actor_rollout_ref.actor")
    step_ranks = n_ranks  # generation is split over every rank (the Megatron actor's data-parallel size divides it)
    n = arr.rollout.n
    if (train_bsz * n) % step_ranks:
        raise ValueError(
            f"data.train_batch_size * actor_rollout_ref.rollout.n = {train_bsz} * {n} = {train_bsz * n} sequences "
            f"cannot be split evenly over {step_ranks} ranks (trainer.n_gpus_per_node * trainer.nnodes); choose a "
            f"train_batch_size or n whose product is a multiple of {step_ranks}"
        )
    _check_rollout_parallelism(arr.rollout, n_ranks)
    if arr.model.lora_rank > 0 and getattr(arr.actor, "megatron", None) is not None:
        raise ValueError(
            f"actor_rollout_ref.model.lora_rank={arr.model.lora_rank} with the Megatron workers: LoRA runs on the FSDP "
            "workers (actor_rollout_ref.actor.strategy=fsdp or fsdp2, --config-name ppo_trainer); set lora_rank=0 "
            "for Megatron"
        )
    check_mini_fits_train_batch("actor_rollout_ref.actor", arr.actor.ppo_mini_batch_size, train_bsz)
    check_training_batch("actor_rollout_ref.actor", arr.actor, n, dp)
    check_log_prob_batch("actor_rollout_ref.rollout", arr.rollout, dp)
    if use_reference_policy:
        check_log_prob_batch("actor_rollout_ref.ref", arr.ref, dp)
        _check_ref_sequence_parallel(arr)
    if use_critic:
        _check_shared_megatron_groups(arr.actor, cfg.critic)
        critic_dp = _data_parallel_size(cfg.critic, n_ranks, "critic")
        check_mini_fits_train_batch("critic", cfg.critic.ppo_mini_batch_size, train_bsz)
        check_training_batch("critic", cfg.critic, n, critic_dp)
    if cfg.algorithm.use_kl_in_reward and arr.actor.use_kl_loss:
        logger.warning(
            "both algorithm.use_kl_in_reward and actor_rollout_ref.actor.use_kl_loss are on: the KL to the reference "
            "policy is penalised twice (in the reward and in the loss)"
        )
    _check_algorithm_inputs(cfg)


# ``actor_rollout_ref.ref.megatron`` keys the Megatron reference takes from the actor (it is built in the actor's
# worker, on the actor's process groups); verl's yaml interpolates them from the actor's node.
_REF_FOLLOWS_ACTOR = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "context_parallel_size",
    "expert_model_parallel_size",
    "dtype",
    "seed",
    "override_transformer_config",
)
_REF_MUST_BE_OFF = ("param_offload", "grad_offload", "optimizer_offload", "use_dist_checkpointing", "use_mbridge")


def _check_reference_follows_megatron_actor(data: dict) -> None:
    """The Megatron reference runs with the actor's layout: a ref.megatron value that differs, or a feature the
    workers do not implement, is refused instead of being dropped."""
    arr = data.get("actor_rollout_ref") or {}
    actor, ref = arr.get("actor") or {}, arr.get("ref") or {}
    if actor.get("strategy") != "megatron":
        return
    actor_layout, ref_layout = actor.get("megatron") or {}, ref.get("megatron") or {}
    for name in _REF_FOLLOWS_ACTOR:
        if name in ref_layout and name in actor_layout and ref_layout[name] != actor_layout[name]:
            raise ValueError(
                f"actor_rollout_ref.ref.megatron.{name}={ref_layout[name]!r} differs from the actor's "
                f"({actor_layout[name]!r}); the Megatron reference is built with the actor's layout: remove the "
                "override (or set the actor's)"
            )
    for name in _REF_MUST_BE_OFF:
        if ref_layout.get(name):
            raise ValueError(
                f"actor_rollout_ref.ref.megatron.{name}={ref_layout[name]!r} is not implemented in the Megatron "
                "workers; set false"
            )
    if ref.get("load_weight") is False:
        raise ValueError(
            "actor_rollout_ref.ref.load_weight=false: the reference must start from the HF weights (a randomly "
            "initialised reference makes the KL term meaningless); set true"
        )


def _check_shared_megatron_groups(actor: Any, critic: Any) -> None:
    """A Megatron actor and a Megatron critic run in the same process per rank and share megatron-core's groups."""
    actor_layout, critic_layout = getattr(actor, "megatron", None), getattr(critic, "megatron", None)
    if actor_layout is None or critic_layout is None:
        return
    for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size"):
        if getattr(actor_layout, name) != getattr(critic_layout, name):
            raise ValueError(
                f"critic.megatron.{name}={getattr(critic_layout, name)} differs from "
                f"actor_rollout_ref.actor.megatron.{name}={getattr(actor_layout, name)}; the colocated workers share "
                f"megatron-core's process groups: set critic.megatron.{name}={getattr(actor_layout, name)}"
            )


def _check_algorithm_inputs(cfg: PPOTrainerConfig) -> None:
    """Features that need an input the run would otherwise not produce: refuse now instead of silently skipping."""
    algo, actor, rollout = cfg.algorithm, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    corr = algo.rollout_correction
    bypass = corr is not None and corr.bypass_mode
    wants_corr = corr is not None and (corr.bypass_mode or corr.rollout_is or corr.rollout_rs)
    if corr is not None and corr.rollout_rs:
        parse_rollout_rs(corr.rollout_rs, corr.rollout_rs_threshold, corr.rollout_rs_threshold_lower)
    if wants_corr and not rollout.calculate_log_probs:
        raise ValueError(
            "algorithm.rollout_correction (rollout_is / rollout_rs / bypass_mode) compares the rollout's log-probs "
            "with the trainer's, but actor_rollout_ref.rollout.calculate_log_probs=False; set it to True"
        )
    if algo.adv_estimator in ("optimal_token_baseline", "tir_optimal_token_baseline"):
        if not actor.calculate_sum_pi_squared:
            raise ValueError(
                f"algorithm.adv_estimator={algo.adv_estimator} needs sum_v pi(v)^2 from the old-log-prob pass; set "
                "actor_rollout_ref.actor.calculate_sum_pi_squared=True"
            )
        if bypass:
            raise ValueError(
                f"algorithm.adv_estimator={algo.adv_estimator} needs the old-log-prob pass, which "
                "algorithm.rollout_correction.bypass_mode=True skips; turn one of them off"
            )
    if algo.adv_estimator == "gdpo" and not algo.gdpo_reward_keys:
        raise ValueError(
            "algorithm.adv_estimator=gdpo needs algorithm.gdpo_reward_keys (the reward function's per-sample score "
            "names, e.g. [accuracy, format])"
        )
    if algo.use_pf_ppo and algo.adv_estimator != "gae":
        raise ValueError(
            f"algorithm.use_pf_ppo=True resamples only in the GAE branch (as in verl), but adv_estimator="
            f"{algo.adv_estimator}; use adv_estimator=gae or set algorithm.use_pf_ppo=False"
        )
    groups = algo.filter_groups
    if groups is not None and groups.enable:
        if not groups.metric:
            raise ValueError(
                "algorithm.filter_groups.enable=True needs algorithm.filter_groups.metric (seq_reward, "
                "seq_final_reward, or a column the reward function returns such as acc)"
            )
        if groups.metric == "seq_final_reward" and algo.use_kl_in_reward:
            raise ValueError(
                "algorithm.filter_groups.metric=seq_final_reward with algorithm.use_kl_in_reward=True is not supported "
                "(groups are filtered before the KL penalty is computed); use metric=seq_reward"
            )


def _check_rollout_parallelism(rollout: Any, n_ranks: int) -> None:
    """vLLM's rollout tensor parallelism spans consecutive training ranks: the group size must divide them."""
    tp = rollout.tensor_model_parallel_size
    if rollout.name != "vllm" or tp == 1:
        return
    key = "actor_rollout_ref.rollout.tensor_model_parallel_size"
    if n_ranks % tp:
        raise ValueError(
            f"{key}={tp} must divide the {n_ranks} training ranks (trainer.n_gpus_per_node * trainer.nnodes): each "
            f"group of {tp} consecutive ranks runs one sharded vLLM engine; set it to a divisor of {n_ranks} (1 runs "
            "one whole engine per rank)"
        )
    if rollout.multi_turn.enable:
        raise ValueError(
            f"actor_rollout_ref.rollout.multi_turn.enable=True with {key}={tp} is not supported yet (the ranks of an "
            f"engine group would have to run the interactions in lockstep); set {key}=1"
        )


def _check_ref_sequence_parallel(arr: Any) -> None:
    """The reference runs on the actor's ranks with the actor's rows: one Ulysses layout for both."""
    if getattr(arr.actor, "megatron", None) is not None:
        return  # Megatron: no Ulysses (its layout is tp/pp/cp)
    actor_sp, ref_sp = arr.actor.ulysses_sequence_parallel_size, arr.ref.ulysses_sequence_parallel_size
    if actor_sp != ref_sp and arr.model.lora_rank == 0:
        raise ValueError(
            f"actor_rollout_ref.ref.ulysses_sequence_parallel_size={ref_sp} differs from "
            f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={actor_sp}: the reference shares the actor's "
            "ranks and rows, so both use one sequence-parallel layout; leave ref's unset (it follows the actor's)"
        )


def _data_parallel_size(worker: Any, n_ranks: int, prefix: str) -> int:
    """Ranks that hold distinct data: world / sequence-parallel (FSDP) or world / (tp * pp * cp) (Megatron)."""
    megatron = getattr(worker, "megatron", None)
    if megatron is not None:
        split = (
            megatron.tensor_model_parallel_size * megatron.pipeline_model_parallel_size * megatron.context_parallel_size
        )
        what = f"{prefix}.megatron tp * pp * cp"
    else:
        split = worker.ulysses_sequence_parallel_size
        what = f"{prefix}.ulysses_sequence_parallel_size"
    if n_ranks % split:
        raise ValueError(
            f"{what} = {split} does not divide the {n_ranks} training ranks (trainer.n_gpus_per_node * "
            f"trainer.nnodes); choose a value that divides {n_ranks}"
        )
    return n_ranks // split


def _check_adv_estimator(name: str, n: int) -> None:
    known = set(KNOWN_ADV_ESTIMATORS)
    # Estimators a user registered at run time live in core_algos' registry; consult it only if already loaded.
    core_algos = sys.modules.get("verl.trainer.ppo.core_algos")
    known |= set(getattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {}) or {})
    if name not in known:
        near = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
        guess = f" did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"algorithm.adv_estimator={name!r} is not a known advantage estimator;{guess} choose one of "
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


def validate_config(
    config: Any, use_reference_policy: bool, use_critic: bool, n_ranks: int | None = None
) -> PPOTrainerConfig:
    """verl's entry: build and check the tree of ``config`` (a ``DictConfig`` or a built tree); returns the tree."""
    cfg = build_trainer_config(config, n_ranks=n_ranks, check=False)
    check_trainer_config(cfg, use_reference_policy, use_critic, n_ranks)
    return cfg
