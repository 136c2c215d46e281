"""Rule-based rewards, dispatched on a sample's ``data_source``.

``default_compute_score`` is what reward managers call when no custom reward function is configured. The
table below maps data sources onto scorer modules; modules are imported on first use, so importing this package
is cheap.

==========================================================================  =================================
data_source                                                                 scorer
==========================================================================  =================================
``openai/gsm8k``                                                            ``gsm8k`` (``#### N``)
``lighteval/MATH``, ``DigitalLearningGmbH/MATH-lighteval``,                 ``math_reward`` (last ``\\boxed``)
``HuggingFaceH4/MATH-500``
``math_dapo``, ``math``, ``math_dapo_reasoning``, ``aime*``                 ``math_dapo`` (``Answer:``, +-1)
``numina_*`` (six sources)                                                  ``prime_math`` (our MATH equivalence)
``codecontests``, ``apps``, ``codeforces``, ``taco``                        SandboxFusion (needs a URL)
``hiyouga/geometry3k``                                                      ``geo3k``
``searchR1_*`` (seven sources)                                              ``search_r1_like_qa_em``
``spd_scorer``                                                              ``spd_scorer_reward`` (remote target;
                                                                            reads ``extra_info``)
==========================================================================  =================================

Further sources can be added with :func:`register_data_source`.
"""

from __future__ import annotations

import importlib
import numbers
from collections.abc import Callable
from typing import Any

__all__ = ["default_compute_score", "known_data_sources", "register_data_source"]

_MODULE_BY_SOURCE: dict[str, str] = {
    "openai/gsm8k": "gsm8k",
    "lighteval/MATH": "math_reward",
    "DigitalLearningGmbH/MATH-lighteval": "math_reward",
    "HuggingFaceH4/MATH-500": "math_reward",
    "math_dapo": "math_dapo",
    "math": "math_dapo",
    "math_dapo_reasoning": "math_dapo",
    "numina_aops_forum": "prime_math",
    "numina_synthetic_math": "prime_math",
    "numina_amc_aime": "prime_math",
    "numina_synthetic_amc": "prime_math",
    "numina_cn_k12": "prime_math",
    "numina_olympiads": "prime_math",
    "hiyouga/geometry3k": "geo3k",
    "searchR1_nq": "search_r1_like_qa_em",
    "searchR1_triviaqa": "search_r1_like_qa_em",
    "searchR1_popqa": "search_r1_like_qa_em",
    "searchR1_hotpotqa": "search_r1_like_qa_em",
    "searchR1_2wikimultihopqa": "search_r1_like_qa_em",
    "searchR1_musique": "search_r1_like_qa_em",
    "searchR1_bamboogle": "search_r1_like_qa_em",
}
# Scorers called as compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs).
_MODULE_WITH_EXTRA_INFO: dict[str, str] = {"spd_scorer": "spd_scorer_reward"}
_MODULE_BY_PREFIX: tuple[tuple[str, str], ...] = (("aime", "math_dapo"),)
CODE_DATA_SOURCES: frozenset[str] = frozenset({"codecontests", "apps", "codeforces", "taco", "phase0_code"})

# Sources added at run time with register_data_source; they take precedence over the built-in table.
_REGISTERED: dict[str, Callable[..., Any]] = {}


def register_data_source(data_source: str, fn: Callable[..., Any] | None = None):
    """Register ``fn(solution_str, ground_truth, extra_info=None, **kwargs)`` for ``data_source``.

    Usable directly or as a decorator. Registering a different function under a taken name raises ``ValueError``.

    Example:
        >>> @register_data_source("doc/always_one")
        ... def always_one(solution_str, ground_truth, extra_info=None, **kwargs):
        ...     return 1
        >>> default_compute_score("doc/always_one", "anything", "x")
        1.0
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        existing = _REGISTERED.get(data_source)
        if existing is not None and existing is not func:
            raise ValueError(f"data_source {data_source!r} is already registered to {existing!r}.")
        _REGISTERED[data_source] = func
        return func

    return decorator if fn is None else decorator(fn)


def known_data_sources() -> list[str]:
    """Every exact data_source name with a scorer (prefix rules such as ``aime*`` are listed as patterns)."""
    names = set(_MODULE_BY_SOURCE) | set(_MODULE_WITH_EXTRA_INFO) | set(CODE_DATA_SOURCES) | set(_REGISTERED)
    return sorted(names) + [prefix + "*" for prefix, _ in _MODULE_BY_PREFIX]


def has_scorer(data_source: str) -> bool:
    """Whether :func:`default_compute_score` has a rule for ``data_source``."""
    source = str(data_source)
    known = source in _REGISTERED or source in _MODULE_WITH_EXTRA_INFO or source in CODE_DATA_SOURCES
    return known or _scorer_module(source) is not None


def _scorer_module(data_source: str) -> str | None:
    if data_source in _MODULE_BY_SOURCE:
        return _MODULE_BY_SOURCE[data_source]
    for prefix, module in _MODULE_BY_PREFIX:
        if data_source.startswith(prefix):
            return module
    return None


def _score_code(solution_str, ground_truth, sandbox_fusion_url, concurrent_semaphore, memory_limit_mb, data_source):
    # No URL (reward_model.sandbox_fusion.url unset): the embedded sandbox, started once per process, runs the tests.
    try:
        sandbox_fusion = importlib.import_module("verl.utils.reward_score.sandbox_fusion")
    except ImportError as exc:
        raise NotImplementedError(
            f"data_source {data_source!r}: the SandboxFusion client (verl.utils.reward_score.sandbox_fusion) "
            "is not available in this build."
        ) from exc
    return sandbox_fusion.compute_score(
        sandbox_fusion_url, concurrent_semaphore, memory_limit_mb, solution_str, ground_truth, continuous=True
    )


def _normalise_result(result: Any, data_source: str) -> dict[str, Any] | float:
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"scorer for {data_source!r} returned a dict without 'score': keys {sorted(result)}.")
        return result
    if isinstance(result, (bool, numbers.Number)):
        return float(result)
    if isinstance(result, (tuple, list)) and result:
        return float(result[0])
    raise TypeError(f"scorer for {data_source!r} returned {type(result).__name__}; expected a number, dict or tuple.")


def default_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    sandbox_fusion_url: str | None = None,
    concurrent_semaphore: Any = None,
    memory_limit_mb: int | None = None,
    **kwargs: Any,
) -> dict[str, Any] | float:
    """Score one completion with the rule for its ``data_source``.

    Args:
        data_source: dataset name, e.g. ``"openai/gsm8k"``.
        solution_str: decoded response.
        ground_truth: reference answer (``reward_model.ground_truth`` of the sample).
        extra_info: the sample's ``extra_info`` (passed on to registered scorers and ``spd_scorer``).
        sandbox_fusion_url: SandboxFusion endpoint, required for code sources.
        concurrent_semaphore: limits concurrent sandbox requests.
        memory_limit_mb: per-run memory limit in the sandbox.
        **kwargs: passed on to registered scorers and ``spd_scorer``.

    Returns:
        A dict with ``"score"`` (returned unchanged) or a float (numbers, bools and the first element of tuples
        are converted).

    Raises:
        NotImplementedError: unknown ``data_source``; the message lists the known ones.

    Example:
        >>> default_compute_score("openai/gsm8k", "6 * 7 = 42\\n#### 42", "42")
        1.0
    """
    if data_source in _REGISTERED:
        result = _REGISTERED[data_source](solution_str, ground_truth, extra_info=extra_info, **kwargs)
    elif data_source in _MODULE_WITH_EXTRA_INFO:
        module = importlib.import_module(f"verl.utils.reward_score.{_MODULE_WITH_EXTRA_INFO[data_source]}")
        result = module.compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    elif data_source in CODE_DATA_SOURCES:
        result = _score_code(
            solution_str, ground_truth, sandbox_fusion_url, concurrent_semaphore, memory_limit_mb, data_source
        )
    else:
        module_name = _scorer_module(str(data_source))
        if module_name is None:
            raise NotImplementedError(
                f"Reward function is not implemented for data_source={data_source!r}. Known data sources: "
                f"{', '.join(known_data_sources())}. Use custom_reward_function.path for others."
            )
        module = importlib.import_module(f"verl.utils.reward_score.{module_name}")
        result = module.compute_score(solution_str, ground_truth)
    return _normalise_result(result, data_source)


def _default_compute_score(*args: Any, **kwargs: Any) -> dict[str, Any] | float:
    """Deprecated alias of :func:`default_compute_score`."""
    import warnings

    warnings.warn("_default_compute_score is deprecated; use default_compute_score.", FutureWarning, stacklevel=2)
    return default_compute_score(*args, **kwargs)
