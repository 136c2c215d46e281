"""Logit capture: what the rollout engine hands back per generated token, the same for every engine.

``actor_rollout_ref.rollout.logit_capture`` (DESIGN.md section 5) picks a mode. Every mode also keeps the sampled
token's logprob.

===========  =====================================================  ===================  ============================
mode         kept per generated token                               payload bytes/token  batch key(s)
===========  =====================================================  ===================  ============================
logprob      logprob of the sampled token                           4                    ``rollout_log_probs``
topk         the k largest logprobs and their token ids             8k (fp32 + int32)    ``rollout_topk_logprobs``,
                                                                                         ``rollout_topk_ids``
token_ids    logprobs of the fixed ids ``spec.ids``, in that order  4n                   ``rollout_token_id_logprobs``
full         the whole logit vector, stored in ``spec.dtype``       4V / 2V              ``rollout_logits``
===========  =====================================================  ===================  ============================

Semantics (identical for hf, vLLM and SGLang; the engine adapters ask each engine for exactly this):

* ``raw=True``: ``log_softmax(z)`` of the model's raw logits ``z`` (no temperature, no filtering).
* ``raw=False`` ("processed", the default): the distribution the token was actually sampled from:
  ``z / T``, then top-k (keep every token whose value is >= the k-th largest), then top-p (keep the smallest set of
  most likely tokens whose probability mass reaches ``top_p``; the most likely token is always kept), filtered tokens
  set to ``-inf``, then ``log_softmax`` over what survives (so the values are renormalised on the kept support).
  Greedy decoding (``T = 0``) counts as ``T = 1`` with no filtering.
* Filtered tokens appear as ``-inf`` in ``topk`` values (when fewer than k tokens survive; their ids are then
  arbitrary) and in ``token_ids`` values. The sampled token always has a finite logprob: a ``-inf`` there means the
  sampling parameters passed here are not those the engine used, and is an error.
* ``full`` stores the (raw or processed) logits themselves; processed logits are ``z / T`` with ``-inf`` where
  filtered. Logits are defined up to a per-row constant: SGLang can only return log-probabilities (section 1.5 of
  ``reference/engine_logprobs.md``), which describe the same distribution.

Per engine:

* hf: ``generate(..., output_logits=True)`` returns raw logits; :func:`capture_from_logits` applies the processing.
* vLLM: ``logprobs_mode`` is an engine-level setting and must match ``spec.raw``: :func:`vllm_engine_kwargs` gives
  it (``raw_logprobs`` / ``processed_logprobs``, or ``*_logits`` in full mode) with ``max_logprobs``;
  :func:`vllm_sampling_logprobs` gives ``SamplingParams.logprobs``. token_ids mode asks for exactly ``spec.ids``
  through ``SamplingParams.logprob_token_ids`` (:func:`vllm_logprob_token_ids`) where the installed vLLM has it
  (0.32: at most 128 ids, with ``logprobs == len(ids)``); otherwise (older vLLM, more ids) for the whole vocabulary.
  Both paths read the same tensor in vLLM's sampler, so they give identical values.
* SGLang: :func:`sglang_sampling_kwargs` gives the request arguments. SGLang 0.5.x returns ``log_softmax(z / T)``
  without top-k/top-p renormalisation, so ``raw=False`` matches only with ``top_k=-1, top_p=1``; ``raw=True`` needs
  the server started with ``SGLANG_RETURN_ORIGINAL_LOGPROB=1`` (``RETURN_ORIGINAL_LOGPROB=1`` on 0.5.2).

Per-sample, per-turn captures are :class:`TokenCapture`; :func:`captures_to_tensors` packs a batch for
``DataProto`` and :func:`generation_logits_from_batch` unpacks one sample for an interaction or reward function.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "CAPTURE_MODES",
    "CAPTURE_TENSOR_KEYS",
    "CaptureSpec",
    "TokenCapture",
    "bytes_per_token",
    "capture_from_logits",
    "capture_from_sglang",
    "capture_from_vllm",
    "capture_from_vllm_flat",
    "captures_to_tensors",
    "check_capture_budget",
    "estimate_capture_bytes",
    "generation_logits_from_batch",
    "processed_logits",
    "sglang_sampling_kwargs",
    "vllm_engine_kwargs",
    "vllm_logprob_token_ids",
    "vllm_logprobs_mode",
    "vllm_max_logprob_token_ids",
    "vllm_sampling_logprobs",
]

CAPTURE_MODES = ("logprob", "topk", "token_ids", "full")
CAPTURE_TENSOR_KEYS: tuple[str, ...] = (
    "rollout_log_probs",  # (B, R) float32, every mode
    "rollout_topk_logprobs",  # (B, R, k) float32, topk
    "rollout_topk_ids",  # (B, R, k) long, topk; -1 on padding
    "rollout_token_id_logprobs",  # (B, R, n) float32, token_ids
    "rollout_logits",  # (B, R, V) spec.dtype, full
)
_FIELDS = {  # batch key -> TokenCapture field
    "responses": "token_ids", "rollout_log_probs": "logprobs", "rollout_topk_logprobs": "topk_logprobs",
    "rollout_topk_ids": "topk_ids", "rollout_token_id_logprobs": "id_logprobs", "rollout_logits": "logits",
}  # fmt: skip
_KEY = "actor_rollout_ref.rollout.logit_capture"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture; the engine-independent view of ``LogitCaptureConfig`` (``enable`` is implied)."""

    mode: str = "logprob"
    k: int = 20
    ids: tuple[int, ...] = ()
    raw: bool = False
    dtype: torch.dtype = torch.float32
    max_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        if self.mode not in CAPTURE_MODES:
            raise ValueError(f"{_KEY}.mode={self.mode!r} is not one of {list(CAPTURE_MODES)}")
        object.__setattr__(self, "ids", tuple(int(i) for i in self.ids))
        dtype = _DTYPES.get(self.dtype, self.dtype) if isinstance(self.dtype, str) else self.dtype
        if dtype not in _DTYPES.values():
            raise ValueError(f"{_KEY}.dtype={self.dtype!r} must be one of {list(_DTYPES)}")
        object.__setattr__(self, "dtype", dtype)
        if self.mode == "topk" and self.k < 1:
            raise ValueError(f"{_KEY}.k={self.k} must be >= 1")
        if self.mode == "token_ids" and not self.ids:
            raise ValueError(f"{_KEY}.mode=token_ids needs token ids; set {_KEY}.ids='[id1,id2]'")

    @property
    def n(self) -> int:
        """Number of fixed ids captured in token_ids mode."""
        return len(self.ids)

    @classmethod
    def from_config(cls, cfg: Any) -> CaptureSpec | None:
        """From a ``LogitCaptureConfig``, a DictConfig or a dict (validated as the config is); None when disabled."""
        from verl.workers.config.rollout import LogitCaptureConfig

        if cfg is None:
            return None
        from verl.utils.config import as_config

        logit_capture = as_config(cfg, LogitCaptureConfig)
        if not logit_capture.enable:
            return None
        return cls(
            logit_capture.mode,
            logit_capture.k,
            tuple(logit_capture.ids),
            bool(logit_capture.raw),
            _DTYPES[logit_capture.dtype],
            logit_capture.max_bytes,
        )

    def describe(self) -> dict[str, Any]:
        """Plain description for ``meta_info["logit_capture"]`` (rebuilt by :meth:`from_description`)."""
        return {"mode": self.mode, "k": self.k, "ids": list(self.ids), "raw": self.raw}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> CaptureSpec:
        """The spec an engine described with :meth:`describe` (dtype and budget are not needed by consumers)."""
        return cls(description["mode"], int(description["k"]), tuple(description["ids"]), bool(description["raw"]))


@dataclass
class TokenCapture:
    """The capture of one generated segment (one assistant turn) of one sample: ``L`` tokens.

    ``token_ids`` (L,) long and ``logprobs`` (L,) float32 are always set; the mode adds ``topk_logprobs`` (L, k)
    float32 + ``topk_ids`` (L, k) long, ``id_logprobs`` (L, n) float32 (columns in ``ids`` order) or ``logits``
    (L, V) in the spec's dtype. The capture functions return CPU tensors whatever device the logits were on.
    """

    mode: str
    token_ids: torch.Tensor
    logprobs: torch.Tensor
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    id_logprobs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ids: tuple[int, ...] = ()
    raw: bool = False

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """What an interaction receives as ``kwargs["generation_logits"]``: ``mode``, ``ids`` (list), ``raw``,
        ``token_ids``, ``logprobs`` and the mode's tensors (only those that are set)."""
        out: dict[str, Any] = {"mode": self.mode, "ids": list(self.ids), "raw": self.raw}
        for name in ("token_ids", "logprobs", "topk_logprobs", "topk_ids", "id_logprobs", "logits"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def nbytes(self) -> int:
        """Payload bytes as DESIGN.md section 5 counts them: 4/token (logprob), 8k (topk: fp32 values + ids counted
        as int32), 4n (token_ids), V * itemsize (full). The in-memory tensors are larger (int64 ids, and the
        sampled token's id and logprob, which every mode carries)."""
        if self.mode == "topk":
            return 4 * self.topk_logprobs.numel() + 4 * self.topk_ids.numel()
        if self.mode == "token_ids":
            return 4 * self.id_logprobs.numel()
        if self.mode == "full":
            return self.logits.numel() * self.logits.element_size()
        return 4 * self.logprobs.numel()

    @staticmethod
    def concat(parts: list[TokenCapture]) -> TokenCapture:
        """Several turns of one sample -> one capture, tokens in order."""
        if not parts:
            raise ValueError("TokenCapture.concat needs at least one capture")
        first = parts[0]
        for p in parts[1:]:
            if (p.mode, p.ids, p.raw) != (first.mode, first.ids, first.raw):
                raise ValueError(
                    f"cannot concatenate captures of different kinds: mode={first.mode!r} ids={first.ids} "
                    f"raw={first.raw} vs mode={p.mode!r} ids={p.ids} raw={p.raw}"
                )

        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values, dim=0)

        return TokenCapture(
            first.mode, cat("token_ids"), cat("logprobs"), cat("topk_logprobs"), cat("topk_ids"),
            cat("id_logprobs"), cat("logits"), first.ids, first.raw,
        )  # fmt: skip


# ---- hf: raw logits ------------------------------------------------------------------------------------------------
def processed_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0
) -> torch.Tensor:
    """The logits the token is sampled from: ``z / T``, top-k then top-p filtering (filtered -> ``-inf``).

    Args:
        logits: ``(..., V)`` raw logits.
        temperature: 0 means greedy, treated as T=1 with no filtering.
        top_k: keep the values >= the k-th largest; -1 or 0 (or >= V) keeps all.
        top_p: keep the smallest most-likely set whose mass reaches top_p (ties at the edge per sort order).

    Returns:
        ``(..., V)`` float32.
    """
    z = logits.float()
    if temperature <= 0:
        return z.clone()
    z = z / temperature
    vocab = z.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        # ascending order: a token goes when the mass of it and everything less likely stays <= 1 - top_p
        sorted_z, order = torch.sort(z, dim=-1)
        mass_up_to = torch.softmax(sorted_z, dim=-1).cumsum(dim=-1)
        drop_sorted = mass_up_to <= 1.0 - top_p
        drop_sorted[..., -1] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def capture_from_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    spec: CaptureSpec,
    temperature: float = 1.0,
    top_k: int = -1,
    top_p: float = 1.0,
) -> TokenCapture:
    """Capture from the raw logits of ``L`` generation steps (``generate(output_logits=True)``).

    Args:
        logits: ``(L, V)`` raw model logits, one row per generated token.
        token_ids: ``(L,)`` the sampled tokens.
        spec: what to keep; ``spec.raw`` picks raw or processed values (module docstring).
        temperature, top_k, top_p: the sampling parameters the tokens were drawn with.
    """
    if logits.dim() != 2 or token_ids.dim() != 1 or logits.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"expected logits (L, V) and token_ids (L,), got {tuple(logits.shape)} and {tuple(token_ids.shape)}"
        )
    z = logits.float() if spec.raw else processed_logits(logits, temperature, top_k, top_p)
    return _from_distribution(torch.log_softmax(z, dim=-1), token_ids, spec, z if spec.mode == "full" else None)


def _from_distribution(
    logp: torch.Tensor, token_ids: Any, spec: CaptureSpec, logits: torch.Tensor | None = None
) -> TokenCapture:
    """TokenCapture from the full ``(L, V)`` log-distribution (and the logits to store in full mode)."""
    tokens = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
    vocab = logp.shape[-1]
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"sampled token ids {tokens.tolist()} fall outside the vocabulary of size {vocab}")
    capture = _new(spec, tokens, logp.gather(-1, tokens[:, None]).squeeze(-1))
    if spec.mode == "topk":
        if spec.k > vocab:
            raise ValueError(f"{_KEY}.k={spec.k} exceeds the vocabulary size {vocab}")
        top = torch.topk(logp, spec.k, dim=-1)
        capture.topk_logprobs, capture.topk_ids = top.values.contiguous(), top.indices.long()
    elif spec.mode == "token_ids":
        _check_ids(spec, vocab)
        capture.id_logprobs = logp[:, list(spec.ids)].contiguous()
    elif spec.mode == "full":
        capture.logits = (logp if logits is None else logits).to(spec.dtype)
    for name in ("token_ids", "logprobs", "topk_logprobs", "topk_ids", "id_logprobs", "logits"):
        value = getattr(capture, name)  # captures live on the CPU: they outlast the step and cross processes
        if value is not None:
            setattr(capture, name, value.cpu())
    return capture


def _new(spec: CaptureSpec, tokens: torch.Tensor, logprobs: torch.Tensor) -> TokenCapture:
    logprobs = logprobs.float()
    bad = (~torch.isfinite(logprobs)).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        raise ValueError(
            f"sampled token {int(tokens[i])} at generated position {i} has logprob {float(logprobs[i])}: it had no "
            "probability under the captured distribution; pass the temperature/top_k/top_p the engine sampled with"
        )
    return TokenCapture(spec.mode, tokens, logprobs, ids=spec.ids, raw=spec.raw)


def _check_ids(spec: CaptureSpec, vocab_size: int | None) -> None:
    if vocab_size is not None:
        outside = [i for i in spec.ids if i >= vocab_size]
        if outside:
            raise ValueError(f"{_KEY}.ids={list(spec.ids)}: {outside} >= vocabulary size {vocab_size}")


# ---- vLLM ----------------------------------------------------------------------------------------------------------
def vllm_logprobs_mode(spec: CaptureSpec) -> str:
    """The engine's ``logprobs_mode`` matching ``spec.raw`` (``*_logits`` in full mode)."""
    kind = "logits" if spec.mode == "full" else "logprobs"
    return f"{'raw' if spec.raw else 'processed'}_{kind}"


@functools.lru_cache(maxsize=1)
def vllm_max_logprob_token_ids() -> int:
    """How many ids the installed vLLM's ``SamplingParams.logprob_token_ids`` takes (0: no such field, no vLLM).

    The field must exist and the v1 sampler must gather it (``Sampler.gather_specific_token_logprobs``); the limit is
    ``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS`` (128 in vLLM 0.32)."""
    try:
        import vllm.sampling_params as sampling_params
        from vllm.v1.sample.sampler import Sampler
    except Exception:  # no vLLM, or a build whose v1 sampler does not import here
        return 0
    fields = getattr(sampling_params.SamplingParams, "__struct_fields__", ())
    if "logprob_token_ids" not in fields or not hasattr(Sampler, "gather_specific_token_logprobs"):
        return 0
    return int(getattr(sampling_params, "MAX_LOGPROB_TOKEN_IDS", 128))


def vllm_logprob_token_ids(spec: CaptureSpec, max_token_ids: int | None = None) -> list[int] | None:
    """``SamplingParams.logprob_token_ids`` for ``spec``: ``list(spec.ids)`` in token_ids mode when vLLM can serve
    them per id, else None (other modes, or the whole-vocabulary fallback).

    ``max_token_ids``: the engine's limit (default :func:`vllm_max_logprob_token_ids`, 0 = unsupported)."""
    if spec.mode != "token_ids":
        return None
    limit = vllm_max_logprob_token_ids() if max_token_ids is None else max_token_ids
    return list(spec.ids) if 0 < spec.n <= limit else None


def vllm_sampling_logprobs(spec: CaptureSpec, vocab_size: int, max_token_ids: int | None = None) -> int:
    """``SamplingParams.logprobs`` to request: 0 (logprob), k (topk), ``len(spec.ids)`` (token_ids served per id,
    see :func:`vllm_logprob_token_ids`, which vLLM requires to equal ``logprobs``), -1 = whole vocabulary (full, and
    token_ids without per-id support)."""
    _check_ids(spec, vocab_size)
    if spec.mode == "topk" and spec.k > vocab_size:
        raise ValueError(f"{_KEY}.k={spec.k} exceeds the vocabulary size {vocab_size}")
    if vllm_logprob_token_ids(spec, max_token_ids) is not None:
        return spec.n
    return {"logprob": 0, "topk": spec.k}.get(spec.mode, -1)


def vllm_engine_kwargs(spec: CaptureSpec, vocab_size: int, max_token_ids: int | None = None) -> dict[str, Any]:
    """Engine arguments: ``logprobs_mode`` and a ``max_logprobs`` that admits the request (-1 = whole vocab)."""
    requested = vllm_sampling_logprobs(spec, vocab_size, max_token_ids)
    return {"logprobs_mode": vllm_logprobs_mode(spec), "max_logprobs": -1 if requested < 0 else max(20, requested)}


def capture_from_vllm(
    token_ids: Sequence[int],
    logprobs: Sequence[Mapping[int, Any]] | None,
    spec: CaptureSpec,
    vocab_size: int | None = None,
) -> TokenCapture:
    """Capture from a vLLM ``CompletionOutput``'s ``token_ids`` and ``logprobs`` (one ``{token_id: Logprob}`` per token).

    Each dict holds the top-N plus the sampled token (N or N+1 entries), or, with ``logprob_token_ids``, the
    requested ids plus the sampled token (those ids' ``.rank`` are their list positions 1..n, not ranks; only their
    values are read); a ``Logprob`` has ``.logprob``, ``.rank`` and ``.decoded_token`` (plain floats are accepted
    too). The engine's ``logprobs_mode`` must be
    :func:`vllm_logprobs_mode` of the spec. In full mode every dict holds all ``vocab_size`` entries (default: the
    size of the first dict) and its values are logits.
    """
    tokens = [int(t) for t in token_ids]
    if logprobs is None or len(logprobs) != len(tokens):
        got = "None" if logprobs is None else f"{len(logprobs)} entries"
        raise ValueError(f"vLLM returned logprobs={got} for {len(tokens)} tokens; set SamplingParams.logprobs")
    sampled = []
    for i, (tok, entries) in enumerate(zip(tokens, logprobs)):
        if tok not in entries:
            raise ValueError(f"vLLM logprobs at position {i} lack the sampled token {tok}")
        sampled.append(_value(entries[tok]))
    return _from_entries(tokens, sampled, logprobs, spec, vocab_size, "vLLM", "vllm_sampling_logprobs")


def capture_from_vllm_flat(
    token_ids: Sequence[int], parts: Sequence[Any], spec: CaptureSpec, vocab_size: int | None = None
) -> TokenCapture:
    """:func:`capture_from_vllm` for logprobs vLLM returned flat (``SamplingParams.flat_logprobs=True``): a list of
    ``FlatLogprobs`` (one per engine step, in order), read as arrays instead of one dict of ``Logprob`` per token.

    vLLM's sampler puts the sampled token first at every position, then the top-k in rank order (or the requested
    ``logprob_token_ids`` in request order, or the whole vocabulary): positions with that exact layout are read in one
    vectorised pass; anything else goes through :func:`capture_from_vllm` with the same result.
    """
    import numpy as np

    tokens = [int(t) for t in token_ids]
    ids: list[int] = []
    values: list[float] = []
    starts: list[int] = []
    ends: list[int] = []
    for part in parts:
        offset = len(values)
        ids.extend(part.token_ids)
        values.extend(part.logprobs)
        starts.extend(offset + i for i in part.start_indices)
        ends.extend(offset + i for i in part.end_indices)
    if len(starts) != len(tokens):
        raise ValueError(f"vLLM returned logprobs for {len(starts)} positions, {len(tokens)} tokens were generated")
    if not tokens:
        return capture_from_vllm(tokens, [], spec, vocab_size)
    ids_a, values_a = np.asarray(ids, dtype=np.int64), np.asarray(values, dtype=np.float32)
    starts_a, counts = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64) - np.asarray(starts)
    if (counts < 1).any() or (ids_a[starts_a] != np.asarray(tokens)).any():
        return capture_from_vllm(tokens, [p for part in parts for p in part], spec, vocab_size)
    extra = {"topk": spec.k, "token_ids": spec.n, "full": vocab_size or int(counts[0]) - 1}.get(spec.mode, 0)
    if spec.mode != "logprob" and (counts != extra + 1).any():
        return capture_from_vllm(tokens, [p for part in parts for p in part], spec, vocab_size)
    columns = starts_a[:, None] + 1 + np.arange(extra)[None, :]  # (L, extra): the entries after the sampled token
    if spec.mode == "token_ids" and (ids_a[columns] != np.asarray(spec.ids)[None, :]).any():
        return capture_from_vllm(tokens, [p for part in parts for p in part], spec, vocab_size)
    if spec.mode == "full":
        z = torch.full((len(tokens), extra), float("nan"))
        z.scatter_(1, torch.from_numpy(ids_a[columns]), torch.from_numpy(values_a[columns]))
        return _from_distribution(torch.log_softmax(z, dim=-1), tokens, spec, z)
    capture = _new(spec, torch.tensor(tokens, dtype=torch.long), torch.from_numpy(values_a[starts_a]))
    if spec.mode == "topk":
        capture.topk_logprobs = torch.from_numpy(values_a[columns])
        capture.topk_ids = torch.from_numpy(ids_a[columns])
    elif spec.mode == "token_ids":
        _check_ids(spec, vocab_size)
        capture.id_logprobs = torch.from_numpy(values_a[columns])
    return capture


# ---- SGLang --------------------------------------------------------------------------------------------------------
def sglang_sampling_kwargs(spec: CaptureSpec, vocab_size: int) -> dict[str, Any]:
    """Request arguments of ``Engine.async_generate`` / ``/generate`` (not ``sampling_params`` keys)."""
    _check_ids(spec, vocab_size)
    top = {"logprob": 0, "topk": spec.k, "token_ids": 0, "full": vocab_size}[spec.mode]
    ids = list(spec.ids) if spec.mode == "token_ids" else None
    return {"return_logprob": True, "top_logprobs_num": top, "token_ids_logprob": ids}


def capture_from_sglang(meta_info: Mapping[str, Any], spec: CaptureSpec) -> TokenCapture:
    """Capture from an SGLang response's ``meta_info`` (or the whole response dict, whose ``output_ids`` is checked).

    Reads ``output_token_logprobs`` ``[(logprob, token_id, text|None), ...]``, plus ``output_top_logprobs`` (topk,
    and full with ``top_logprobs_num=V``: log-probabilities) or ``output_token_ids_logprobs`` (token_ids); None
    entries inside those lists are dropped. Input logprobs (with their leading None) are ignored: only generated
    tokens are captured.
    """
    meta, output_ids = meta_info, None
    if "meta_info" in meta_info:
        meta, output_ids = meta_info["meta_info"], meta_info.get("output_ids")
    pairs = meta.get("output_token_logprobs")
    if pairs is None:
        raise ValueError("SGLang meta_info has no output_token_logprobs; request return_logprob=True")
    if output_ids is not None and len(output_ids) != len(pairs):
        raise ValueError(f"SGLang returned {len(pairs)} output_token_logprobs for {len(output_ids)} output_ids")
    if any(p[0] is None for p in pairs):
        raise ValueError("SGLang output_token_logprobs contains a None logprob")
    tokens, sampled = [int(p[1]) for p in pairs], [float(p[0]) for p in pairs]
    rows: list[dict[int, float]] = []
    if spec.mode != "logprob":
        key = "output_token_ids_logprobs" if spec.mode == "token_ids" else "output_top_logprobs"
        listed = meta.get(key)
        if listed is None or len(listed) != len(pairs):
            got = "nothing" if listed is None else f"{len(listed)} positions"
            raise ValueError(f"SGLang meta_info[{key!r}] holds {got} for {len(pairs)} generated tokens")
        for i, row in enumerate(listed):
            if row is None:
                raise ValueError(f"SGLang meta_info[{key!r}][{i}] is None; request it with sglang_sampling_kwargs")
            rows.append({int(e[1]): float(e[0]) for e in row if e is not None and e[0] is not None})
    return _from_entries(tokens, sampled, rows, spec, None, "SGLang", "sglang_sampling_kwargs")


# ---- engines' sparse outputs ---------------------------------------------------------------------------------------
def _value(entry: Any) -> float:
    return float(entry.logprob if hasattr(entry, "logprob") else entry)


def _from_entries(
    tokens: list[int],
    sampled: list[float],
    rows: Sequence[Mapping[int, Any]],
    spec: CaptureSpec,
    vocab_size: int | None,
    engine: str,
    helper: str,
) -> TokenCapture:
    """TokenCapture from per-position ``{token_id: value}`` maps (values float or ``Logprob``-like)."""
    if spec.mode == "full":
        vocab = vocab_size or (len(rows[0]) if rows else 0)
        z = torch.full((len(tokens), vocab), float("nan"))  # (L, V)
        for i, entries in enumerate(rows):
            if len(entries) != vocab or any(not 0 <= t < vocab for t in entries):
                raise ValueError(
                    f"{engine} position {i} holds {len(entries)} entries, not the whole vocabulary of {vocab}; "
                    f"full mode needs all of them ({helper})"
                )
            z[i, list(entries)] = torch.tensor([_value(e) for e in entries.values()])
        return _from_distribution(torch.log_softmax(z, dim=-1), tokens, spec, z)
    capture = _new(spec, torch.tensor(tokens, dtype=torch.long), torch.tensor(sampled, dtype=torch.float32))
    if spec.mode == "topk":
        best = [_best(entries, spec.k, f"{engine} position {i}", helper) for i, entries in enumerate(rows)]
        capture.topk_logprobs = torch.tensor([v for v, _ in best], dtype=torch.float32).reshape(-1, spec.k)
        capture.topk_ids = torch.tensor([t for _, t in best], dtype=torch.long).reshape(-1, spec.k)
    elif spec.mode == "token_ids":
        _check_ids(spec, vocab_size)
        values = []
        for i, entries in enumerate(rows):
            missing = [t for t in spec.ids if t not in entries]
            if missing:
                raise ValueError(f"{engine} position {i} lacks token id(s) {missing} of {_KEY}.ids; see {helper}")
            values.append([_value(entries[t]) for t in spec.ids])
        capture.id_logprobs = torch.tensor(values, dtype=torch.float32).reshape(-1, spec.n)
    return capture


def _best(entries: Mapping[int, Any], k: int, where: str, helper: str) -> tuple[list[float], list[int]]:
    """The k largest (value, id) of one position, ties broken by the engine's rank then the id."""
    if len(entries) < k:
        raise ValueError(f"{where} holds {len(entries)} alternatives but {_KEY}.k={k}; see {helper}")

    # Fast path (the hot loop of vLLM topk capture): vLLM ranks its top-k 1..k, so pick those by rank, no sort.
    ranked = [
        (e.rank, t, e.logprob) for t, e in entries.items() if getattr(e, "rank", None) is not None and e.rank <= k
    ]
    if len(ranked) == k and len({r for r, _, _ in ranked}) == k:
        ranked.sort()
        return [v for _, _, v in ranked], [int(t) for _, t, _ in ranked]

    def order(item: tuple[int, Any]) -> tuple[float, float, int]:
        rank = getattr(item[1], "rank", None)
        return (-_value(item[1]), float("inf") if rank is None else rank, item[0])

    best = sorted(entries.items(), key=order)[:k]
    return [_value(e) for _, e in best], [int(t) for t, _ in best]


# ---- memory budget -------------------------------------------------------------------------------------------------
def bytes_per_token(spec: CaptureSpec, vocab_size: int) -> int:
    """Payload bytes per generated token (as :meth:`TokenCapture.nbytes` counts them): 4, 8k, 4n or V * itemsize."""
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    return {"logprob": 4, "topk": 8 * spec.k, "token_ids": 4 * spec.n, "full": itemsize * vocab_size}[spec.mode]


def estimate_capture_bytes(spec: CaptureSpec, batch_size: int, response_length: int, vocab_size: int) -> int:
    """Upper bound of one batch's capture payload: every sample generating ``response_length`` tokens."""
    return batch_size * response_length * bytes_per_token(spec, vocab_size)


def check_capture_budget(spec: CaptureSpec, batch_size: int, response_length: int, vocab_size: int) -> None:
    """Full mode only: raise before generating when the batch's logits would exceed ``spec.max_bytes``."""
    if spec.mode != "full":
        return
    estimate = estimate_capture_bytes(spec, batch_size, response_length, vocab_size)
    if estimate > spec.max_bytes:
        raise ValueError(
            f"logit capture mode=full would store about {estimate} bytes ({estimate / 2**30:.2f} GiB) for this batch "
            f"({batch_size} samples x {response_length} tokens x vocabulary {vocab_size} x "
            f"{bytes_per_token(spec, vocab_size) // vocab_size} B), over {_KEY}.max_bytes={spec.max_bytes} "
            f"({spec.max_bytes / 2**30:.2f} GiB). Use {_KEY}.mode=topk or token_ids, a smaller batch or "
            f"response_length, or raise {_KEY}.max_bytes"
        )


# ---- batch packing -------------------------------------------------------------------------------------------------
def captures_to_tensors(
    captures: list[TokenCapture | None],
    response_length: int,
    spec: CaptureSpec,
    positions: list[torch.Tensor | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Pack per-sample captures into right-padded ``(B, R, ...)`` tensors for ``DataProto`` (padding 0, ids -1).

    Args:
        captures: one capture per sample (turns already concatenated); None leaves the row as padding.
        response_length: ``R``.
        spec: the capture spec; decides which keys appear (see ``CAPTURE_TENSOR_KEYS``).
        positions: per sample, ``(L,)`` the response column of each captured token (multi-turn: user/tool tokens
            between turns keep the padding value); None (or a None entry) means ``0..L-1``.

    Returns:
        ``rollout_log_probs`` (B, R) float32; topk: ``rollout_topk_logprobs`` (B, R, k) float32 and
        ``rollout_topk_ids`` (B, R, k) long; token_ids: ``rollout_token_id_logprobs`` (B, R, n) float32; full:
        ``rollout_logits`` (B, R, V) in ``spec.dtype`` (V from the first capture; 0 when every capture is None).
    """
    batch = len(captures)
    out = {"rollout_log_probs": torch.zeros(batch, response_length)}
    if spec.mode == "topk":
        out["rollout_topk_logprobs"] = torch.zeros(batch, response_length, spec.k)
        out["rollout_topk_ids"] = torch.full((batch, response_length, spec.k), -1, dtype=torch.long)
    elif spec.mode == "token_ids":
        out["rollout_token_id_logprobs"] = torch.zeros(batch, response_length, spec.n)
    elif spec.mode == "full":
        vocab = next((c.logits.shape[-1] for c in captures if c is not None), 0)
        out["rollout_logits"] = torch.zeros(batch, response_length, vocab, dtype=spec.dtype)
    for i, capture in enumerate(captures):
        if capture is None:
            continue
        if capture.mode != spec.mode:
            raise ValueError(f"sample {i} was captured in mode {capture.mode!r}, the spec says {spec.mode!r}")
        length = len(capture)
        cols = positions[i] if positions is not None and positions[i] is not None else torch.arange(length)
        cols = torch.as_tensor(cols, dtype=torch.long, device="cpu")
        if cols.shape != (length,):
            raise ValueError(f"sample {i}: positions has shape {tuple(cols.shape)}, the capture {length} tokens")
        if length and (cols.min() < 0 or cols.max() >= response_length):
            raise ValueError(
                f"sample {i}: captured token columns {cols.tolist()} fall outside 0..{response_length - 1}"
            )
        for key, values in out.items():
            values[i, cols] = getattr(capture, _FIELDS[key]).to("cpu", values.dtype)
    return out


def generation_logits_from_batch(
    tensors: Mapping[str, torch.Tensor], row: int, response_mask_row: torch.Tensor, spec: CaptureSpec | None = None
) -> dict[str, Any]:
    """One sample's captured values at its generated tokens, in the format of :meth:`TokenCapture.to_dict`.

    Args:
        tensors: the batch (a dict or ``DataProto.batch``) holding the ``CAPTURE_TENSOR_KEYS`` present, and
            ``responses`` (B, R) when ``token_ids`` should be included.
        row: the sample.
        response_mask_row: ``(R,)`` 1 on the tokens the policy generated.
        spec: fills ``ids`` and ``raw``; without it they are None (the mode is read off the keys).
    """
    keys = set(tensors.keys())
    cols = response_mask_row.bool().nonzero().flatten()
    by_key = {"rollout_logits": "full", "rollout_topk_logprobs": "topk", "rollout_token_id_logprobs": "token_ids"}
    mode = next((m for key, m in by_key.items() if key in keys), "logprob")
    out: dict[str, Any] = {"mode": mode, "ids": None, "raw": None}
    if spec is not None:
        out.update(ids=list(spec.ids), raw=spec.raw)
    for key, name in _FIELDS.items():
        if key in keys:
            out[name] = tensors[key][row, cols]
    return out
