"""DAPO reward manager: the naive manager plus DAPO's soft overlong penalty.

With ``overlong_buffer_cfg = {enable, len, penalty_factor, log}`` and ``max_resp_len = L``, a response of ``n``
valid tokens gets an extra ``min(-(n - (L - len)) / len * penalty_factor, 0)``: nothing up to ``L - len`` tokens,
then a linear ramp down to ``-penalty_factor`` at ``L`` tokens.
"""

from __future__ import annotations

from typing import Any

from verl.workers.reward_manager.abstract import RawRewardFn, RewardSample
from verl.workers.reward_manager.naive import NaiveRewardManager
from verl.workers.reward_manager.registry import register

__all__ = ["DAPORewardManager", "overlong_penalty"]


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def overlong_penalty(response_length: int, max_resp_len: int, buffer_len: int, penalty_factor: float) -> float:
    """DAPO's soft overlong penalty (<= 0).

    Example:
        >>> overlong_penalty(90, max_resp_len=100, buffer_len=20, penalty_factor=1.0)  # 10 tokens into the buffer
        -0.5
        >>> overlong_penalty(70, max_resp_len=100, buffer_len=20, penalty_factor=1.0)
        0.0
    """
    exceed = response_length - (max_resp_len - buffer_len)
    return min(-exceed / buffer_len * penalty_factor, 0.0)


@register("dapo")
class DAPORewardManager(NaiveRewardManager):
    """Naive scoring plus the overlong penalty; logs ``overlong_reward`` and ``overlong`` when ``log`` is set.

    Args:
        max_resp_len: the rollout's maximum response length (required when the buffer is configured).
        overlong_buffer_cfg: ``{enable, len, penalty_factor, log}`` or None for no penalty.
    """

    def __init__(
        self,
        tokenizer: Any,
        num_examine: int,
        compute_score: RawRewardFn | None = None,
        reward_fn_key: str = "data_source",
        max_resp_len: int | None = None,
        overlong_buffer_cfg: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, num_examine, compute_score, reward_fn_key)
        if overlong_buffer_cfg is not None and max_resp_len is None:
            raise ValueError(
                "dapo reward manager: overlong_buffer_cfg is set but max_resp_len is None; pass "
                "+reward_model.reward_kwargs.max_resp_len=<rollout response length>."
            )
        if overlong_buffer_cfg is not None and _get(overlong_buffer_cfg, "enable", False):
            if max_resp_len < _get(overlong_buffer_cfg, "len", 0):
                raise ValueError(f"max_resp_len={max_resp_len} must be >= overlong_buffer_cfg.len.")
        self.max_resp_len = max_resp_len
        self.overlong_buffer_cfg = overlong_buffer_cfg

    def score_sample(self, sample: RewardSample) -> tuple[float, dict[str, Any]]:
        score, extra = super().score_sample(sample)
        cfg = self.overlong_buffer_cfg
        if cfg is None or not _get(cfg, "enable", False):
            return score, extra
        penalty = overlong_penalty(
            sample.response_length, self.max_resp_len, int(_get(cfg, "len")), float(_get(cfg, "penalty_factor", 1.0))
        )
        if _get(cfg, "log", False):
            extra = {**extra, "overlong_reward": penalty, "overlong": penalty < 0}
        return score + penalty, extra
