"""The multi-turn rollout loop, engine-agnostic: generate -> interaction -> append, until the dialogue ends.

One round generates for every unfinished request in one batched ``InferenceEngine.generate_async`` call, then has each
request's interaction (``interaction_kwargs["name"]``) judge the turn (its score goes to
``reward_scores[interaction.name]``) and reply; the reply is appended as a user turn (loss mask 0), and the loop
repeats. A request ends when its interaction says so, when ``multi_turn.max_assistant_turns`` /
``max_user_turns`` is reached (the last assistant turn is still judged, its reply dropped), or when its response
budget (``rollout.response_length`` tokens, assistant and user tokens together) is spent; a user reply that does
not fit is cut and the request ends with reason ``length``.

Interaction calls, per request: ``start_interaction(request_id, **interaction_kwargs)`` before the first
generation, ``generate_response(instance_id, messages, generation_logits=<the turn's TokenCapture.to_dict() or
None>, **interaction_kwargs)`` after each assistant turn, ``finalize_interaction(instance_id)`` at the end.

``requests_to_batch`` turns finished requests into the rollout output contract of ``hf_rollout``: ``responses``
hold assistant and user tokens, ``response_mask`` is 1 only on the assistant's, ``attention_mask`` is 1 on every
real token; captured values land in the assistant's columns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from verl.workers.rollout.engine import InferenceEngine, SamplingParams
from verl.workers.rollout.schemas import (
    AsyncRolloutRequest,
    AsyncRolloutRequestStateEnum,
    FinishReasonTypeEnum,
    TokenizationSanityCheckModeEnum,
)

if TYPE_CHECKING:
    from verl.interactions.base import BaseInteraction

__all__ = [
    "TurnLoopSettings",
    "meta_sampling",
    "pack_rollouts",
    "generate_multiturn",
    "requests_to_batch",
    "run_multiturn",
]

_S = AsyncRolloutRequestStateEnum


@dataclass(frozen=True)
class TurnLoopSettings:
    """What the loop reads from ``actor_rollout_ref.rollout``."""

    response_length: int
    max_assistant_turns: int | None
    max_user_turns: int | None
    sampling: dict[str, Any]
    sanity_check_mode: str | None = None
    """``multi_turn.tokenization_sanity_check_mode``; when set it overrides each request's own."""

    @classmethod
    def from_config(cls, config: Any) -> TurnLoopSettings:
        """From a typed ``RolloutConfig``, a DictConfig or a plain dict of ``actor_rollout_ref.rollout``."""
        from verl.utils.config import omega_conf_to_dataclass
        from verl.workers.config import RolloutConfig

        if not isinstance(config, RolloutConfig):
            if isinstance(config, Mapping):
                config = {k: v for k, v in dict(config).items() if k != "micro_batch_size"}
            config = omega_conf_to_dataclass(config, RolloutConfig)
        mt = config.multi_turn
        sampling = {key: getattr(config, key) for key in ("do_sample", "temperature", "top_p", "top_k")}
        return cls(
            config.response_length,
            mt.max_assistant_turns,
            mt.max_user_turns,
            sampling,
            mt.tokenization_sanity_check_mode,
        )


def turn_sampling(sampling: dict, response_length: int, engine: Any, capture_spec: Any = None) -> SamplingParams:
    """The ``SamplingParams`` of every assistant turn from the loop's sampling dict (``do_sample``,
    ``temperature``, ``top_p``, ``top_k``, optional ``seed`` and ``stop_token_ids``)."""
    greedy = not sampling["do_sample"] or float(sampling["temperature"]) <= 0
    stop = sampling.get("stop_token_ids") or getattr(engine, "eos_token_ids", ())
    return SamplingParams(
        max_tokens=response_length,
        temperature=0.0 if greedy else float(sampling["temperature"]),
        top_p=1.0 if greedy else float(sampling["top_p"]),
        top_k=-1 if greedy else int(sampling["top_k"]),
        seed=sampling.get("seed"),
        stop_token_ids=tuple(stop),
        capture=capture_spec,
    )


def _check_interaction_names(requests: list[AsyncRolloutRequest], interactions: dict[str, Any]) -> None:
    for req in requests:
        name = req.interaction_kwargs.get("name")
        if name not in interactions:
            raise ValueError(
                f"request {req.request_id} (batch row {req.batch_data_id}): interaction_kwargs['name']={name!r} "
                f"is not a registered interaction; registered: {sorted(interactions)} (from "
                "actor_rollout_ref.rollout.multi_turn.interaction_config_path)"
            )


_CALL_STRIDE = 1_000_003  # > any batch size: the seeds of different rounds never collide


async def _generate_round(
    active: list[AsyncRolloutRequest], engine: InferenceEngine, tokenizer: Any, params: SamplingParams, round_: int
) -> None:
    """One batched assistant turn for ``active``: each asks for at most its remaining budget; with a seed, row ``i``
    of round ``c`` samples with ``seed + c * 1_000_003 + i`` (later turns do not replay the first one's stream)."""
    for req in active:
        req.transition(_S.RUNNING)
    row_params = []
    for i, req in enumerate(active):
        seed = None if params.seed is None else params.seed + round_ * _CALL_STRIDE + i
        row_params.append(params.replace(max_tokens=req.remaining_budget, seed=seed))
    start = time.perf_counter()
    outputs = await engine.generate_async([req.input_ids for req in active], row_params)
    latency = time.perf_counter() - start
    for req, out in zip(active, outputs, strict=True):
        req.add_assistant_tokens(list(out.token_ids), out.capture, tokenizer=tokenizer)
        req.update_metrics(generated_tokens=len(out.token_ids), generate_latency_s=latency)


async def _interact(
    req: AsyncRolloutRequest, interaction: BaseInteraction, instance_id: str, tokenizer: Any, settings: TurnLoopSettings
) -> None:
    """Have the interaction judge the latest assistant turn, then append its reply or end the request.

    Every assistant turn is judged exactly once, also the last one (so each gets a score); the reply is only
    appended when the dialogue goes on: not terminated, budget left, and neither turn limit reached.
    """
    req.transition(_S.INTERACTING)
    capture = req.generation_logits[-1].to_dict() if req.generation_logits else None
    kwargs = {k: v for k, v in req.interaction_kwargs.items() if k != "generation_logits"}
    start = time.perf_counter()
    done, reply, score, extra = await interaction.generate_response(
        instance_id, [dict(m) for m in req.messages], generation_logits=capture, **kwargs
    )
    req.update_metrics(interaction_latency_s=time.perf_counter() - start, interaction_data=extra)
    req.add_reward_score(interaction.name, score)
    max_a, max_u = settings.max_assistant_turns, settings.max_user_turns
    turn_limit = (max_a is not None and req.assistant_turns >= max_a) or (max_u is not None and req.user_turns >= max_u)
    if req.remaining_budget == 0:
        req.finalize(FinishReasonTypeEnum.LENGTH)
    elif done or turn_limit:
        req.finalize(FinishReasonTypeEnum.STOP)
    else:
        added = req.add_user_message(tokenizer, reply)
        req.update_metrics(user_tokens=len(added))
        if req.remaining_budget == 0:  # the reply was cut: no room left to answer it
            req.finalize(FinishReasonTypeEnum.LENGTH)


async def run_multiturn(
    requests: list[AsyncRolloutRequest],
    engine: InferenceEngine,
    interactions: dict[str, BaseInteraction],
    tokenizer: Any,
    config: Any,
    capture_spec: Any = None,
    sampling: dict | None = None,
) -> list[AsyncRolloutRequest]:
    """Run every request to completion; returns them (same objects, same order), all COMPLETED.

    Args:
        requests: PENDING requests (``AsyncRolloutRequest.from_messages``); ``max_response_len`` is set to
            ``rollout.response_length`` when larger.
        engine: the rollout's ``InferenceEngine`` (``verl.workers.rollout.engine``).
        interactions: ``{name: interaction}`` from ``initialize_interactions_from_config``.
        tokenizer: the policy's tokenizer (chat template, decoding, user-turn deltas).
        config: ``actor_rollout_ref.rollout`` (typed, DictConfig or dict) or a ``TurnLoopSettings``.
        capture_spec: ``CaptureSpec`` of every assistant turn, or None.
        sampling: overrides the config's do_sample/temperature/top_p/top_k (e.g. validation's ``val_kwargs``),
            ``seed``, and ``stop_token_ids`` (default: the engine's EOS ids; a turn ends at, and keeps, the first).

    Raises:
        ValueError: a request names an unknown interaction (before anything is generated).
    """
    settings = config if isinstance(config, TurnLoopSettings) else TurnLoopSettings.from_config(config)
    _check_interaction_names(requests, interactions)
    params = turn_sampling({**settings.sampling, **(sampling or {})}, settings.response_length, engine, capture_spec)
    instance_ids: dict[str, str] = {}
    for req in requests:
        req.max_response_len = min(req.max_response_len, settings.response_length)
        if settings.sanity_check_mode is not None:
            req.tokenization_sanity_check_mode = TokenizationSanityCheckModeEnum(settings.sanity_check_mode)
        interaction = interactions[req.interaction_kwargs["name"]]
        instance_ids[req.request_id] = await interaction.start_interaction(req.request_id, **req.interaction_kwargs)
    try:
        round_ = 0
        while active := [req for req in requests if not req.is_finished]:
            await _generate_round(active, engine, tokenizer, params, round_)
            round_ += 1
            await asyncio.gather(
                *(
                    _interact(
                        req,
                        interactions[req.interaction_kwargs["name"]],
                        instance_ids[req.request_id],
                        tokenizer,
                        settings,
                    )
                    for req in active
                )
            )
    finally:
        for req in requests:
            if req.request_id in instance_ids:
                await interactions[req.interaction_kwargs["name"]].finalize_interaction(instance_ids[req.request_id])
    return requests


def requests_to_batch(
    requests: list[AsyncRolloutRequest],
    prompt_length: int,
    response_length: int,
    pad_token_id: int,
    capture_spec: Any = None,
) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Finished requests as ``(tensors, non_tensors)`` for ``DataProto.from_dict``, B = len(requests).

    Tensors: ``prompts`` (B, P) left-padded; ``responses`` (B, R) right-padded, assistant and user tokens;
    ``input_ids``/``attention_mask``/``position_ids`` (B, P+R); ``response_mask`` (B, R) 1 on assistant tokens;
    with ``capture_spec``, ``rollout_log_probs`` (B, R) and the other capture tensors from ``captures_to_tensors``.
    Non-tensors: ``__num_turns__`` (int32), ``reward_scores`` (per-sample ``{name: [per-turn scores]}``),
    ``generation_logits`` (per-sample ``TokenCapture.to_dict()`` of all turns plus ``positions``, or None).
    """
    tensors, generation_logits = pack_rollouts(
        [r.prompt_ids for r in requests],
        [r.response_ids for r in requests],
        [r.response_loss_mask for r in requests],
        prompt_length,
        response_length,
        pad_token_id,
        names=[f"request {r.request_id}" for r in requests],
        captures=[r.generation_logits for r in requests],
        capture_spec=capture_spec,
    )
    reward_scores = np.empty(len(requests), dtype=object)
    reward_scores[:] = [dict(r.reward_scores) for r in requests]
    non_tensors = {
        "__num_turns__": np.array([r.num_turns for r in requests], dtype=np.int32),
        "reward_scores": reward_scores,
        "generation_logits": generation_logits,
    }
    return tensors, non_tensors


def pack_rollouts(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    response_masks: list[list[int]],
    prompt_length: int,
    response_length: int,
    pad_token_id: int,
    names: list[str] | None = None,
    captures: list[list[Any] | None] | None = None,
    capture_spec: Any = None,
    response_logprobs: list[list[float] | None] | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Rows of (prompt ids, response ids, response loss mask) as the rollout's padded tensors (see
    :func:`requests_to_batch`), and the per-sample ``generation_logits`` object array.

    ``captures``: per sample, one ``TokenCapture`` per assistant turn (or None); they land, in order, in the
    columns where the mask is 1. Without captures, ``response_logprobs`` (per sample, one value per response token,
    as an agent loop reports them) fill ``rollout_log_probs``.
    """
    bsz = len(prompt_ids)
    names = names or [f"row {i}" for i in range(bsz)]
    prompts = torch.full((bsz, prompt_length), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((bsz, prompt_length), dtype=torch.long)
    responses = torch.full((bsz, response_length), pad_token_id, dtype=torch.long)
    response_attn = torch.zeros((bsz, response_length), dtype=torch.long)
    response_mask = torch.zeros((bsz, response_length), dtype=torch.long)
    for i in range(bsz):
        n_p, n_r = len(prompt_ids[i]), len(response_ids[i])
        if n_p > prompt_length or n_r > response_length:
            raise ValueError(
                f"{names[i]}: prompt {n_p} / response {n_r} tokens exceed prompt_length="
                f"{prompt_length} / response_length={response_length}"
            )
        if len(response_masks[i]) != n_r:
            raise ValueError(f"{names[i]}: response mask has {len(response_masks[i])} entries for {n_r} tokens")
        if n_p:
            prompts[i, prompt_length - n_p :] = torch.tensor(prompt_ids[i])
            prompt_mask[i, prompt_length - n_p :] = 1
        if n_r:
            responses[i, :n_r] = torch.tensor(response_ids[i])
            response_attn[i, :n_r] = 1
            response_mask[i, :n_r] = torch.tensor(response_masks[i])
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    response_pos = prompt_pos[:, -1:] + torch.arange(1, response_length + 1).unsqueeze(0)  # (B, R)
    tensors = {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=-1),
        "attention_mask": torch.cat([prompt_mask, response_attn], dim=-1),
        "position_ids": torch.cat([prompt_pos, response_pos], dim=-1),
        "response_mask": response_mask,
    }
    per_sample: list[dict | None] = [None] * bsz
    if capture_spec is not None and captures is not None:
        from verl.workers.rollout.logit_capture import TokenCapture, captures_to_tensors

        joined = [TokenCapture.concat(turns) if turns else None for turns in captures]
        positions = [[j for j, m in enumerate(mask) if m] for mask in response_masks]
        tensors.update(captures_to_tensors(joined, response_length, capture_spec, positions))
        for i, capture in enumerate(joined):
            if capture is not None:
                per_sample[i] = {**capture.to_dict(), "positions": positions[i]}
    elif response_logprobs is not None and any(lp is not None for lp in response_logprobs):
        log_probs = torch.zeros(bsz, response_length)
        for i, values in enumerate(response_logprobs):
            if values is not None:
                if len(values) != len(response_ids[i]):
                    raise ValueError(f"{names[i]}: {len(values)} response_logprobs for {len(response_ids[i])} tokens")
                log_probs[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
        tensors["rollout_log_probs"] = log_probs
    generation_logits = np.empty(bsz, dtype=object)
    generation_logits[:] = per_sample
    return tensors, generation_logits


def meta_sampling(meta: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """Sampling overrides of one generation batch from its ``meta_info``: validation's ``val_kwargs``
    (``validate``), ``seed``, and the stop ids (``eos_token_id``)."""
    sampling: dict[str, Any] = {}
    if meta.get("validate", False):
        val = config.val_kwargs
        sampling = {"do_sample": val.do_sample, "temperature": val.temperature, "top_p": val.top_p, "top_k": val.top_k}
    if meta.get("seed") is not None:
        sampling["seed"] = int(meta["seed"])
    eos = meta.get("eos_token_id")
    if eos is not None:
        sampling["stop_token_ids"] = tuple(eos if isinstance(eos, (list, tuple)) else [eos])
    return sampling


def generate_multiturn(
    prompts: Any,
    engine: InferenceEngine,
    tokenizer: Any,
    config: Any,
    interactions: dict[str, BaseInteraction],
    capture_spec: Any = None,
) -> Any:
    """One batch of multi-turn rollouts, from the trainer's generation batch to the rollout output contract.

    Args:
        prompts: ``DataProto`` with left-padded ``input_ids``/``attention_mask`` (B, P), non-tensor ``raw_prompt``
            (the chat messages; ``data.return_raw_chat=True``) and ``interaction_kwargs`` (``name`` picks the
            interaction; with a single registered interaction it may be omitted); meta ``validate``, ``seed``,
            ``pad_token_id``, ``eos_token_id`` (the ids that end a turn; default the engine's).
        engine: the rollout's ``InferenceEngine``.
        config: typed ``actor_rollout_ref.rollout``.
        capture_spec: ``CaptureSpec`` or None (then ``calculate_log_probs`` still yields ``rollout_log_probs``).

    Returns:
        ``DataProto`` of B rows, see :func:`requests_to_batch`.
    """
    from verl.protocol import DataProto

    raw = prompts.non_tensor_batch.get("raw_prompt")
    if raw is None:
        raise ValueError("multi-turn rollouts need each sample's chat messages: set data.return_raw_chat=True")
    kwargs = prompts.non_tensor_batch.get("interaction_kwargs")
    ids, mask = prompts.batch["input_ids"], prompts.batch["attention_mask"]
    requests = []
    for i in range(len(prompts)):
        row_kwargs = dict(kwargs[i] or {}) if kwargs is not None else {}
        if "name" not in row_kwargs and len(interactions) == 1:
            row_kwargs["name"] = next(iter(interactions))
        requests.append(
            AsyncRolloutRequest.from_messages(
                tokenizer,
                list(raw[i]),
                request_id=f"row{i}",
                prompt_ids=ids[i][mask[i].bool()].tolist(),
                batch_data_id=i,
                interaction_kwargs=row_kwargs,
            )
        )
    meta = prompts.meta_info
    sampling = meta_sampling(meta, config)
    asyncio.run(run_multiturn(requests, engine, interactions, tokenizer, config, capture_spec, sampling))
    pad = meta.get("pad_token_id", tokenizer.pad_token_id)
    tensors, non_tensors = requests_to_batch(requests, ids.size(1), config.response_length, int(pad), capture_spec)
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
