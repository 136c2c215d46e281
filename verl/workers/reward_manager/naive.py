"""The default reward manager: score each row with one call of the reward function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from verl.workers.reward_manager.abstract import (
    AbstractRewardManager,
    RawRewardFn,
    RewardSample,
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

__all__ = ["NaiveRewardManager"]


@register("naive")
class NaiveRewardManager(AbstractRewardManager):
    """Calls ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)`` once per row.

    A dict result contributes ``result["score"]`` as the reward and every key to ``reward_extra_info``. When the
    batch already holds ``rm_scores`` (from a reward model worker) they are returned unchanged.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int,
        compute_score: RawRewardFn | None = None,
        reward_fn_key: str = "data_source",
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, num_examine, compute_score, reward_fn_key, **kwargs)

    def call_scorer(self, sample: RewardSample) -> Any:
        """The reward function's raw result for one row (a number or a dict with ``"score"``)."""
        return self.compute_score(
            data_source=sample.data_source,
            solution_str=sample.response_str,
            ground_truth=sample.ground_truth,
            extra_info=sample.extra_info,
        )

    def score_sample(self, sample: RewardSample) -> tuple[float, dict[str, Any]]:
        """Score one row: a number is the score (no extra columns); a dict gives ``score`` and all its keys."""
        return split_score(self.call_scorer(sample))

    def decode(self, data: DataProto) -> list[RewardSample]:
        """Decoded rows of ``data``; subclasses post-process the strings here (see ``DAPORewardManager``)."""
        return decode_samples(self.tokenizer, data, self.reward_fn_key)

    def __call__(self, data: DataProto, return_dict: bool = False) -> torch.Tensor | dict[str, Any]:
        passthrough = rm_scores_output(data, return_dict)
        if passthrough is not None:
            return passthrough
        samples = self.decode(data)
        scored = [self.score_sample(sample) for sample in samples]
        scores = [score for score, _ in scored]
        extras = [extra for _, extra in scored]
        print_examples(samples, scores, extras, self.num_examine)
        reward_tensor = place_rewards(samples, scores, like=data.batch["responses"])
        return format_output(reward_tensor, collect_extra_info(extras), return_dict)
