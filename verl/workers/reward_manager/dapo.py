"""DAPO reward manager: the naive manager plus DAPO's soft overlong penalty.

With ``overlong_buffer_cfg = {enable, len, penalty_factor, log}`` and ``max_resp_len = M``, a response of ``L``
valid tokens gets an extra ``min(-(L - (M - len)) / len * penalty_factor, 0)``: nothing up to ``M - len`` tokens,
then a linear ramp reaching ``-penalty_factor`` at ``M`` tokens (no lower cap).

Differences from the naive manager: a plain-number scorer result is also logged as ``acc``, and a trailing EOS
string left in the decoded response is stripped before scoring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verl.workers.reward_manager.abstract import RawRewardFn, RewardSample, split_score
from verl.workers.reward_manager.naive import NaiveRewardManager
from verl.workers.reward_manager.registry import register

if TYPE_CHECKING:
    from verl.protocol import DataProto

__all__ = ["DAPORewardManager", "overlong_penalty"]

# The manager's kwargs come from either config location (merged by verl.trainer.ppo.reward.load_reward_manager).
_KWARGS_KEYS = "reward_model.reward_kwargs (or reward.reward_kwargs)"


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


def _validate_overlong_buffer(overlong_buffer_cfg: Any, max_resp_len: int | None) -> None:
    """The construction-time checks, applied only when a buffer config is given (enabled or not)."""
    if overlong_buffer_cfg is None:
        return
    if max_resp_len is None:
        raise ValueError(
            f"dapo reward manager: {_KWARGS_KEYS}.overlong_buffer_cfg is set but {_KWARGS_KEYS}.max_resp_len is "
            "None; set max_resp_len to the rollout's response length (data.max_response_length)."
        )
    buffer_len = _get(overlong_buffer_cfg, "len") or 0
    if max_resp_len < buffer_len:
        raise ValueError(
            f"dapo reward manager: max_resp_len={max_resp_len} must be >= "
            f"{_KWARGS_KEYS}.overlong_buffer_cfg.len={buffer_len}; shrink the buffer or raise max_resp_len."
        )
    if _get(overlong_buffer_cfg, "enable", False) and buffer_len <= 0:
        raise ValueError(
            f"dapo reward manager: {_KWARGS_KEYS}.overlong_buffer_cfg.len={buffer_len} must be > 0 when "
            "overlong_buffer_cfg.enable=True; set a positive buffer length or disable the buffer."
        )


@register("dapo")
class DAPORewardManager(NaiveRewardManager):
    """Naive scoring plus the overlong penalty; logs ``overlong_reward`` and ``overlong`` when ``log`` is set.

    Args:
        max_resp_len: the rollout's maximum response length (required when the buffer is configured).
        overlong_buffer_cfg: ``{enable, len, penalty_factor, log}`` or None for no penalty.

    Raises:
        ValueError: with a buffer config, ``max_resp_len`` is None, ``max_resp_len < len``, or ``enable`` is set
            with ``len <= 0``. The message names the offending ``reward_kwargs`` key.
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
        _validate_overlong_buffer(overlong_buffer_cfg, max_resp_len)
        self.max_resp_len = max_resp_len
        self.overlong_buffer_cfg = overlong_buffer_cfg

    def decode(self, data: DataProto) -> list[RewardSample]:
        samples = super().decode(data)
        eos = getattr(self.tokenizer, "eos_token", None)
        if isinstance(eos, str) and eos:
            for sample in samples:
                if sample.response_str.endswith(eos):
                    sample.response_str = sample.response_str[: -len(eos)]
        return samples

    def score_sample(self, sample: RewardSample) -> tuple[float, dict[str, Any]]:
        result = self.call_scorer(sample)
        if isinstance(result, dict):
            score, extra = split_score(result)
        else:
            score = float(result)
            extra = {"acc": score}
        cfg = self.overlong_buffer_cfg
        # verl's legacy manager reads cfg.enable unguarded (a None cfg fails there); like its reward-loop
        # version, None here simply means no penalty.
        if cfg is None or not _get(cfg, "enable", False):
            return score, extra
        penalty = overlong_penalty(
            sample.response_length, self.max_resp_len, int(_get(cfg, "len")), float(_get(cfg, "penalty_factor", 1.0))
        )
        if _get(cfg, "log", False):
            extra = {**extra, "overlong_reward": penalty, "overlong": penalty < 0}
        return score + penalty, extra
