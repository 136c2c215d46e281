"""An ``sglang.Engine`` double for CPU tests, shaped as SGLang 0.5.23 builds its answers.

``test_sglang_contract.py`` checks this double against the installed SGLang source: every method exists on
``sglang.Engine`` with the same ``async``-ness and only parameters the real one takes, the methods that run SGLang's
own event loop (``self.loop.run_until_complete``) are exactly ``RUNS_OWN_LOOP``, and every ``meta_info`` key written
here is one SGLang writes. Like the real engine, those methods fail when called from a thread whose event loop is
running ("Cannot run the event loop while another loop is running").

Answers (``skip_tokenizer_init=True``): one dict per request, ``{"output_ids": [...], "meta_info": {...}}`` with
``id``, ``finish_reason`` (``{"type": "stop", "matched": id}`` / ``{"type": "length", "length": n}``),
``prompt_tokens``, ``weight_version``, ``num_retractions``, ``reasoning_tokens``, ``completion_tokens``,
``cached_tokens``; with ``return_logprob``: ``input_token_logprobs`` (``[(None, first prompt id, None)]``: SGLang's
default start), ``output_token_logprobs`` ``[(logprob, id, None), ...]``, ``output_token_logprobs_length``, and
``input_top_logprobs`` / ``output_top_logprobs`` (``top_logprobs_num > 0``) or ``input_token_ids_logprobs`` /
``output_token_ids_logprobs`` (``token_ids_logprob``). Logprobs are ``log_softmax(z / T)`` of the raw logits, without
top-k/top-p renormalisation (``log_softmax(z)`` when greedy), as SGLang returns them.

Two ways to answer:

* ``model=`` a Hugging Face causal LM: real generation through ``HFEngine`` (the sampled tokens follow SGLang's
  sampling parameters; weight updates land in the model);
* ``replies=`` + ``logits=``: scripted token lists and known logits per (call, row), for exact expected values;
* ``outputs=``: literal answer dicts, returned as they are (malformed answers, aborts).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

#: methods that run SGLang's own event loop (``self.loop.run_until_complete``) in 0.5.23
RUNS_OWN_LOOP = frozenset(
    {"generate", "update_weights_from_tensor", "flush_cache", "release_memory_occupation", "resume_memory_occupation"}
)


class LoopConflict(RuntimeError):
    """What SGLang's blocking methods raise inside a running event loop."""


def sglang_response(
    rid: str,
    prompt: Sequence[int],
    tokens: Sequence[int],
    raw_logits: torch.Tensor | None,
    temperature: float,
    finish: dict,
    return_logprob: bool = False,
    top_logprobs_num: int = 0,
    token_ids_logprob: Sequence[int] | None = None,
) -> dict:
    """One answer as SGLang 0.5.23 returns it (module docstring); ``raw_logits`` ``(L, V)`` of the ``L`` tokens."""
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": finish,
        "prompt_tokens": len(prompt),
        "weight_version": "default",
        "num_retractions": 0,
        "reasoning_tokens": 0,
        "completion_tokens": len(tokens),
        "cached_tokens": 0,
    }
    if return_logprob:
        t = 1.0 if temperature <= 0 else temperature
        logp = torch.log_softmax(raw_logits.float() / t, dim=-1)  # (L, V)

        def entry(pos: int, tid: int) -> tuple:
            return (float(logp[pos, tid]), int(tid), None)

        meta["input_token_logprobs"] = [(None, int(prompt[0]), None)]
        meta["output_token_logprobs"] = [entry(i, tok) for i, tok in enumerate(tokens)]
        meta["output_token_logprobs_length"] = len(tokens)
        if top_logprobs_num:
            tops = torch.topk(logp, top_logprobs_num, dim=-1).indices.tolist() if len(tokens) else []
            meta["input_top_logprobs"] = [None]
            meta["output_top_logprobs"] = [[entry(i, tid) for tid in tops[i]] for i in range(len(tokens))]
        if token_ids_logprob is not None:
            meta["input_token_ids_logprobs"] = [None]
            meta["output_token_ids_logprobs"] = [
                [entry(i, tid) for tid in token_ids_logprob] for i in range(len(tokens))
            ]
    return {"output_ids": list(tokens), "meta_info": meta}


def _per_request(value: Any, n: int) -> list:
    return list(value) if isinstance(value, list) else [value] * n


class SGLangEngineDouble:
    """``sglang.Engine`` stand-in (module docstring). ``calls`` records ``(method, kwargs)`` in order."""

    def __init__(
        self,
        model: Any = None,
        replies: Sequence[Sequence[int]] | None = None,
        logits: Callable[[int, int, int], torch.Tensor] | None = None,
        outputs: list[dict] | None = None,
        vocab_size: int = 512,
        **server_args: Any,
    ):
        if sum(x is not None for x in (model, replies, outputs)) != 1:
            raise ValueError("give one of model= (real generation), replies= (scripted) or outputs= (literal answers)")
        self.outputs = outputs
        self.server_args = dict(server_args)
        self.model, self.replies, self.vocab_size = model, replies, vocab_size
        self.logits = logits or (lambda call, row, length: torch.zeros(length, vocab_size))
        self.calls: list[tuple[str, dict]] = []
        self.released: set[str] = set()
        self._rids = itertools.count()
        self._engine = None
        if model is not None:
            from verl.workers.rollout.hf_engine import HFEngine

            self._engine = HFEngine(model)

    def _enter(self, method: str, kwargs: dict) -> None:
        if method in RUNS_OWN_LOOP:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                raise LoopConflict(
                    f"sglang.Engine.{method} runs its own event loop (run_until_complete): Cannot run the event loop "
                    "while another loop is running"
                )
        self.calls.append((method, kwargs))

    # ---------------------------------------------------------------- sglang.Engine's methods
    def generate(
        self,
        prompt=None,
        sampling_params=None,
        input_ids=None,
        return_logprob=False,
        logprob_start_len=None,
        top_logprobs_num=None,
        token_ids_logprob=None,
        stream=False,
        rid=None,
    ):
        kwargs = {
            "input_ids": input_ids,
            "sampling_params": sampling_params,
            "return_logprob": return_logprob,
            "top_logprobs_num": top_logprobs_num,
            "token_ids_logprob": token_ids_logprob,
        }
        self._enter("generate", kwargs)
        if self.released:
            raise RuntimeError(f"generate() while {sorted(self.released)} are released (release_memory_occupation)")
        if prompt is not None or stream:
            raise NotImplementedError("the double takes input_ids and stream=False, as the rollout sends")
        if self.outputs is not None:
            return self.outputs
        single = bool(input_ids) and isinstance(input_ids[0], int)
        prompts = [input_ids] if single else list(input_ids)
        n = len(prompts)
        sampling = _per_request(sampling_params or {}, n)
        want = _per_request(return_logprob, n)
        tops = _per_request(top_logprobs_num or 0, n)
        ids_lists = token_ids_logprob if (token_ids_logprob and isinstance(token_ids_logprob[0], list)) else None
        ids_per_row = ids_lists if ids_lists is not None else [token_ids_logprob] * n
        call = sum(1 for c in self.calls if c[0] == "generate") - 1  # 0 for the first call
        if self.model is not None:
            produced = self._generate_with_model(prompts, sampling)
        else:
            produced = []
            for row, params in enumerate(sampling):
                reply = list(self.replies[row % len(self.replies)])[: params.get("max_new_tokens", 128)]
                produced.append((reply, self.logits(call, row, len(reply))))
        outputs = []
        for row, (prompt_ids, params, (tokens, raw)) in enumerate(zip(prompts, sampling, produced)):
            stops = set(params.get("stop_token_ids") or [])
            if tokens and tokens[-1] in stops and not params.get("ignore_eos", False):
                finish = {"type": "stop", "matched": int(tokens[-1])}
            else:
                finish = {"type": "length", "length": len(tokens)}
            outputs.append(
                sglang_response(
                    f"rid-{next(self._rids)}",
                    prompt_ids,
                    tokens,
                    raw,
                    float(params.get("temperature", 1.0)),
                    finish,
                    bool(want[row]),
                    int(tops[row] or 0),
                    ids_per_row[row],
                )
            )
        return outputs[0] if single else outputs

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        self._enter("update_weights_from_tensor", {"names": [n for n, _ in named_tensors], "flush_cache": flush_cache})
        if "weights" in self.released:
            raise RuntimeError("update_weights_from_tensor() while the weights are released")
        if self._engine is not None:
            self._engine.update_weights(named_tensors)

    def flush_cache(self):
        self._enter("flush_cache", {})

    def release_memory_occupation(self, tags=None):
        self._enter("release_memory_occupation", {"tags": tags})
        self.released |= set(tags) if tags else {"weights", "kv_cache"}

    def resume_memory_occupation(self, tags=None):
        self._enter("resume_memory_occupation", {"tags": tags})
        self.released -= set(tags) if tags else set(self.released)

    def shutdown(self):
        self.calls.append(("shutdown", {}))

    # ---------------------------------------------------------------- real generation
    def _generate_with_model(self, prompts: list[list[int]], sampling: list[dict]) -> list[tuple[list[int], Any]]:
        from verl.workers.rollout.engine import SamplingParams
        from verl.workers.rollout.logit_capture import CaptureSpec

        params = []
        for p in sampling:
            params.append(
                SamplingParams(
                    max_tokens=int(p.get("max_new_tokens", 128)),
                    temperature=float(p.get("temperature", 1.0)),
                    top_p=float(p.get("top_p", 1.0)),
                    top_k=int(p.get("top_k", -1)),
                    seed=p.get("sampling_seed"),
                    stop_token_ids=tuple(p.get("stop_token_ids") or ()),
                    ignore_eos=bool(p.get("ignore_eos", False)),
                    capture=CaptureSpec("full", raw=True, max_bytes=1 << 40),
                )
            )
        outputs = self._engine.generate(prompts, params)
        return [(o.token_ids, o.capture.logits) for o in outputs]
