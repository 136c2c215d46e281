"""The transformers engine: the one Hugging Face decode loop (rollouts, multi-turn, the OpenAI server, SPD drafts).

``HFEngine`` is a :class:`~verl.workers.rollout.engine.SteppableEngine` over a decoder-only causal LM. Requests wait
until no batch is running, then up to ``max_batch_size`` of them form one left-padded batch:

* the first ``step`` is one prefill forward with a fresh KV cache (``logits_to_keep=1`` when the model takes it);
* each later ``step`` feeds every row its last token (finished rows get the pad id), extends the attention mask by one
  and the positions by +1, and samples one token per row from the last position's float32 logits;
* a row ends at a stop token (kept) or after its ``max_tokens``; the batch ends when every row has.

Sampling: ``z / T``, then top-k, then top-p (``logit_capture.processed_logits``, the same filters, in the same order,
as transformers' ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` / ``TopPLogitsWarper``), ``softmax`` and
``torch.multinomial`` (``argmax`` when greedy). A batch whose rows share one distribution and carry no seed draws once
per step for the whole batch from the process's torch RNG: the same random numbers, in the same order, as
``model.generate`` (tested tensor for tensor). A row with a ``seed`` draws from its own ``torch.Generator``, so its
tokens do not depend on the rest of the batch; rows with different settings draw one by one.

Capture (``SamplingParams.capture``): each step's raw logits go through ``logit_capture.capture_from_logits`` with the
row's own settings; only the captured values are kept, never the ``(steps, vocab)`` logits of a whole response.

Weights: the engine generates with the module it was given. ``update_weights`` copies ``(name, tensor)`` pairs into
it; ``sleep`` / ``wake_up`` are for an owner that frees and re-gathers the module's storage (the hybrid worker).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from verl.utils.hf_models import forward_accepts, kv_cache_arg
from verl.workers.rollout.engine import SamplingParams, StepOutput, SteppableEngine
from verl.workers.rollout.logit_capture import TokenCapture, capture_from_logits, processed_logits

__all__ = ["HFEngine", "special_token_ids"]


def special_token_ids(module: nn.Module, tokenizer: Any = None) -> tuple[tuple[int, ...], int]:
    """``(eos ids, pad id)`` of a model: its generation config, then its config, then the tokenizer; pad falls back
    to the first EOS (as tokenizers without a pad token do)."""
    gen = getattr(module, "generation_config", None)
    cfg = getattr(module, "config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = getattr(cfg, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
    pad = getattr(gen, "pad_token_id", None)
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos_ids[0] if eos_ids else 0
    return eos_ids, int(pad)


@dataclass
class _Row:
    request_id: str
    params: SamplingParams
    generator: torch.Generator | None
    generated: int = 0
    done: bool = False


class _Batch:
    """The running batch: its rows, KV cache, attention mask and the last positions/tokens fed."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows
        self.cache: Any = None
        self.attention_mask: torch.Tensor | None = None
        self.position_ids: torch.Tensor | None = None
        self.last_tokens: torch.Tensor | None = None
        self.sequence: torch.Tensor | None = None  # only for models without a KV cache
        self.started = False
        first = rows[0].params
        # One draw per step for the whole batch: every row unseeded with the same distribution (the rollout case).
        self.shared = all(r.generator is None and _same_distribution(r.params, first) for r in rows)


def _same_distribution(a: SamplingParams, b: SamplingParams) -> bool:
    return a.greedy == b.greedy and a.distribution == b.distribution


class HFEngine(SteppableEngine):
    """A Hugging Face causal LM behind the engine contract.

    Args:
        module: a decoder-only causal LM; it is put in eval mode while it generates and restored afterwards.
        eos_token_ids, pad_token_id: default stop ids and the id fed to finished rows and left padding (default: from
            the model, :func:`special_token_ids`).
        max_batch_size: the most requests decoded together (None: every waiting request).
        max_model_len: the context length (default: the model's ``max_position_embeddings``).
    """

    def __init__(
        self,
        module: nn.Module,
        eos_token_ids: Sequence[int] | int | None = None,
        pad_token_id: int | None = None,
        max_batch_size: int | None = None,
        max_model_len: int | None = None,
    ):
        super().__init__()
        self.module = module
        default_eos, default_pad = special_token_ids(module)
        if eos_token_ids is None:
            eos_token_ids = default_eos
        self.eos_token_ids = tuple(
            int(e) for e in ([eos_token_ids] if isinstance(eos_token_ids, int) else eos_token_ids)
        )
        self.pad_token_id = int(default_pad if pad_token_id is None else pad_token_id)
        config = getattr(module, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.vocab_size = int(getattr(text_config, "vocab_size", 0) or 0)
        self.max_model_len = int(max_model_len or getattr(text_config, "max_position_embeddings", None) or 1 << 30)
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        self._waiting: deque[tuple[str, list[int], SamplingParams]] = deque()
        self._batch: _Batch | None = None
        self.batch_sizes: list[int] = []
        """Rows of every batch decoded so far (the server reports its batching with it)."""
        self._keep_last = forward_accepts(module, "logits_to_keep")
        # the KV-cache keyword: ``past_key_values`` up to transformers 5.19, ``cache`` after (None: no KV cache)
        self._cache_arg = kv_cache_arg(module)
        self._cached = self._cache_arg is not None

    @classmethod
    def from_pretrained(
        cls, model_path: str, device: str, dtype: str, *, trust_remote_code: bool, **kwargs: Any
    ) -> HFEngine:
        """Load ``model_path`` (weights, tokenizer's special ids) onto ``device`` (``auto``: CUDA when present)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"dtype must be one of {sorted(dtypes)}, got {dtype!r}")
        path = os.path.expanduser(model_path)
        module = AutoModelForCausalLM.from_pretrained(path, dtype=dtypes[dtype], trust_remote_code=trust_remote_code)
        module = module.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        eos, pad = special_token_ids(module, tokenizer)
        engine = cls(module, eos_token_ids=kwargs.pop("eos_token_ids", eos), pad_token_id=pad, **kwargs)
        engine.tokenizer = tokenizer
        return engine

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    # ------------------------------------------------------------------ SteppableEngine
    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise ValueError(f"request {request_id}: empty prompt")
        self._waiting.append((request_id, list(prompt_ids), params))

    def has_unfinished(self) -> bool:
        return bool(self._waiting) or self._batch is not None

    def abort(self, request_ids: Iterable[str]) -> None:
        ids = set(request_ids)
        self._waiting = deque(w for w in self._waiting if w[0] not in ids)
        if self._batch is not None:
            for row in self._batch.rows:
                if row.request_id in ids:
                    row.done = True
            self._end_batch_if_done()

    def step(self) -> list[StepOutput]:
        if self._batch is None and not self._start_batch():
            return []
        batch = self._batch
        with self._generating():
            logits = self._forward(batch)  # (B, V) float32
        tokens, captures = self._sample(logits, batch)
        outputs = []
        for i, row in enumerate(batch.rows):
            if row.done:
                tokens[i] = self.pad_token_id
                continue
            token = int(tokens[i])
            row.generated += 1
            reason = None
            if token in row.params.stop_token_ids and not row.params.ignore_eos:
                reason = "stop"
            elif row.generated >= row.params.max_tokens:
                reason = "length"
            row.done = reason is not None
            outputs.append(StepOutput(row.request_id, [token], captures[i], row.done, reason))
        batch.last_tokens = tokens
        self._end_batch_if_done()
        return outputs

    def build_capture(self, parts: list[Any], token_ids: list[int], params: SamplingParams) -> TokenCapture | None:
        if params.capture is None:
            return None
        if not parts:
            t, k, p = params.distribution
            empty = torch.zeros(0, max(self.vocab_size, 1))
            return capture_from_logits(empty, torch.zeros(0, dtype=torch.long), params.capture, t, k, p)
        return parts[0] if len(parts) == 1 else TokenCapture.concat(parts)

    # ------------------------------------------------------------------ weights
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 0) -> None:
        """Copy ``(name, tensor)`` pairs into the module's parameters/buffers (DTensors gathered first)."""
        targets = dict(self.module.named_parameters(remove_duplicate=False))  # tied weights under every name
        targets.update(dict(self.module.named_buffers()))
        with torch.no_grad():
            for name, tensor in weights:
                if name not in targets:
                    raise KeyError(f"weight {name!r} does not exist in the rollout module")
                if hasattr(tensor, "full_tensor"):
                    tensor = tensor.full_tensor()
                targets[name].copy_(tensor.to(device=targets[name].device, dtype=targets[name].dtype))

    # ------------------------------------------------------------------ internals
    @contextlib.contextmanager
    def _generating(self):
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.module.train(was_training)

    def _start_batch(self) -> bool:
        take = len(self._waiting) if self.max_batch_size is None else min(self.max_batch_size, len(self._waiting))
        if take == 0:
            return False
        entries = [self._waiting.popleft() for _ in range(take)]
        self.batch_sizes.append(take)
        device = self.device
        rows = []
        for rid, _prompt, params in entries:
            generator = None
            if params.seed is not None and not params.greedy:
                generator = torch.Generator(device=device)
                generator.manual_seed(params.seed)
            rows.append(_Row(rid, params, generator))
        batch = _Batch(rows)
        width = max(len(p) for _, p, _ in entries)
        input_ids = torch.full((take, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((take, width), dtype=torch.long)
        for i, (_, prompt, _) in enumerate(entries):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention_mask[i, width - len(prompt) :] = 1
        batch.attention_mask = attention_mask.to(device)
        batch.position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        batch.last_tokens = input_ids.to(device)  # the prefill feeds the whole prompt
        self._batch = batch
        return True

    def _forward(self, batch: _Batch) -> torch.Tensor:
        """One forward of the batch; the last position's logits ``(B, V)`` in float32."""
        if batch.started:  # every row, finished or not, gets one more position (as generate does)
            ones = batch.attention_mask.new_ones((batch.attention_mask.size(0), 1))
            batch.attention_mask = torch.cat([batch.attention_mask, ones], dim=-1)
            batch.position_ids = batch.position_ids[..., -1:] + 1
            step_ids = batch.last_tokens[:, None]
        else:  # prefill: the whole left-padded prompt
            step_ids = batch.last_tokens
            batch.started = True
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last else {}
        if self._cached:
            if batch.cache is None:
                from transformers import DynamicCache

                batch.cache = DynamicCache(config=self.module.config)  # what generate and the model would create
            kwargs.update({self._cache_arg: batch.cache, "use_cache": True})
            positions = batch.position_ids
        else:  # a forward without a KV cache: the whole sequence every step
            batch.sequence = step_ids if batch.sequence is None else torch.cat([batch.sequence, step_ids], dim=-1)
            step_ids, kwargs["use_cache"] = batch.sequence, False
            positions = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.module(
            input_ids=step_ids, attention_mask=batch.attention_mask, position_ids=positions, return_dict=True, **kwargs
        )
        if self._cached:
            batch.cache = getattr(out, self._cache_arg)
        return out.logits[:, -1].to(copy=True, dtype=torch.float32)

    def _sample(self, logits: torch.Tensor, batch: _Batch) -> tuple[torch.Tensor, list[TokenCapture | None]]:
        """One token per row (``(B,)`` long) and, per row, the capture of that token (or None)."""
        rows = batch.rows
        if batch.shared:
            first = rows[0].params
            if first.greedy:
                tokens = torch.argmax(logits, dim=-1)
            else:
                t, k, p = first.distribution
                probs = torch.softmax(processed_logits(logits, t, k, p), dim=-1)
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
        else:
            picked = []
            for i, row in enumerate(rows):
                if row.params.greedy or row.done:
                    picked.append(torch.argmax(logits[i]))
                    continue
                t, k, p = row.params.distribution
                probs = torch.softmax(processed_logits(logits[i], t, k, p), dim=-1)
                picked.append(torch.multinomial(probs, 1, generator=row.generator).squeeze(0))
            tokens = torch.stack(picked)
        return tokens, self._captures(logits, tokens, batch)

    @staticmethod
    def _captures(logits: torch.Tensor, tokens: torch.Tensor, batch: _Batch) -> list[TokenCapture | None]:
        rows = batch.rows
        wanted = [i for i, r in enumerate(rows) if r.params.capture is not None and not r.done]
        out: list[TokenCapture | None] = [None] * len(rows)
        if not wanted:
            return out
        groups: dict[tuple, list[int]] = {}
        for i in wanted:
            params = rows[i].params
            groups.setdefault((params.capture, params.distribution), []).append(i)
        for (spec, (t, k, p)), members in groups.items():
            index = torch.tensor(members, device=logits.device)
            capture = capture_from_logits(logits[index], tokens[index], spec, t, k, p)
            for j, i in enumerate(members):
                out[i] = _capture_row(capture, j)
        return out

    def _end_batch_if_done(self) -> None:
        if self._batch is not None and all(r.done for r in self._batch.rows):
            self._batch = None  # frees the KV cache


def _capture_row(capture: TokenCapture, j: int) -> TokenCapture:
    def row(value: torch.Tensor | None) -> torch.Tensor | None:
        return None if value is None else value[j : j + 1]

    return TokenCapture(
        capture.mode, row(capture.token_ids), row(capture.logprobs), row(capture.topk_logprobs),
        row(capture.topk_ids), row(capture.id_logprobs), row(capture.logits), capture.ids, capture.raw,
    )  # fmt: skip
