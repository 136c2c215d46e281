"""Step metrics of the PPO trainer, under verl's metric names.

* :func:`compute_data_metrics`: what the batch looks like (``critic/score/mean``, ``response_length/clip_ratio``...).
* :func:`compute_timing_metrics`: seconds per stage (``timing_s/gen``) and milliseconds per token.
* :func:`compute_throughout_metrics`: tokens per second per GPU (``perf/throughput``; the misspelt function
  name is verl's and is kept for compatibility).
* :func:`process_validation_metrics`: per data source and per scored variable, ``mean@N``, ``std@N`` and
  bootstrapped ``best@k``/``worst@k``/``maj@k`` over the N responses sampled for each prompt.

The batch functions need only ``batch.batch`` (a TensorDict or a plain dict of tensors), ``batch.meta_info`` and,
for multi-turn counters, ``batch.non_tensor_batch``; they never import :mod:`verl.protocol`.
"""

from __future__ import annotations

import numbers
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "bootstrap_metric",
    "calc_maj_val",
    "compute_data_metrics",
    "compute_throughout_metrics",
    "compute_timing_metrics",
    "flatten_validation_metrics",
    "process_validation_metrics",
]

# Stages whose per-token cost is measured over all tokens (prompt + response); generation only over responses.
_ALL_TOKEN_STAGES = ("ref", "values", "adv", "update_critic", "update_actor")


def _compute_response_info(batch: Any) -> dict[str, torch.Tensor]:
    """Prompt/response lengths of every sample, read from ``attention_mask`` (as verl does).

    The batch's ``response_mask`` is deliberately not used here: after multi-turn masking or rejection sampling
    it can differ from what was generated, and lengths describe what was generated.

    Returns:
        ``response_mask`` (bs, R) = the last R columns of ``attention_mask``, ``prompt_length`` (bs,) and
        ``response_length`` (bs,), lengths as floats.
    """
    tensors = batch.batch
    response_width = tensors["responses"].shape[-1]
    attention_mask = tensors["attention_mask"]
    prompt_mask = attention_mask[:, :-response_width]  # (bs, P)
    response_mask = attention_mask[:, -response_width:]  # (bs, R)
    return {
        "response_mask": response_mask,
        "prompt_length": prompt_mask.sum(-1).float(),
        "response_length": response_mask.sum(-1).float(),
    }


def _mean_max_min(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """``{prefix}/mean``, ``/max``, ``/min`` of a flat tensor; NaN when it is empty (e.g. no valid token)."""
    if values.numel() == 0:
        nan = float("nan")
        return {f"{prefix}/mean": nan, f"{prefix}/max": nan, f"{prefix}/min": nan}
    values = values.detach().float()
    return {
        f"{prefix}/mean": values.mean().item(),
        f"{prefix}/max": values.max().item(),
        f"{prefix}/min": values.min().item(),
    }


def _length_metrics(prefix: str, lengths: torch.Tensor, max_length: int) -> dict[str, float]:
    metrics = _mean_max_min(prefix, lengths)
    metrics[f"{prefix}/clip_ratio"] = torch.eq(lengths, max_length).float().mean().item() if lengths.numel() else 0.0
    return metrics


def _explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float:
    """``1 - Var(returns - values) / (Var(returns) + 1e-5)`` over valid tokens (unbiased variances)."""
    if returns.numel() < 2:
        return float("nan")
    residual_var = torch.var(returns - values)
    return (1.0 - residual_var / (torch.var(returns) + 1e-5)).item()


def _multi_turn_metrics(batch: Any) -> dict[str, float]:
    non_tensor = getattr(batch, "non_tensor_batch", None)
    if not isinstance(non_tensor, Mapping):
        return {}
    metrics: dict[str, float] = {}
    for key, prefix in (
        ("__num_turns__", "num_turns"),
        ("tool_call_counts", "tool_call_counts"),
        ("tool_error_counts", "tool_error_counts"),
        ("__agent_generate_s__", "timing_s/agent_loop/generate_sequences"),
        ("__agent_tool_s__", "timing_s/agent_loop/tool_calls"),
    ):
        if key in non_tensor and len(non_tensor[key]):
            counts = np.asarray(non_tensor[key], dtype=np.float64)
            metrics.update(
                {f"{prefix}/min": counts.min(), f"{prefix}/max": counts.max(), f"{prefix}/mean": counts.mean()}
            )
    return {k: float(v) for k, v in metrics.items()}


def compute_data_metrics(batch: Any, use_critic: bool = True) -> dict[str, float]:
    """Statistics of scores, rewards, advantages, returns, values and lengths in a trained batch.

    A sample is *aborted* when the response part of its ``attention_mask`` is all zeros (an empty response).

    Args:
        batch: a DataProto (or anything with ``.batch``) holding ``responses`` (bs, R), ``attention_mask``
            (bs, P+R), ``token_level_scores``/``token_level_rewards``/``advantages``/``returns`` (bs, R),
            optionally ``response_mask`` (bs, R; defaults to the response part of ``attention_mask``) and, with
            a critic, ``values`` (bs, R).
        use_critic: add ``critic/values/*`` and ``critic/vf_explained_var``.

    Returns:
        ``critic/{score,rewards}/{mean,max,min}`` over the per-sequence sums of the non-aborted samples;
        ``critic/{advantages,returns,values}/*`` over ``response_mask`` tokens; ``response_length/*`` (from
        ``attention_mask``, aborted samples counted as 0) and ``prompt_length/*`` with ``clip_ratio`` = share of
        samples at the maximum length; ``response_length_non_aborted/*`` and ``response/aborted_ratio``;
        ``num_turns/*``, ``tool_call_counts/*``, ``tool_error_counts/*`` and the agent loop's per-sample seconds
        ``timing_s/agent_loop/{generate_sequences,tool_calls}/*`` when the non-tensor batch carries them.

    Raises:
        ValueError: every sample is aborted (no statistic of scores or lengths would be meaningful).
    """
    tensors = batch.batch
    info = _compute_response_info(batch)
    prompt_length, response_length = info["prompt_length"], info["response_length"]  # (bs,), from attention_mask
    if "response_mask" in tensors.keys():
        response_mask = tensors["response_mask"].bool()  # (bs, R)
    else:
        response_mask = info["response_mask"].bool()
    max_response_length = tensors["responses"].shape[-1]
    max_prompt_length = tensors["attention_mask"].shape[-1] - max_response_length

    aborted = response_length == 0  # (bs,)
    if bool(aborted.all()):
        raise ValueError(
            f"compute_data_metrics: all {aborted.numel()} responses in the batch are empty/aborted "
            "(the response part of attention_mask is all zeros); check the rollout."
        )
    non_aborted = ~aborted

    metrics: dict[str, float] = {}
    metrics.update(_mean_max_min("critic/score", tensors["token_level_scores"].sum(-1)[non_aborted]))
    metrics.update(_mean_max_min("critic/rewards", tensors["token_level_rewards"].sum(-1)[non_aborted]))
    valid_returns = torch.masked_select(tensors["returns"], response_mask)
    metrics.update(_mean_max_min("critic/advantages", torch.masked_select(tensors["advantages"], response_mask)))
    metrics.update(_mean_max_min("critic/returns", valid_returns))
    if use_critic:
        valid_values = torch.masked_select(tensors["values"], response_mask)
        metrics.update(_mean_max_min("critic/values", valid_values))
        metrics["critic/vf_explained_var"] = _explained_variance(valid_returns.float(), valid_values.float())

    metrics.update(_length_metrics("response_length", response_length, max_response_length))
    metrics.update(_length_metrics("response_length_non_aborted", response_length[non_aborted], max_response_length))
    metrics["response/aborted_ratio"] = aborted.float().mean().item()
    metrics.update(_length_metrics("prompt_length", prompt_length, max_prompt_length))
    metrics.update(_multi_turn_metrics(batch))
    return metrics


def compute_timing_metrics(batch: Any, timing_raw: Mapping[str, float]) -> dict[str, float]:
    """Seconds per stage and milliseconds per token.

    Args:
        batch: the step's batch (``responses``, ``attention_mask``; token counts come from the mask).
        timing_raw: ``{stage: seconds}`` filled by :func:`verl.utils.profiler.marked_timer`.

    Returns:
        ``timing_s/{stage}`` for every stage, and ``timing_per_token_ms/{stage}`` for ``gen`` (per response
        token) and ``ref, values, adv, update_critic, update_actor`` (per prompt + response token); 0.0 when
        the batch has no tokens.
    """
    info = _compute_response_info(batch)
    num_response_tokens = info["response_length"].sum().item()
    num_overall_tokens = info["prompt_length"].sum().item() + num_response_tokens
    tokens_per_stage = {"gen": num_response_tokens, **dict.fromkeys(_ALL_TOKEN_STAGES, num_overall_tokens)}

    metrics = {f"timing_s/{name}": float(seconds) for name, seconds in timing_raw.items()}
    for name, num_tokens in tokens_per_stage.items():
        if name in timing_raw:
            ms = timing_raw[name] * 1000 / num_tokens if num_tokens > 0 else 0.0
            metrics[f"timing_per_token_ms/{name}"] = float(ms)
    return metrics


def compute_throughout_metrics(batch: Any, timing_raw: Mapping[str, float], n_gpus: int) -> dict[str, float]:
    """Tokens processed in the step and tokens per second per GPU.

    Args:
        batch: the step's batch; ``meta_info["global_token_num"]`` lists every sample's token count.
        timing_raw: must hold ``step`` (seconds for the whole step).
        n_gpus: devices the step ran on (processes on CPU).

    Returns:
        ``perf/total_num_tokens``, ``perf/time_per_step`` and ``perf/throughput`` = tokens / (time x n_gpus).
    """
    total_num_tokens = int(np.asarray(batch.meta_info["global_token_num"]).sum())
    time_per_step = float(timing_raw["step"])
    denominator = time_per_step * n_gpus
    return {
        "perf/total_num_tokens": total_num_tokens,
        "perf/time_per_step": time_per_step,
        "perf/throughput": total_num_tokens / denominator if denominator > 0 else 0.0,
    }


def _is_number(value: Any) -> bool:
    """Real numbers, including numpy scalars and numpy booleans (``acc`` often arrives as ``np.bool_``)."""
    return isinstance(value, numbers.Real | np.bool_)


_VECTORISABLE = (np.mean, np.max, np.min, np.sum, np.median, np.std)


def bootstrap_metric(
    data: Sequence[Any],
    subset_size: int,
    reduce_fns: Sequence[Callable[[Sequence[Any]], float]],
    n_bootstrap: int = 1000,
    seed: int = 42,
) -> list[tuple[float, float]]:
    """Mean and spread of statistics over random subsets drawn with replacement.

    Args:
        data: the values (numbers, or dicts for a custom reducer such as :func:`calc_maj_val`).
        subset_size: how many items each subset draws.
        reduce_fns: statistics applied to each subset (``np.max`` for best-of-k...).
        n_bootstrap: number of subsets.
        seed: seed of a private generator (the global numpy state is left alone).

    Returns:
        One ``(mean, std)`` per reducer, over the ``n_bootstrap`` subsets.

    Raises:
        ValueError: ``data`` is empty.
    """
    if len(data) == 0:
        raise ValueError("bootstrap_metric needs at least one data point")
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(data), size=(n_bootstrap, subset_size))  # (n_bootstrap, subset_size)
    numeric = all(_is_number(x) for x in data)
    array = np.asarray(data, dtype=np.float64) if numeric else None
    results = []
    for reduce_fn in reduce_fns:
        if array is not None and reduce_fn in _VECTORISABLE:
            stats = reduce_fn(array[indices], axis=1)
        else:
            stats = np.asarray([reduce_fn([data[i] for i in row]) for row in indices], dtype=np.float64)
        results.append((float(np.mean(stats)), float(np.std(stats))))
    return results


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def calc_maj_val(data: Sequence[Mapping[str, Any]], vote_key: str, val_key: str) -> float:
    """The ``val_key`` of the first item voting for the most common ``vote_key`` (majority voting).

    Ties go to the answer seen first.

    Example:
        >>> votes = [{"pred": "A", "val": 1.0}, {"pred": "B", "val": 0.0}, {"pred": "A", "val": 0.5}]
        >>> calc_maj_val(votes, "pred", "val")
        1.0
    """
    groups: dict[Any, list[Any]] = {}
    for item in data:
        groups.setdefault(_hashable(item[vote_key]), []).append(item[val_key])
    majority = max(groups, key=lambda vote: len(groups[vote]))
    return groups[majority][0]


def _subset_sizes(n: int) -> list[int]:
    """Powers of two below ``n``, then ``n`` itself: 2, 4, ..., n."""
    sizes, k = [], 2
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n]


def _prompt_metrics(values: list[float], preds: list[Any] | None, seed: int) -> dict[str, float]:
    """Metrics over the N responses of one prompt for one variable."""
    n = len(values)
    metrics = {f"mean@{n}": float(np.mean(values))}
    if n == 1:
        return metrics
    metrics[f"std@{n}"] = float(np.std(values))
    for k in _subset_sizes(n):
        (best_mean, best_std), (worst_mean, worst_std) = bootstrap_metric(values, k, [np.max, np.min], seed=seed)
        metrics.update({f"best@{k}/mean": best_mean, f"best@{k}/std": best_std})
        metrics.update({f"worst@{k}/mean": worst_mean, f"worst@{k}/std": worst_std})
        if preds is not None:
            maj_mean, maj_std = _bootstrap_majority(values, preds, k, seed=seed)
            metrics.update({f"maj@{k}/mean": maj_mean, f"maj@{k}/std": maj_std})
    return metrics


def _bootstrap_majority(
    values: Sequence[float], preds: Sequence[Any], subset_size: int, n_bootstrap: int = 1000, seed: int = 42
) -> tuple[float, float]:
    """Vectorised ``bootstrap_metric(vote_data, subset_size, [calc_maj_val])``: same draws, same tie rule.

    The Python-level vote over 1000 subsets per prompt dominated validation time, so the vote is done with
    array ops: count each answer per subset, prefer the larger count, then the answer seen first.
    """
    codes = {}
    pred_codes = np.asarray([codes.setdefault(_hashable(p), len(codes)) for p in preds])  # (n,)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(values), size=(n_bootstrap, subset_size))  # same draws as bootstrap_metric
    drawn = pred_codes[indices]  # (n_bootstrap, k)
    hits = drawn[:, :, None] == np.arange(len(codes))  # (n_bootstrap, k, U)
    counts = hits.sum(axis=1)  # (n_bootstrap, U)
    first_pos = np.where(hits.any(axis=1), hits.argmax(axis=1), subset_size)  # (n_bootstrap, U)
    winner = np.argmax(counts * (subset_size + 1) - first_pos, axis=1)  # most votes, then earliest
    rows = np.arange(n_bootstrap)
    picked = np.asarray(values, dtype=np.float64)[indices[rows, first_pos[rows, winner]]]
    return float(np.mean(picked)), float(np.std(picked))


def process_validation_metrics(
    data_sources: Sequence[str],
    sample_uids: Sequence[Any],
    infos_dict: Mapping[str, Sequence[Any]],
    seed: int = 42,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-prompt validation metrics averaged over the prompts of each data source.

    The responses of one prompt share a uid. For each numeric variable of ``infos_dict`` (e.g. ``reward``,
    ``acc``) and each prompt with N responses: ``mean@N``; when N > 1 also ``std@N`` and, for k in 2, 4, ...
    (powers of two below N) and N, bootstrapped ``best@k/{mean,std}``, ``worst@k/{mean,std}`` and, when
    ``infos_dict`` has a ``pred`` list (the extracted answers), ``maj@k/{mean,std}`` by majority vote.
    Non-numeric variables and ``pred`` itself are not scored.

    Args:
        data_sources: data source of each sample, length B.
        sample_uids: prompt id of each sample, length B.
        infos_dict: ``{variable: list of length B}``.
        seed: bootstrap seed.

    Returns:
        ``{data_source: {variable: {metric_name: value}}}``.

    Example:
        >>> out = process_validation_metrics(["s", "s"], ["u", "u"], {"reward": [1.0, 0.0]})
        >>> out["s"]["reward"]["mean@2"], out["s"]["reward"]["std@2"]
        (0.5, 0.5)
    """
    # data_source -> uid -> variable -> values of that prompt's responses
    grouped: dict[str, dict[Any, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for i, (source, uid) in enumerate(zip(data_sources, sample_uids)):
        for var, values in infos_dict.items():
            grouped[source][uid][var].append(values[i])

    per_prompt: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for source, prompts in grouped.items():
        for variables in prompts.values():
            preds = variables.get("pred")
            for var, values in variables.items():
                if var == "pred" or not all(_is_number(v) for v in values):
                    continue
                for name, value in _prompt_metrics(values, preds, seed).items():
                    per_prompt[source][var][name].append(value)

    return {
        source: {
            var: {name: float(np.mean(vals)) for name, vals in metrics.items()} for var, metrics in variables.items()
        }
        for source, variables in per_prompt.items()
    }


def flatten_validation_metrics(nested: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, float]:
    """Name validation metrics the way verl logs them.

    The core variable is ``acc`` when present, else ``reward``; its ``mean@N``, ``maj@N/mean`` and
    ``best@N/mean`` at the largest N go under ``val-core/{source}/{var}/...``, everything else under
    ``val-aux/...``.

    Args:
        nested: output of :func:`process_validation_metrics`.

    Returns:
        Flat ``{name: value}``, e.g. ``val-core/openai/gsm8k/reward/mean@1``.
    """
    flat: dict[str, float] = {}
    for source, variables in nested.items():
        core_var = "acc" if "acc" in variables else "reward"
        for var, metrics in variables.items():
            n_max = max(int(name.split("@")[-1].split("/")[0]) for name in metrics)
            core_names = {f"mean@{n_max}", f"maj@{n_max}/mean", f"best@{n_max}/mean"}
            for name, value in metrics.items():
                section = "val-core" if var == core_var and name in core_names else "val-aux"
                flat[f"{section}/{source}/{var}/{name}"] = value
    return flat
