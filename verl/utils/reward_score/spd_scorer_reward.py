"""SPD reward: the target model completes the hybrid prefix, and the A/B/C/D table scores the outcome.

For one sample (terms of docs/DESIGN section 6): context ``c``, draft tokens ``d_1..d_K``, the target's greedy
tokens ``t_1..t_K`` and the scorer's decisions on the mismatch positions. ``j`` is the first rejected mismatch;
the hybrid prefix is ``c + d_1..d_{j-1} + t_j`` (all of ``d`` when no mismatch is rejected). The target model,
served by any OpenAI-compatible ``/v1/completions`` endpoint (``python -m verl.serve`` or ``vllm serve``),
completes the prefix greedily; the answer is correct when the generated text (``d_1..d_{j-1} + t_j`` plus the
completion) contains the ground truth. Then:

======== ======================= ============== ===================================
scenario accepted >= 1 mismatch  answer correct reward
======== ======================= ============== ===================================
A        yes                     yes            ``1 + alpha * accepted_mismatches / K``
B        no                      yes            ``1``
C        yes                     no             ``-beta``
D        no                      no             ``0``
======== ======================= ============== ===================================

A target that stays unreachable after the retries gives ``target_failed=True``, ``scenario="failed"`` and, with
``on_target_failure="zero"`` (default), score 0; with ``"raise"`` a ``RuntimeError`` naming the URL stops the run.
No call waits longer than ``retries * timeout`` plus the backoff sleeps.

Where the inputs come from: ``extra_info`` (written by ``python -m verl.utils.dataset.spd_dataset``) holds
``context_ids`` (or ``context_text``), ``spd_draft_ids``, ``spd_target_ids``, ``model_path`` (the target's
tokenizer) and ``target_model_url``; the SPD rollout's ``spd_decisions`` must be copied into ``extra_info`` by
the reward manager. Keyword arguments (``reward_kwargs`` of a custom reward function) take precedence over
``extra_info``, so a run can point every sample at its own target server.

Decisions are 0/1 and come either one per draft position (length ``K``; values at matching positions are
ignored, matching tokens are always accepted) or one per mismatch in order (length ``num_mismatches``).

Batched use (all samples hit the target concurrently): ``reward_model.reward_manager=batch`` with
``custom_reward_function.path=verl/utils/reward_score/spd_scorer_reward.py`` and
``custom_reward_function.name=compute_score_batch``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "DATA_SOURCE",
    "GenerationOutcome",
    "completions_url",
    "compute_score",
    "compute_score_batch",
    "first_rejection",
    "get_tokenizer",
    "hybrid_prefix",
    "scenario_of",
    "spd_reward",
    "verify_hybrid_correctness",
    "vllm_generate",
    "vllm_generate_detailed",
]

logger = logging.getLogger(__name__)

DATA_SOURCE = "spd_scorer"
_FAILURE_MODES = ("zero", "raise")
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# ---------------------------------------------------------------------------------------------- target client
@dataclass
class GenerationOutcome:
    """What happened to one prompt: the completion text, or the last error after every attempt failed."""

    text: str | None
    error: str | None
    latency_s: float  # wall time from the first attempt to the answer or the final failure
    attempts: int


def completions_url(url: str) -> str:
    """The ``/v1/completions`` endpoint for a base address (``http://h:p``), ``.../v1`` or the endpoint itself."""
    url = url.rstrip("/")
    if url.endswith("/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/completions"
    return url + "/v1/completions"


async def _post_one(session: Any, url: str, body: dict, timeout: float, retries: int, backoff: float) -> Any:
    """Post ``body`` until it succeeds or ``retries`` attempts failed; returns a :class:`GenerationOutcome`."""
    import aiohttp

    start, error = time.perf_counter(), "no attempt made"
    for attempt in range(1, retries + 1):
        retryable = True
        try:
            async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                if resp.status == 200:
                    answer = await resp.json()
                    text = answer["choices"][0]["text"]
                    return GenerationOutcome(text, None, time.perf_counter() - start, attempt)
                error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
                retryable = resp.status in _RETRY_STATUS  # other 4xx: the request itself is wrong
        except asyncio.TimeoutError:
            error = f"no answer within {timeout} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            error, retryable = f"malformed answer ({type(exc).__name__}: {exc})", False
        if not retryable or attempt == retries:
            break
        await asyncio.sleep(backoff * 2 ** (attempt - 1))
    return GenerationOutcome(None, error, time.perf_counter() - start, attempt)


async def _generate_all(url: str, bodies: list[dict], concurrency: int, timeout: float, retries: int, backoff: float):
    import aiohttp

    limit = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, body: dict) -> GenerationOutcome:
        async with limit:
            return await _post_one(session, url, body, timeout, retries, backoff)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(*(one(session, body) for body in bodies))


def _run_coroutine(coro: Any) -> Any:
    """``asyncio.run`` that also works when the caller is inside a running event loop (a fresh thread runs it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def vllm_generate_detailed(
    url: str,
    prompts: Sequence[str | Sequence[int]],
    max_tokens: int,
    *,
    model: str | None = None,
    concurrency: int = 8,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> list[GenerationOutcome]:
    """Greedy completions of ``prompts`` from an OpenAI-compatible server, one :class:`GenerationOutcome` each.

    See :func:`vllm_generate` for the arguments.
    """
    if concurrency < 1 or retries < 1 or timeout <= 0 or max_tokens < 1:
        raise ValueError(
            f"vllm_generate needs concurrency >= 1, retries >= 1, timeout > 0 and max_tokens >= 1; got "
            f"concurrency={concurrency}, retries={retries}, timeout={timeout}, max_tokens={max_tokens}."
        )
    bodies = []
    for prompt in prompts:
        prompt = prompt if isinstance(prompt, str) else [int(i) for i in prompt]
        body = {"prompt": prompt, "max_tokens": int(max_tokens), "temperature": 0.0}
        if model:
            body["model"] = model
        bodies.append(body)
    if not bodies:
        return []
    endpoint = completions_url(url)
    outcomes = _run_coroutine(_generate_all(endpoint, bodies, concurrency, timeout, retries, backoff))
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        logger.warning(
            "%d of %d completions from %s failed; first error: %s", len(failed), len(bodies), endpoint, failed[0].error
        )
    return list(outcomes)


def vllm_generate(
    url: str,
    prompts: Sequence[str | Sequence[int]],
    max_tokens: int,
    *,
    model: str | None = None,
    concurrency: int = 8,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    errors: list[str | None] | None = None,
) -> list[str | None]:
    """Greedy (temperature 0) completions from an OpenAI-compatible ``/v1/completions`` endpoint.

    Each prompt is one request; at most ``concurrency`` are in flight (the server batches them). A request is
    retried after a connection error, a timeout or HTTP 408/429/5xx, sleeping ``backoff * 2**(attempt - 1)``
    seconds between attempts; other answers (4xx, malformed JSON) fail at once. So one prompt never takes longer
    than ``retries * timeout + backoff * (2**(retries - 1) - 1)`` seconds.

    Args:
        url: the server's base address (``http://host:port``), ``.../v1`` or ``.../v1/completions``.
        prompts: text, or token ids (sent as ids, so the target continues exactly those tokens).
        max_tokens: completion budget per prompt.
        model: the ``model`` field; None leaves it out (the server's only model).
        concurrency: requests in flight.
        timeout: seconds per attempt (the whole request, connection included).
        retries: attempts per prompt (>= 1), the first one included.
        backoff: first sleep between attempts, doubled each time.
        errors: if given, filled with one entry per prompt: None, or the last error of a failed prompt.

    Returns:
        One completion text per prompt, None where every attempt failed.

    Example:
        >>> vllm_generate("http://127.0.0.1:1", ["2 + 2 ="], 4, retries=1, timeout=1.0)  # nothing listens
        [None]
    """
    outcomes = vllm_generate_detailed(
        url,
        prompts,
        max_tokens,
        model=model,
        concurrency=concurrency,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
    )
    if errors is not None:
        errors[:] = [o.error for o in outcomes]
    return [o.text for o in outcomes]


@lru_cache(maxsize=8)
def get_tokenizer(model_path: str) -> Any:
    """The tokenizer of ``model_path``, loaded once per process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


# ---------------------------------------------------------------------------------------------- pure parts
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_STRICT = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def verify_hybrid_correctness(completion_text: str | None, ground_truth: Any) -> bool:
    """Whether ``completion_text`` gives the ground-truth answer.

    Whitespace is normalised in both (runs collapse to one space, ends stripped). A numeric ground truth
    (``"1,234"``, ``"$5"``, ``"-3.50"``) is compared by value with the completion's final number: the last
    ``#### N`` if there is one, else the last number in the text (gsm8k's flexible extraction), so ``"... 35
    apples, #### 42"`` and ``"so it is 42."`` both match ``"42"``, but ``"42 or maybe 43"`` does not. Any other
    ground truth must appear as a substring; a list of ground truths matches if any one does.

    Example:
        >>> verify_hybrid_correctness("3 + 4 = 7, so the answer is 1,007.", "1007")
        True
        >>> verify_hybrid_correctness("the  capital is\\nParis", "capital is Paris")
        True
        >>> verify_hybrid_correctness("7 then 8", "7")
        False
    """
    if completion_text is None or ground_truth is None:
        return False
    if isinstance(ground_truth, (list, tuple)) or type(ground_truth).__name__ == "ndarray":
        return any(verify_hybrid_correctness(completion_text, g) for g in ground_truth)
    text = " ".join(str(completion_text).split())
    truth = " ".join(str(ground_truth).split())
    if not truth:
        return False
    truth_value = _as_number(truth)
    if truth_value is None:
        return truth in text
    strict = _STRICT.findall(text)
    candidates = strict or _NUMBER.findall(text)
    if not candidates:
        return False
    final = _as_number(candidates[-1])
    return final is not None and abs(final - truth_value) <= 1e-9 * max(1.0, abs(truth_value))


def _spd_scorer() -> Any:
    """``spd_scorer`` (repository root): the one implementation of the masks, the hybrid prefix and the table."""
    try:
        import spd_scorer
    except ImportError as exc:
        raise ImportError(
            "the spd_scorer reward needs spd_scorer.py from the repository root: `pip install -e .` there, or put "
            "the repository root on PYTHONPATH."
        ) from exc
    return spd_scorer


def _mismatch_positions(draft_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
    return [i for i, (d, t) in enumerate(zip(draft_ids, target_ids)) if int(d) != int(t)]


def first_rejection(
    draft_ids: Sequence[int], target_ids: Sequence[int], decisions: Sequence[int]
) -> tuple[int | None, int]:
    """``(j, accepted_mismatches)``: the 0-based first rejected mismatch (None if none) and the mismatches before it.

    Example:
        >>> first_rejection([5, 6, 7, 8], [5, 9, 7, 3], [1, 0])  # per-mismatch decisions: accept 6, reject 8
        (3, 1)
        >>> first_rejection([5, 6, 7, 8], [5, 9, 7, 3], [0, 1, 0, 1])  # per-position decisions: accept both
        (None, 2)
    """
    import torch

    if len(draft_ids) != len(target_ids):
        raise ValueError(f"spd_draft_ids has {len(draft_ids)} tokens but spd_target_ids {len(target_ids)}.")
    mismatches = _mismatch_positions(draft_ids, target_ids)
    if len(decisions) == len(draft_ids):
        per_position = [int(a) for a in decisions]
    elif len(decisions) == len(mismatches):
        per_position = [1] * len(draft_ids)  # matching tokens are always accepted
        for position, accept in zip(mismatches, decisions):
            per_position[position] = int(accept)
    else:
        raise ValueError(
            f"spd_decisions has {len(decisions)} entries; expected one per draft token ({len(draft_ids)}) or one "
            f"per mismatch ({len(mismatches)})."
        )
    if not mismatches:
        return None, 0
    spd = _spd_scorer()
    mismatch = spd.mismatch_mask(torch.tensor([list(draft_ids)]), torch.tensor([list(target_ids)]))  # (1, K)
    chosen = torch.tensor([per_position])  # (1, K)
    j = int(spd.first_rejection(chosen, mismatch)[0])
    return (None if j >= len(draft_ids) else j), int(spd.accepted_mismatches(chosen, mismatch)[0])


def hybrid_prefix(
    context_ids: Sequence[int], draft_ids: Sequence[int], target_ids: Sequence[int], j: int | None
) -> list[int]:
    """``c + d_1..d_{j-1} + t_j`` for the 0-based first rejection ``j``; ``c + d`` when ``j`` is None.

    Example:
        >>> hybrid_prefix([1, 2], [5, 6, 7], [5, 9, 7], 1)
        [1, 2, 5, 9]
    """
    return _spd_scorer().hybrid_prefix_ids(context_ids, draft_ids, target_ids, len(draft_ids) if j is None else j)


def spd_reward(correct: bool, accepted_mismatches: int, num_draft_tokens: int, alpha: float, beta: float) -> float:
    """The A/B/C/D table for one sample (``spd_scorer.compute_reward_tensor``; see the module docstring).

    Example:
        >>> spd_reward(True, 2, 8, alpha=0.5, beta=1.0)  # A: 1 + 0.5 * 2 / 8
        1.125
        >>> spd_reward(False, 1, 8, alpha=0.5, beta=1.0)  # C
        -1.0
    """
    import torch

    reward = _spd_scorer().compute_reward_tensor(
        torch.tensor([bool(correct)]), torch.tensor([int(accepted_mismatches)]), int(num_draft_tokens), alpha, beta
    )
    return float(reward[0])


def scenario_of(correct: bool, accepted_mismatches: int) -> str:
    """``"A"``/``"B"``/``"C"``/``"D"`` (accepted >= 1 mismatch x answer correct)."""
    return _spd_scorer().scenario(bool(correct), int(accepted_mismatches))


# ---------------------------------------------------------------------------------------------- scoring
_SETTING_DEFAULTS: dict[str, Any] = {
    "target_model_url": None,  # base address or /v1/completions endpoint of the target server
    "model_path": None,  # the target's tokenizer (ids <-> text)
    "target_model_name": None,  # the request's "model" field; None leaves it out
    "alpha": 0.5,  # scenario A bonus per accepted mismatch, relative to K
    "beta": 1.0,  # scenario C penalty
    "max_tokens": 256,  # completion budget of the target
    "on_target_failure": "zero",  # "zero": score 0 and target_failed=True; "raise": RuntimeError
    "concurrency": 16,
    "timeout": 60.0,
    "retries": 3,
    "backoff": 0.5,
}


@dataclass
class _Prepared:
    settings: dict[str, Any]
    prompt_ids: list[int]
    generated_ids: list[int]  # d_1..d_{j-1} + t_j: the part of the hybrid prefix after the context
    num_draft_tokens: int
    num_mismatches: int
    accepted_mismatches: int
    accepted_length: int  # draft tokens kept in the hybrid prefix
    finished: bool = False  # the hybrid prefix already ends the answer (an end-of-sequence token): nothing to complete


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and value == "")


def _settings(extra_info: dict, kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(_SETTING_DEFAULTS))
    if unknown:
        raise ValueError(
            f"spd_scorer: unknown keyword arguments {unknown}; valid ones are {sorted(_SETTING_DEFAULTS)}."
        )
    settings = {}
    for key, default in _SETTING_DEFAULTS.items():
        value = kwargs.get(key)
        if not _present(value):
            value = extra_info.get(key)
        settings[key] = value if _present(value) else default
    for key in ("target_model_url", "model_path"):
        if not settings[key]:
            raise ValueError(
                f"spd_scorer: {key!r} is not set; put it in the sample's extra_info (spd_dataset --{key}) or pass it "
                "in custom_reward_function.reward_kwargs."
            )
    if settings["on_target_failure"] not in _FAILURE_MODES:
        raise ValueError(
            f"spd_scorer: on_target_failure={settings['on_target_failure']!r}; use one of {_FAILURE_MODES}."
        )
    return settings


def _ids(extra_info: dict, key: str) -> list[int]:
    value = extra_info.get(key)
    if value is None:
        raise ValueError(
            f"spd_scorer: extra_info has no {key!r} (keys: {sorted(extra_info)}). Build the data with "
            "`python -m verl.utils.dataset.spd_dataset`; the SPD rollout's spd_decisions must be copied into "
            "extra_info by the reward manager."
        )
    return [int(i) for i in value]


def _prepare(extra_info: dict | None, kwargs: dict[str, Any]) -> _Prepared:
    extra_info = dict(extra_info or {})
    settings = _settings(extra_info, kwargs)
    draft, target = _ids(extra_info, "spd_draft_ids"), _ids(extra_info, "spd_target_ids")
    decisions = _ids(extra_info, "spd_decisions")
    if extra_info.get("context_ids") is not None:
        context = _ids(extra_info, "context_ids")
    elif _present(extra_info.get("context_text")):
        context = get_tokenizer(settings["model_path"])(extra_info["context_text"], add_special_tokens=False)
        context = list(context["input_ids"])
    else:
        raise ValueError("spd_scorer: extra_info needs 'context_ids' or 'context_text' (the prompt before the draft).")
    j, accepted = first_rejection(draft, target, decisions)
    prompt = hybrid_prefix(context, draft, target, j)
    generated = prompt[len(context) :]
    # An end-of-sequence token in the committed tokens ends the answer there, as it ends decoding: the target is
    # not asked to continue past it (what it would write after the end is not part of the answer).
    eos = extra_info.get("eos_token_id")  # written by spd_dataset; else the target tokenizer's
    eos = int(eos) if _present(eos) else get_tokenizer(settings["model_path"]).eos_token_id
    finished = eos is not None and eos in generated
    if finished:
        generated = generated[: generated.index(eos) + 1]
    return _Prepared(
        settings=settings,
        prompt_ids=prompt,
        generated_ids=generated,
        num_draft_tokens=len(draft),
        num_mismatches=len(_mismatch_positions(draft, target)),
        accepted_mismatches=accepted,
        accepted_length=len(draft) if j is None else j,
        finished=finished,
    )


def _result(prep: _Prepared, outcome: GenerationOutcome, ground_truth: Any) -> dict[str, Any]:
    s = prep.settings
    failed = outcome.text is None
    if failed and s["on_target_failure"] == "raise":
        raise RuntimeError(
            f"spd_scorer: the target model at {completions_url(s['target_model_url'])} gave no completion after "
            f"{outcome.attempts} attempt(s) ({outcome.error}). Start it (python -m verl.serve MODEL --port N, or "
            "vllm serve) or set on_target_failure='zero' to score such samples 0."
        )
    correct = False
    if not failed:
        generated = get_tokenizer(s["model_path"]).decode(prep.generated_ids, skip_special_tokens=True)
        correct = verify_hybrid_correctness(generated + outcome.text, ground_truth)
    score = (
        0.0 if failed else spd_reward(correct, prep.accepted_mismatches, prep.num_draft_tokens, s["alpha"], s["beta"])
    )
    return {
        "score": float(score),
        "scenario": "failed" if failed else scenario_of(correct, prep.accepted_mismatches),
        "accepted_mismatches": prep.accepted_mismatches,
        "num_mismatches": prep.num_mismatches,
        "accepted_length": prep.accepted_length,
        "correct": bool(correct),
        "target_latency_s": float(outcome.latency_s),
        "target_failed": bool(failed),
    }


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict | None],
    **kwargs: Any,
) -> list[dict[str, Any] | float]:
    """Score a batch, sending every hybrid prefix to the target concurrently (``reward_manager=batch``).

    Rows whose data source is not ``spd_scorer`` go to :func:`verl.utils.reward_score.default_compute_score`.
    Rows are grouped by (target URL, served model, max_tokens) and each group is one :func:`vllm_generate_detailed`
    call, so ``concurrency`` requests are in flight per group.

    Args:
        data_sources, solution_strs, ground_truths, extra_infos: one entry per row (``solution_str`` is unused:
            the outcome depends on the decisions and the target, not on decoded response text).
        **kwargs: settings overriding ``extra_info`` (``target_model_url``, ``model_path``, ``target_model_name``,
            ``alpha``, ``beta``, ``max_tokens``, ``on_target_failure``, ``concurrency``, ``timeout``, ``retries``,
            ``backoff``).

    Returns:
        Per row, the dict of :func:`compute_score` (or the other scorer's result).
    """
    results: list[Any] = [None] * len(data_sources)
    groups: dict[tuple, list[tuple[int, _Prepared]]] = {}
    for row, (source, extra) in enumerate(zip(data_sources, extra_infos)):
        if source != DATA_SOURCE:
            from verl.utils.reward_score import default_compute_score

            results[row] = default_compute_score(source, solution_strs[row], ground_truths[row], extra)
            continue
        prep = _prepare(extra, kwargs)
        s = prep.settings
        groups.setdefault((s["target_model_url"], s["target_model_name"], int(s["max_tokens"])), []).append((row, prep))
    for (url, model, max_tokens), members in groups.items():
        for row, prep in members:
            if prep.finished:
                results[row] = _result(prep, GenerationOutcome("", None, 0.0, 0), ground_truths[row])
        members = [(row, prep) for row, prep in members if not prep.finished]
        if not members:
            continue
        s = members[0][1].settings
        outcomes = vllm_generate_detailed(
            url,
            [prep.prompt_ids for _, prep in members],
            max_tokens,
            model=model,
            concurrency=int(s["concurrency"]),
            timeout=float(s["timeout"]),
            retries=int(s["retries"]),
            backoff=float(s["backoff"]),
        )
        for (row, prep), outcome in zip(members, outcomes):
            results[row] = _result(prep, outcome, ground_truths[row])
    return results


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Score one SPD sample (data source ``spd_scorer``); see the module docstring for the inputs.

    Returns:
        ``{"score", "scenario" ("A"/"B"/"C"/"D", or "failed"), "accepted_mismatches", "num_mismatches",
        "accepted_length", "correct", "target_latency_s", "target_failed"}``.

    Raises:
        ValueError: a missing input (the message names the ``extra_info`` key).
        RuntimeError: the target stayed unreachable and ``on_target_failure="raise"``.
    """
    if data_source != DATA_SOURCE:
        raise ValueError(f"spd_scorer_reward.compute_score scores data_source {DATA_SOURCE!r}, got {data_source!r}.")
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
