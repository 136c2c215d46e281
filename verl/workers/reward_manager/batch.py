"""Reward manager that scores the whole batch with one call (for reward functions that batch internally)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from verl.workers.reward_manager.abstract import (
    AbstractRewardManager,
    RawRewardFn,
    collect_extra_info,
    decode_samples,
    format_output,
    place_rewards,
    print_examples,
    rm_scores_output,
    split_score,
)
from verl.workers.reward_manager.registry import register

if TYPE_CHECKING:
    from verl.protocol import DataProto

__all__ = ["BatchRewardManager"]


def _is_default_scorer(fn: Any) -> bool:
    from verl.utils.reward_score import default_compute_score

    return getattr(fn, "func", fn) is default_compute_score


@register("batch")
class BatchRewardManager(AbstractRewardManager):
    """Calls ``compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=, **reward_kwargs)`` once.

    The function returns one float or dict (with ``"score"``) per row. Without a batched custom function the
    per-row :func:`default_compute_score` is looped over, so ``reward_manager=batch`` works out of the box.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int,
        compute_score: RawRewardFn | None = None,
        reward_fn_key: str = "data_source",
        **reward_kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, num_examine, compute_score, reward_fn_key)
        self.reward_kwargs = reward_kwargs

    def verify(self, data: DataProto) -> list[Any]:
        """Raw results of the reward function, one per row."""
        samples = decode_samples(self.tokenizer, data, self.reward_fn_key)
        return self._score(samples)

    def _score(self, samples: list) -> list[Any]:
        if _is_default_scorer(self.compute_score):
            return [
                self.compute_score(
                    data_source=s.data_source,
                    solution_str=s.response_str,
                    ground_truth=s.ground_truth,
                    extra_info=s.extra_info,
                )
                for s in samples
            ]
        results = self.compute_score(
            data_sources=[s.data_source for s in samples],
            solution_strs=[s.response_str for s in samples],
            ground_truths=[s.ground_truth for s in samples],
            extra_infos=[s.extra_info for s in samples],
            **self.reward_kwargs,
        )
        results = list(results)
        if len(results) != len(samples):
            raise ValueError(f"batched reward function returned {len(results)} results for {len(samples)} rows.")
        return results

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        passthrough = rm_scores_output(data, return_dict)
        if passthrough is not None:
            return passthrough
        samples = decode_samples(self.tokenizer, data, self.reward_fn_key)
        scored = [split_score(result) for result in self._score(samples)]
        scores = [score for score, _ in scored]
        extras = [extra for _, extra in scored]
        print_examples(samples, scores, extras, self.num_examine)
        reward_tensor = place_rewards(samples, scores, like=data.batch["responses"])
        return format_output(reward_tensor, collect_extra_info(extras), return_dict)
