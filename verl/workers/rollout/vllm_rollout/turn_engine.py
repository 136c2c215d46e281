"""The vLLM engine as a multi-turn ``TurnEngine`` (``verl.workers.rollout.multiturn``): one batched call per round.

It drives the adapter's in-process engine (``ServerAdapter._run``), so a weight update reaches it and ``abort_all``
stops it, and it behaves like ``HFTurnEngine``: each prompt gets at most its own ``max_new_tokens``, a turn ends at
(and keeps) the first EOS, and the capture follows ``capture_spec`` with the same semantics (greedy turns capture
``log_softmax(logits)``, sampled ones the distribution they were drawn from, or the raw logits with ``spec.raw``).

Capture needs the engine started for it: vLLM's ``logprobs_mode`` is an engine setting, so the spec's
(``vllm_logprobs_mode``) must be the engine's, and ``max_logprobs`` must admit what the spec requests (token_ids:
``len(ids)`` when served through ``logprob_token_ids``, else the whole vocabulary). The
logprob-only spec the hybrid worker builds for ``calculate_log_probs`` asks for ``logprobs=0`` and matches the
engine that ``rollout.logprobs_mode`` started. A mismatch is refused when the turn engine is built, before any
generation.

Seeds: with ``sampling["seed"]`` row ``i`` of the ``c``-th call samples with ``seed + c * _CALL_STRIDE + i``, so a
dialogue's later turns do not replay the random stream of its first (each call's rows are the unfinished requests,
so a row index alone is not stable across turns). Without a seed the engine's own stream is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verl.workers.rollout.engine_io import SamplingRequest

if TYPE_CHECKING:
    from verl.workers.rollout.logit_capture import CaptureSpec, TokenCapture

__all__ = ["VLLMTurnEngine"]

_CALL_STRIDE = 1_000_003  # > any batch size: seeds of different calls never collide


def _turn_logprobs(spec: CaptureSpec, adapter: Any) -> tuple[int, list[int] | None]:
    """``SamplingParams.logprobs`` and ``logprob_token_ids`` for ``spec``, after checking the engine can serve them."""
    from verl.workers.rollout import logit_capture as lc

    model_config = adapter.llm.llm_engine.model_config
    have_mode, have_max = str(model_config.logprobs_mode), int(model_config.max_logprobs)
    want_mode = lc.vllm_logprobs_mode(spec)
    if have_mode != want_mode:
        raise ValueError(
            f"multi-turn capture {spec.mode!r} (raw={spec.raw}) needs vLLM logprobs_mode={want_mode!r}, but the "
            f"engine runs {have_mode!r}; set actor_rollout_ref.rollout.logprobs_mode (or logit_capture) so they agree "
            "(the engine is started from them)"
        )
    requested = lc.vllm_sampling_logprobs(spec, adapter.vocab_size)
    if have_max != -1 and (requested == -1 or requested > have_max):
        wanted = "the whole vocabulary (-1)" if requested == -1 else str(requested)
        raise ValueError(
            f"multi-turn capture {spec.mode!r} asks vLLM for {wanted} logprobs per token, but the engine was started "
            f"with max_logprobs={have_max}; enable actor_rollout_ref.rollout.logit_capture with this mode (or set "
            "engine_kwargs.vllm.max_logprobs)"
        )
    return requested, lc.vllm_logprob_token_ids(spec)


class VLLMTurnEngine:
    """``TurnEngine`` over a ``ServerAdapter``'s in-process vLLM engine.

    Args:
        adapter: the running ``ServerAdapter``.
        tokenizer: the policy's tokenizer (kept for symmetry with ``HFTurnEngine``; generation is token-in/out).
        pad_token_id: pad id (unused by vLLM; kept for symmetry).
        eos_token_id: the id that ends a turn (the request's ``eos_token_id``).
        capture_spec: ``CaptureSpec`` or None (no capture).

    Raises:
        ValueError: the engine's ``logprobs_mode`` / ``max_logprobs`` cannot serve ``capture_spec``.
    """

    def __init__(
        self,
        adapter: Any,  # vllm_rollout.ServerAdapter (not imported: it imports this module)
        tokenizer: Any,
        pad_token_id: int,
        eos_token_id: int,
        capture_spec: CaptureSpec | None = None,
    ):
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = int(eos_token_id)
        self.capture_spec = capture_spec
        requests = (None, None) if capture_spec is None else _turn_logprobs(capture_spec, adapter)
        self._logprobs, self._token_ids = requests  # SamplingParams.logprobs / .logprob_token_ids
        self._calls = 0

    def _request(self, sampling: dict, response_length: int) -> SamplingRequest:
        """``sampling`` (do_sample, temperature, top_p, top_k, seed) resolved as ``HFTurnEngine`` resolves it."""
        greedy = not sampling["do_sample"] or float(sampling["temperature"]) <= 0
        top_k = int(sampling["top_k"])
        seed = sampling.get("seed")
        return SamplingRequest(
            greedy=greedy,
            temperature=1.0 if greedy else float(sampling["temperature"]),
            top_p=1.0 if greedy else float(sampling["top_p"]),
            top_k=-1 if greedy or top_k <= 0 else top_k,
            response_length=response_length,
            seed=None if seed is None else int(seed) + self._calls * _CALL_STRIDE,
            calculate_log_probs=self.capture_spec is not None,
            eos_ids=(self.eos_token_id,),
            pad_id=self.pad_token_id,
        )

    def generate(
        self, prompt_ids: list[list[int]], max_new_tokens: list[int], sampling: dict
    ) -> list[tuple[list[int], TokenCapture | None]]:
        """Per prompt: the generated ids (cut after the first EOS, at most ``max_new_tokens[i]``) and its capture."""
        from verl.workers.rollout.logit_capture import capture_from_vllm

        limit = self.adapter.llm.llm_engine.model_config.max_model_len
        for i, (prompt, budget) in enumerate(zip(prompt_ids, max_new_tokens, strict=True)):
            if len(prompt) + budget > limit:
                raise ValueError(
                    f"multi-turn request {i}: {len(prompt)} tokens so far + {budget} new exceed the engine's "
                    f"max_model_len {limit}; raise actor_rollout_ref.rollout.max_model_len (or prompt_length)"
                )
        req = self._request(sampling, max(max_new_tokens, default=0))
        self._calls += 1
        rows = [i for i, budget in enumerate(max_new_tokens) if budget > 0]  # vLLM refuses max_tokens=0
        params = [
            self.adapter._sampling_params(req, i, self._logprobs, max_new_tokens[i], self._token_ids) for i in rows
        ]
        tokens, logprobs, _aborted = self.adapter._run([prompt_ids[i] for i in rows], params)
        generated: dict[int, tuple[list[int], list]] = dict(zip(rows, zip(tokens, logprobs, strict=True)))
        results: list[tuple[list[int], TokenCapture | None]] = []
        for i in range(len(prompt_ids)):
            ids, lps = generated.get(i, ([], []))
            n = ids.index(self.eos_token_id) + 1 if self.eos_token_id in ids else len(ids)
            capture = None
            if self.capture_spec is not None:
                capture = capture_from_vllm(ids[:n], lps[:n], self.capture_spec, self.adapter.vocab_size)
            results.append((list(ids[:n]), capture))
        return results
