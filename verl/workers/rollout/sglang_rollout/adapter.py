"""SGLang rollout: our request -> ``sglang.Engine.generate`` -> our output contract. Imports without SGLang.

The engine is a seam: anything with SGLang's offline-engine methods (``generate``, and for syncs
``update_weights_from_tensor`` / ``flush_cache``, for memory ``release_memory_occupation`` /
``resume_memory_occupation``) can be passed as ``engine=``; tests pass a fake returning literal dicts shaped as
SGLang 0.5.2 returns them (``reference/engine_logprobs.md`` 1.3). Without one, ``sglang.Engine`` is started.

Translation (facts from SGLang's documented API):

* Request: ``generate(input_ids=[[ids] per row], sampling_params={...}, return_logprob=..., top_logprobs_num=...,
  token_ids_logprob=...)``; one request per row (``n`` is the trainer's repeat). ``sampling_params`` holds
  ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``top_k``, ``stop_token_ids``, ``ignore_eos``,
  ``skip_special_tokens=False``. SGLang 0.5.2 has no per-request seed, so ``meta_info["seed"]`` is not forwarded.
* Response (one dict per row): ``output_ids`` are the generated ids including the EOS; with ``return_logprob``,
  ``meta_info["output_token_logprobs"]`` is ``[(logprob, token_id, text|None), ...]`` of the same length (checked);
  ``input_token_logprobs`` starts with ``None`` and is ignored. ``finish_reason["type"] == "abort"`` keeps the
  tokens generated so far.
* Logprob semantics: SGLang 0.5.x returns ``log_softmax(z / T)`` without top-k/top-p renormalisation (greedy:
  ``log_softmax(z)``), which equals the actor's recomputation for any top-k/top-p.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from verl.protocol import DataProto
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.engine_io import SamplingRequest, assemble_output, prompt_token_lists, sampling_request
from verl.workers.rollout.hf_rollout import as_rollout_config
from verl.workers.rollout.sglang_rollout.utils import get_named_tensor_buckets

__all__ = ["SGLangAdapter", "parse_generate_output", "sglang_generate_kwargs"]


def sglang_generate_kwargs(
    token_prompts: list[list[int]], req: SamplingRequest, capture: Any = None, vocab_size: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``Engine.generate`` for one batch (one request per row)."""
    sampling = {
        "max_new_tokens": req.response_length,
        "temperature": 0.0 if req.greedy else req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "stop_token_ids": list(req.eos_ids),
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": False,
        "n": 1,
    }
    kwargs: dict[str, Any] = {"input_ids": [list(p) for p in token_prompts], "sampling_params": sampling}
    if capture is not None:
        from verl.workers.rollout.logit_capture import sglang_sampling_kwargs

        kwargs.update(sglang_sampling_kwargs(capture, vocab_size))
    elif req.calculate_log_probs:
        kwargs.update(return_logprob=True, top_logprobs_num=0)
    return kwargs


def parse_generate_output(output: Mapping[str, Any], req: SamplingRequest) -> tuple[list[int], list[float] | None]:
    """One response dict -> (generated ids, sampled-token logprobs or None).

    Raises:
        ValueError: more ids than ``response_length``, or logprobs that do not line up with ``output_ids``.
    """
    tokens = [int(t) for t in output["output_ids"]]
    if len(tokens) > req.response_length:
        raise ValueError(f"SGLang returned {len(tokens)} tokens for max_new_tokens={req.response_length}")
    pairs = (output.get("meta_info") or {}).get("output_token_logprobs")
    if pairs is None:
        return tokens, None
    if len(pairs) != len(tokens) or any(int(p[1]) != t for p, t in zip(pairs, tokens)):
        raise ValueError(
            f"SGLang output_token_logprobs ({len(pairs)} entries) do not match output_ids ({len(tokens)} ids); "
            "see reference/engine_logprobs.md pitfall 5"
        )
    return tokens, [float(p[0]) for p in pairs]


class SGLangAdapter(BaseRollout):
    """The SGLang engine behind the rollout interface; ``ServerAdapter`` / ``SGLangRolloutWithLogit`` subclass it.

    Args:
        model: the HF model directory (or None with ``model_config.path``); unused when ``engine`` is given.
        config: typed ``RolloutConfig`` (a DictConfig or dict is converted).
        model_config: ``actor_rollout_ref.model``, optional.
        device_mesh: unused.
        engine: an engine object (the seam); None starts ``sglang.Engine``.
        vocab_size: the model's vocabulary size (read from the model's config.json when None).
        seed: the engine's ``random_seed``.
    """

    #: capture the sampled token's logprob even when ``logit_capture.enable`` is off (the with-logit engine).
    capture_by_default = False

    def __init__(
        self,
        model: Any = None,
        config: Any = None,
        model_config: Any = None,
        device_mesh: Any = None,
        engine: Any = None,
        vocab_size: int | None = None,
        seed: int = 0,
        **_,
    ):
        typed, _micro = as_rollout_config(config)
        super().__init__(typed, model_config, device_mesh)
        from verl.workers.rollout.logit_capture import CaptureSpec

        self.capture = CaptureSpec.from_config(typed.logit_capture)
        if self.capture is None and self.capture_by_default:
            self.capture = CaptureSpec()
        self.path = model if isinstance(model, (str, os.PathLike)) else getattr(model_config, "path", None)
        self.engine = engine if engine is not None else self._start_engine(seed)
        self.vocab_size = vocab_size or self._read_vocab_size()

    def _start_engine(self, seed: int) -> Any:
        import sglang

        cfg = self.config
        if not self.path:
            raise ValueError("the SGLang rollout needs the model directory (first argument or model_config.path)")
        kwargs = {
            "model_path": os.fspath(self.path),
            "dtype": cfg.dtype,
            "mem_fraction_static": cfg.gpu_memory_utilization,
            "enable_memory_saver": cfg.free_cache_engine,
            "tp_size": cfg.tensor_model_parallel_size,
            "load_format": cfg.load_format,
            "skip_tokenizer_init": True,
            "random_seed": seed,
            "trust_remote_code": self.model_config is not None and self.model_config.trust_remote_code,
        }
        kwargs.update((cfg.engine_kwargs or {}).get("sglang") or {})
        return sglang.Engine(**kwargs)

    def _read_vocab_size(self) -> int | None:
        if not self.path:
            return None
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(os.fspath(self.path)).vocab_size)

    def _default_special_ids(self) -> tuple[Any, int | None]:
        if not self.path:
            return None, None
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(os.fspath(self.path))
        return tokenizer.eos_token_id, tokenizer.pad_token_id

    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """One response per prompt row; output keys as in ``hf_rollout`` (plus the capture tensors when on)."""
        start = time.perf_counter()
        meta = prompts.meta_info
        defaults = (None, None) if "eos_token_id" in meta else self._default_special_ids()
        req = sampling_request(self.config, meta, *defaults)
        token_prompts = prompt_token_lists(prompts)
        if self.capture is not None:
            from verl.workers.rollout.logit_capture import check_capture_budget

            check_capture_budget(self.capture, len(token_prompts), req.response_length, self.vocab_size or 0)
        outputs = self.engine.generate(**sglang_generate_kwargs(token_prompts, req, self.capture, self.vocab_size))
        if isinstance(outputs, Mapping):
            outputs = [outputs]
        if len(outputs) != len(token_prompts):
            raise ValueError(f"SGLang returned {len(outputs)} outputs for {len(token_prompts)} prompts")
        parsed = [parse_generate_output(o, req) for o in outputs]
        tokens = [t for t, _ in parsed]
        extra, log_probs = None, None
        if self.capture is not None:
            from verl.workers.rollout.logit_capture import capture_from_sglang, captures_to_tensors

            captures = [capture_from_sglang(o, self.capture) for o in outputs]
            extra = captures_to_tensors(captures, req.response_length, self.capture)
        elif req.calculate_log_probs:
            log_probs = [lp or [] for _, lp in parsed]
        out = assemble_output(prompts, tokens, log_probs, req, extra)
        if extra is not None:
            out.batch["rollout_log_probs"] = out.batch["rollout_log_probs"] * out.batch["response_mask"].float()
        aborted = sum(((o.get("meta_info") or {}).get("finish_reason") or {}).get("type") == "abort" for o in outputs)
        out.meta_info["timing"] = {"generate_sequences": time.perf_counter() - start}
        out.meta_info["aborted_rows"] = int(aborted)
        if self.capture is not None:  # tells consumers (reward managers) the capture tensors are there
            out.meta_info["logit_capture"] = self.capture.describe()
        return out

    @property
    def capture_spec(self) -> Any:
        """The ``CaptureSpec`` this engine captures with, or None."""
        return self.capture

    def turn_engine(self, tokenizer: Any, pad_token_id: int, eos_token_id: Any, capture_spec: Any = None) -> Any:
        """Multi-turn generation is not wired to SGLang yet: use rollout.name=hf or vllm for multi-turn rollouts."""
        raise NotImplementedError(
            "actor_rollout_ref.rollout.multi_turn with the SGLang engine is not implemented yet; use "
            "actor_rollout_ref.rollout.name=vllm or hf for multi-turn rollouts"
        )

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], **kwargs) -> None:
        """Send HF-named weights bucket by bucket (``update_weights_from_tensor``), then flush the prefix cache."""
        size = kwargs.get("bucket_bytes") or int(self.config.update_weights_bucket_megabytes) << 20
        for bucket in get_named_tensor_buckets(weights, size):
            named = [(n, t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in bucket]
            self.engine.update_weights_from_tensor(named_tensors=named, load_format=None, flush_cache=False)
        self.engine.flush_cache()

    async def resume(self, tags: Sequence[str]) -> None:
        """Re-acquire ``tags`` (``weights``, ``kv_cache``) after ``release`` (engine started with the memory saver)."""
        if self.config.free_cache_engine:
            self.engine.resume_memory_occupation(tags=list(tags) if tags else None)

    async def release(self) -> None:
        """Free weights and KV cache while training runs (engine started with the memory saver)."""
        if self.config.free_cache_engine:
            self.engine.release_memory_occupation()
