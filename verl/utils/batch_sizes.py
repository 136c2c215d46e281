"""The batch-size rules, in one place: pre-flight (``validate_config``) and the workers both call these.

verl counts ``ppo_mini_batch_size`` in prompts, globally; a worker trains on ``ppo_mini_batch_size * rollout.n / dp``
sequences per optimizer step. Micro-batch sizes count sequences per rank (``*_per_gpu``); the deprecated global
``*_micro_batch_size`` keys are divided by the data-parallel size. With dynamic batch sizes the micro-batches are
packed by tokens and no fixed micro size is needed.

Every function raises ``ValueError`` naming the key(s), the value(s) and a fix, so a bad config reads the same
whether pre-flight catches it before Ray starts or a worker catches it when built directly (tests, recipes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "RankBatchSizes",
    "actor_rank_batch_sizes",
    "check_log_prob_batch",
    "check_mini_fits_train_batch",
    "check_training_batch",
    "critic_rank_batch_sizes",
    "per_rank_micro_batch",
    "per_rank_mini_batch",
]


def per_rank_micro_batch(
    prefix: str, name: str, micro: int | None, micro_per_gpu: int | None, dp: int, required: bool
) -> int | None:
    """Sequences per micro-batch on one rank, from ``<name>_per_gpu`` or the deprecated global ``<name>``.

    Args:
        prefix: dotted config path of the node, for messages (e.g. ``actor_rollout_ref.actor``).
        name: key without the ``_per_gpu`` suffix (e.g. ``ppo_micro_batch_size``).
        micro: the deprecated global value (divided by ``dp``) or None.
        micro_per_gpu: the per-rank value or None.
        dp: data-parallel size.
        required: one of the two must be set (False with dynamic batch sizes).

    Returns:
        the per-rank micro-batch size, or None when neither is set and none is required.
    """
    if micro is not None and micro_per_gpu is not None:
        raise ValueError(
            f"You have set both {prefix}.{name}={micro} AND {prefix}.{name}_per_gpu={micro_per_gpu}; keep only "
            f"{prefix}.{name}_per_gpu (the global {name} is deprecated)"
        )
    if micro is None and micro_per_gpu is None:
        if required:
            raise ValueError(
                f"neither {prefix}.{name}_per_gpu nor {prefix}.{name} is set. Please set at least one: "
                f"{prefix}.{name}_per_gpu=<sequences "
                "per rank> (or enable dynamic batch sizes)"
            )
        return None
    if micro_per_gpu is None:
        if micro < dp or micro % dp:
            raise ValueError(
                f"{prefix}.{name}={micro} (global, deprecated) must be >= n_gpus and a multiple of the {dp} data-parallel "
                f"ranks; set {prefix}.{name}_per_gpu instead"
            )
        micro_per_gpu = micro // dp
    if micro_per_gpu < 1:
        raise ValueError(f"{prefix}.{name}_per_gpu={micro_per_gpu} must be >= 1")
    return int(micro_per_gpu)


def check_mini_fits_train_batch(prefix: str, mini: int, train_bsz: int) -> None:
    """``ppo_mini_batch_size`` (prompts) is at most, and divides, ``data.train_batch_size`` (prompts)."""
    if mini > train_bsz:
        raise ValueError(
            f"{prefix}.ppo_mini_batch_size={mini} exceeds data.train_batch_size={train_bsz} (both count prompts); "
            f"set {prefix}.ppo_mini_batch_size <= {train_bsz}"
        )
    if train_bsz % mini:
        raise ValueError(
            f"data.train_batch_size={train_bsz} is not a multiple of {prefix}.ppo_mini_batch_size={mini}; "
            f"choose a mini batch that divides {train_bsz} so every update sees the same number of prompts"
        )


def per_rank_mini_batch(prefix: str, mini: int, n: int, dp: int, n_key: str = "actor_rollout_ref.rollout.n") -> int:
    """Sequences per optimizer step on one rank: ``mini * n / dp`` (it must divide evenly and be positive)."""
    if mini < 1:
        raise ValueError(f"{prefix}.ppo_mini_batch_size={mini} must be >= 1 (counted in prompts)")
    sequences = mini * n
    if sequences % dp:
        raise ValueError(
            f"{prefix}.ppo_mini_batch_size={mini} times {n_key}={n} = {sequences} sequences cannot be split evenly "
            f"over {dp} data-parallel ranks; choose a mini batch whose product with n is a multiple of {dp}"
        )
    return sequences // dp


def _check_micro_divides(prefix: str, per_rank: int, micro: int, mini: int, n: int, dp: int) -> None:
    if per_rank % micro:
        raise ValueError(
            f"each rank's mini batch ({prefix}.ppo_mini_batch_size * rollout.n / ranks = {mini} * {n} / {dp} = "
            f"{per_rank} sequences) is not a multiple of the micro batch {prefix}.ppo_micro_batch_size_per_gpu={micro} "
            f"(per rank); choose a micro batch that divides {per_rank}"
        )


def check_training_batch(prefix: str, node: Any, n: int, dp: int) -> tuple[int, int | None]:
    """The mini/micro rules of one trained model (actor or critic); returns per-rank ``(mini, micro)``.

    ``node`` is a typed actor or critic config (``ppo_mini_batch_size`` in prompts, global; ``ppo_micro_batch_size``,
    ``ppo_micro_batch_size_per_gpu``, ``use_dynamic_bsz``).
    """
    mini = int(node.ppo_mini_batch_size)
    per_rank = per_rank_mini_batch(prefix, mini, n, dp)
    dynamic = bool(node.use_dynamic_bsz)
    micro = per_rank_micro_batch(
        prefix, "ppo_micro_batch_size", node.ppo_micro_batch_size, node.ppo_micro_batch_size_per_gpu, dp, not dynamic
    )
    if micro is not None and not dynamic:
        _check_micro_divides(prefix, per_rank, micro, mini, n, dp)
    return per_rank, micro


def check_log_prob_batch(prefix: str, node: Any, dp: int) -> int | None:
    """The micro-batch of a log-prob pass (rollout recompute or reference): one size is needed unless dynamic."""
    return per_rank_micro_batch(
        prefix,
        "log_prob_micro_batch_size",
        node.log_prob_micro_batch_size,
        node.log_prob_micro_batch_size_per_gpu,
        dp,
        required=not node.log_prob_use_dynamic_bsz,
    )


@dataclass(frozen=True)
class RankBatchSizes:
    """One rank's share of the configured (global, prompt-counted) batch sizes; arguments, never config writes.

    Attributes:
        mini: sequences per optimizer step on this rank (``ppo_mini_batch_size * n / dp``); None for no training.
        micro: sequences per forward/backward of training (None with dynamic batch sizes).
        log_prob_micro: sequences per forward of the old-log-prob (actor) or value (critic) pass.
        ref_micro: sequences per forward of the reference policy.
    """

    mini: int | None = None
    micro: int | None = None
    log_prob_micro: int | None = None
    ref_micro: int | None = None


def actor_rank_batch_sizes(config: Any, role: str, dp: int) -> RankBatchSizes:
    """Per-rank sizes of an ``actor_rollout_ref`` worker with ``role`` on ``dp`` data-parallel ranks."""
    mini = micro = log_prob = ref = None
    if role in ("actor", "actor_rollout", "actor_rollout_ref"):
        mini, micro = check_training_batch("actor_rollout_ref.actor", config.actor, config.rollout.n, dp)
    if role in ("actor", "rollout", "actor_rollout", "actor_rollout_ref"):
        log_prob = check_log_prob_batch("actor_rollout_ref.rollout", config.rollout, dp)
    if role in ("ref", "actor_rollout_ref"):
        ref = check_log_prob_batch("actor_rollout_ref.ref", config.ref, dp)
    return RankBatchSizes(mini, micro, log_prob, ref)


def critic_rank_batch_sizes(config: Any, dp: int) -> RankBatchSizes:
    """Per-rank critic sizes (the actor's rules with ``critic.rollout_n``); value inference follows training."""
    mini, micro = check_training_batch("critic", config, config.rollout_n, dp)
    forward = per_rank_micro_batch(
        "critic",
        "forward_micro_batch_size",
        config.forward_micro_batch_size,
        config.forward_micro_batch_size_per_gpu,
        dp,
        required=False,
    )
    return RankBatchSizes(mini, micro, forward if forward is not None else micro)
