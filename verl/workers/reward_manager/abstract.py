"""Base class and shared steps of the rule-based reward managers.

A reward manager turns a generated batch into ``token_level_scores``: for each row it decodes the valid prompt
and response, scores the response against ``reward_model.ground_truth``, and writes the score on the last valid
response token. Input batch layout (P prompt columns, R response columns)::

    batch["prompts"]         (bs, P)       left padded
    batch["responses"]       (bs, R)       right padded
    batch["attention_mask"]  (bs, P + R)   1 on real tokens
    non_tensor_batch[reward_fn_key], ["reward_model"] (dict with ground_truth), ["extra_info"] (dict or None)

The helpers here are the steps every manager shares, so ``naive``, ``batch`` and ``dapo`` differ only in how
they call the scoring function and post-process its result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from verl.protocol import DataProto

__all__ = [
    "AbstractRewardManager",
    "RewardSample",
    "collect_extra_info",
    "decode_samples",
    "format_output",
    "place_rewards",
    "print_examples",
    "rm_scores_output",
    "split_score",
]

RawRewardFn = Callable[..., Any]


@dataclass
class RewardSample:
    """One decoded row of a batch, ready for scoring."""

    index: int
    prompt_str: str
    response_str: str
    response_length: int  # number of valid response tokens
    data_source: Any
    ground_truth: Any
    extra_info: dict = field(default_factory=dict)


def _column(data: DataProto, key: str, config_key: str | None = None) -> Any:
    if key not in data.non_tensor_batch:
        hint = f" (set by {config_key})" if config_key else ""
        raise KeyError(
            f"reward manager needs non-tensor column {key!r}{hint}; the batch has {sorted(data.non_tensor_batch)}."
        )
    return data.non_tensor_batch[key]


def _decode_all(tokenizer: Any, rows: list[list[int]]) -> list[str]:
    """``decode(row, skip_special_tokens=True)`` of every row; one batched call when the tokenizer has one."""
    if hasattr(tokenizer, "batch_decode"):
        return list(tokenizer.batch_decode(rows, skip_special_tokens=True))
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def decode_samples(tokenizer: Any, data: DataProto, reward_fn_key: str = "data_source") -> list[RewardSample]:
    """Decode the valid prompt and response of every row and gather its scoring inputs.

    The valid prompt is the masked-in part of the left-padded prompt; the valid response is its first
    ``attention_mask[P:].sum()`` tokens. ``extra_info`` is copied (never mutated in the batch) and gets
    ``num_turns`` from the agent loop's ``__num_turns__`` column when present, and ``rollout_reward_scores`` from
    the ``reward_scores`` column (``{}`` when the batch has no such column).
    """
    prompts, responses = data.batch["prompts"], data.batch["responses"]
    prompt_len = prompts.shape[-1]
    mask = data.batch["attention_mask"]
    prompt_mask = mask[:, :prompt_len].bool()
    response_lengths = mask[:, prompt_len:].sum(dim=-1).tolist()
    sources = _column(data, reward_fn_key, "data.reward_fn_key")
    reward_model = _column(data, "reward_model")
    extra_infos = data.non_tensor_batch.get("extra_info")
    captured = _generation_logits_getter(data)
    extra_columns = [k for k in data.meta_info.get("reward_extra_info_keys", ()) if k in data.non_tensor_batch]
    prompt_strs = _decode_all(tokenizer, [prompts[i][prompt_mask[i]].tolist() for i in range(len(data))])
    response_strs = _decode_all(tokenizer, [responses[i][: int(n)].tolist() for i, n in enumerate(response_lengths)])
    samples = []
    for i in range(len(data)):
        length = int(response_lengths[i])
        extra = dict(extra_infos[i] or {}) if extra_infos is not None else {}
        if "__num_turns__" in data.non_tensor_batch:
            extra["num_turns"] = data.non_tensor_batch["__num_turns__"][i]
        rollout_scores = data.non_tensor_batch.get("reward_scores")
        extra["rollout_reward_scores"] = rollout_scores[i] if rollout_scores is not None else {}
        if captured is not None:
            extra["generation_logits"] = captured(i)
        for key in extra_columns:  # rollout columns a scorer needs (e.g. the SPD rollout's decisions)
            extra[key] = data.non_tensor_batch[key][i]
        samples.append(
            RewardSample(
                index=i,
                prompt_str=prompt_strs[i],
                response_str=response_strs[i],
                response_length=length,
                data_source=sources[i],
                ground_truth=(reward_model[i] or {}).get("ground_truth"),
                extra_info=extra,
            )
        )
    return samples


def _generation_logits_getter(data: DataProto) -> Callable[[int], Any] | None:
    """Row -> the rollout's captured values (``rollout.logit_capture``), for ``extra_info["generation_logits"]``.

    Multi-turn rollouts carry them per sample (non-tensor ``generation_logits``); single-turn ones as the padded
    capture tensors, cut back here to each row's generated tokens.
    """
    per_sample = data.non_tensor_batch.get("generation_logits")
    if per_sample is not None:
        return lambda i: per_sample[i]
    description = data.meta_info.get("logit_capture")  # set by the engines when capture is on
    if not description:
        return None
    from verl.utils.torch_functional import response_mask_of
    from verl.workers.rollout.logit_capture import CaptureSpec, generation_logits_from_batch

    spec = CaptureSpec.from_description(description)
    mask = data.batch["response_mask"] if "response_mask" in data.batch.keys() else response_mask_of(data.batch)
    return lambda i: generation_logits_from_batch(data.batch, i, mask[i], spec)


def split_score(result: Any) -> tuple[float, dict[str, Any]]:
    """``(score, extra)`` from a scorer result: a dict gives ``result["score"]`` and all its keys as extra."""
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"reward function returned a dict without 'score': keys {sorted(result)}.")
        return float(result["score"]), dict(result)
    return float(result), {}


def collect_extra_info(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Turn per-row extra dicts into ``{key: list}`` aligned with the rows (missing keys become None)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    return {key: [row.get(key) for row in rows] for key in keys}


def format_output(reward_tensor: torch.Tensor, extra: dict[str, list], return_dict: bool) -> Any:
    """The manager's return value: the tensor, or ``{"reward_tensor", "reward_extra_info"}``."""
    if return_dict:
        return {"reward_tensor": reward_tensor, "reward_extra_info": extra}
    return reward_tensor


def rm_scores_output(data: DataProto, return_dict: bool) -> Any | None:
    """Scores already computed by a reward model worker (``rm_scores``) pass through unchanged; else None."""
    if data.batch is None or "rm_scores" not in data.batch.keys():
        return None
    extra_keys = data.meta_info.get("reward_extra_keys", [])
    extra = {key: list(data.non_tensor_batch[key]) for key in extra_keys if key in data.non_tensor_batch}
    return format_output(data.batch["rm_scores"], extra, return_dict)


def print_examples(
    samples: list[RewardSample], scores: list[float], extras: list[dict[str, Any]], num_examine: int
) -> None:
    """Print prompt, response, ground truth and score of the first ``num_examine`` rows of each data source."""
    if num_examine <= 0:
        return
    printed: dict[Any, int] = defaultdict(int)
    for sample, score, extra in zip(samples, scores, extras):
        if printed[sample.data_source] >= num_examine:
            continue
        printed[sample.data_source] += 1
        print("[prompt]", sample.prompt_str)
        print("[response]", sample.response_str)
        print("[ground_truth]", sample.ground_truth)
        for key, value in (extra or {"score": score}).items():
            print(f"[{key}]", value)


def place_rewards(samples: list[RewardSample], scores: list[float], like: torch.Tensor) -> torch.Tensor:
    """A float32 tensor shaped like ``responses`` with each score on its row's last valid response token.

    The column is ``L - 1`` for ``L`` valid tokens, so an empty response (``L = 0``) puts its score on column
    ``-1``, the last (masked) position, as verl does: GRPO-type estimators sum rows without a mask, so the score
    still counts in group statistics while the row's own advantage is zeroed by the mask.
    """
    reward_tensor = torch.zeros(like.shape, dtype=torch.float32)  # (bs, R)
    for sample, score in zip(samples, scores):
        reward_tensor[sample.index, sample.response_length - 1] = score
    return reward_tensor


class AbstractRewardManager(ABC):
    """Interface of a reward manager: ``manager(data, return_dict=False)``.

    Args:
        tokenizer: decodes prompts and responses.
        num_examine: rows per data source printed for inspection (0 in training, 1 in validation by default).
        compute_score: ``fn(data_source, solution_str, ground_truth, extra_info) -> float | dict``; None means
            :func:`verl.utils.reward_score.default_compute_score`.
        reward_fn_key: non-tensor column holding the data source (``data.reward_fn_key``).
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int,
        compute_score: RawRewardFn | None = None,
        reward_fn_key: str = "data_source",
        **kwargs: Any,
    ) -> None:
        if compute_score is None:
            from verl.utils.reward_score import default_compute_score

            compute_score = default_compute_score
        self.tokenizer = tokenizer
        self.num_examine = num_examine
        self.compute_score = compute_score
        self.reward_fn_key = reward_fn_key

    @abstractmethod
    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        """Score ``data``.

        Returns:
            ``reward_tensor`` (bs, R) float32, or ``{"reward_tensor", "reward_extra_info": {key: list}}``.
        """
