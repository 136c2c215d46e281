"""Tests for verl/workers/rollout/logit_capture.py: one capture, the same values from hf logits, vLLM and SGLang.

Engine-shaped outputs are built literally from the same float32 numbers ``capture_from_logits`` sees; a float32
survives the round trip through a Python float exactly, so engine and logits captures agree to 1e-6 (1e-5 where a
log_softmax is recomputed from full-vocabulary values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf

from verl.workers.config.rollout import LogitCaptureConfig
from verl.workers.rollout.logit_capture import (
    CAPTURE_TENSOR_KEYS,
    CaptureSpec,
    TokenCapture,
    capture_from_logits,
    capture_from_sglang,
    capture_from_vllm,
    captures_to_tensors,
    check_capture_budget,
    estimate_capture_bytes,
    generation_logits_from_batch,
    sglang_sampling_kwargs,
    vllm_engine_kwargs,
    vllm_logprob_token_ids,
    vllm_logprobs_mode,
    vllm_sampling_logprobs,
)

L, V = 6, 32
T, TOP_K, TOP_P = 0.7, 5, 0.9


@dataclass
class Logprob:  # the shape of vllm.sequence.Logprob
    logprob: float
    rank: int | None
    decoded_token: str | None = None


def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(L, V, generator=torch.Generator().manual_seed(seed)) * 3


def _reference_processed_logprobs(z: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Per row, by hand: scale, keep the top_k, then most likely first while the mass before stays < top_p."""
    out = torch.full_like(z, float("-inf"))
    for r, row in enumerate(z.tolist()):
        scaled = [v / temperature for v in row]
        order = sorted(range(len(row)), key=lambda j: -scaled[j])[:top_k]
        norm = sum(math.exp(scaled[j]) for j in order)
        kept, mass = [], 0.0
        for j in order:
            if mass >= top_p:
                break
            kept.append(j)
            mass += math.exp(scaled[j]) / norm
        log_norm = math.log(sum(math.exp(scaled[j]) for j in kept))
        for j in kept:
            out[r, j] = scaled[j] - log_norm
    return out


def _sample(logp: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.multinomial(logp.exp(), 1, generator=torch.Generator().manual_seed(seed)).squeeze(-1)


# ---- capture_from_logits --------------------------------------------------------------------------------------------
def test_processed_logprobs_worked_example():
    # z = [2, 1, 0, -1], T = 1, top_k = 3 -> {2, 1, 0}, probs 0.665, 0.245, 0.090; top_p = 0.8: the mass before the
    # second token is 0.665 < 0.8 (kept), before the third 0.910 (dropped). Renormalised over {2, 1}:
    # log p(2) = -log(1 + e^-1) = -0.31326, log p(1) = -1.31326; the others -inf.
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    cap = capture_from_logits(z, torch.tensor([1]), CaptureSpec(mode="full"), temperature=1.0, top_k=3, top_p=0.8)
    logp = torch.log_softmax(cap.logits.float(), -1)
    assert torch.allclose(logp[0, :2], torch.tensor([-0.31326, -1.31326]), atol=1e-5)
    assert logp[0, 2:].tolist() == [float("-inf")] * 2
    assert cap.logprobs.item() == pytest.approx(-1.31326, abs=1e-5)


def test_raw_logprob_mode_is_log_softmax_of_raw_logits_gathered():
    z = _logits()
    tokens = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(3))
    cap = capture_from_logits(z, tokens, CaptureSpec(mode="logprob", raw=True), temperature=T, top_k=TOP_K, top_p=TOP_P)
    expected = torch.log_softmax(z, -1)[torch.arange(L), tokens]  # raw: temperature and filtering ignored
    assert cap.logprobs.dtype == torch.float32 and cap.token_ids.dtype == torch.long
    torch.testing.assert_close(cap.logprobs, expected, rtol=0, atol=1e-6)
    assert cap.topk_logprobs is None and cap.logits is None


def test_processed_logprobs_equal_hand_built_reference():
    z = _logits()
    ref = _reference_processed_logprobs(z, T, TOP_K, TOP_P)
    tokens = _sample(ref)
    cap = capture_from_logits(z, tokens, CaptureSpec(mode="full"), temperature=T, top_k=TOP_K, top_p=TOP_P)
    torch.testing.assert_close(cap.logprobs, ref[torch.arange(L), tokens], rtol=0, atol=1e-5)
    logp = torch.log_softmax(cap.logits.float(), -1)
    assert torch.equal(torch.isinf(logp), torch.isinf(ref))  # the same tokens are filtered
    assert torch.isfinite(ref).sum(-1).lt(TOP_K).any()  # top_p removed something beyond top_k
    torch.testing.assert_close(logp[torch.isfinite(ref)], ref[torch.isfinite(ref)], rtol=0, atol=1e-5)


def test_greedy_counts_as_temperature_one_without_filtering():
    z = _logits()
    tokens = z.argmax(-1)
    greedy = capture_from_logits(z, tokens, CaptureSpec(mode="topk", k=8), temperature=0.0, top_k=2, top_p=0.5)
    raw = capture_from_logits(z, tokens, CaptureSpec(mode="topk", k=8, raw=True))
    torch.testing.assert_close(greedy.logprobs, raw.logprobs)
    torch.testing.assert_close(greedy.topk_logprobs, raw.topk_logprobs)
    assert torch.isfinite(greedy.topk_logprobs).all()


@pytest.mark.parametrize("raw", [True, False])
def test_topk_and_token_ids_agree_with_full(raw):
    z = _logits(seed=4)
    tokens = _sample(_reference_processed_logprobs(z, T, TOP_K, TOP_P))
    kw = {"temperature": T, "top_k": TOP_K, "top_p": TOP_P}
    ids = (7, 0, 31, 12)
    full = capture_from_logits(z, tokens, CaptureSpec(mode="full", raw=raw), **kw)
    topk = capture_from_logits(z, tokens, CaptureSpec(mode="topk", k=8, raw=raw), **kw)
    by_id = capture_from_logits(z, tokens, CaptureSpec(mode="token_ids", ids=ids, raw=raw), **kw)
    logp = torch.log_softmax(full.logits.float(), -1)
    for cap in (topk, by_id):
        torch.testing.assert_close(cap.logprobs, full.logprobs)
        assert torch.isfinite(cap.logprobs).all()
    # top-k: the k largest of the full distribution, ids and values
    finite = torch.isfinite(topk.topk_logprobs)
    torch.testing.assert_close(topk.topk_logprobs, logp.gather(-1, topk.topk_ids))
    torch.testing.assert_close(topk.topk_logprobs, logp.sort(-1, descending=True).values[:, :8])
    assert topk.topk_ids.dtype == torch.long and topk.topk_ids.shape == (L, 8)
    # token_ids: columns in the order of spec.ids
    torch.testing.assert_close(by_id.id_logprobs, logp[:, list(ids)])
    assert by_id.id_logprobs.shape == (L, len(ids))
    assert not torch.isnan(topk.topk_logprobs).any() and not torch.isnan(by_id.id_logprobs).any()
    if raw:
        assert finite.all() and torch.isfinite(by_id.id_logprobs).all()
    else:  # at most TOP_K survive filtering: the rest of the top-8 is -inf, as are filtered ids
        assert (~finite).sum(-1).ge(8 - TOP_K).all()
        assert torch.equal(torch.isinf(by_id.id_logprobs), torch.isinf(logp[:, list(ids)]))


def test_sampled_token_that_was_filtered_is_an_error():
    z = torch.tensor([[5.0, 0.0, -5.0]])
    with pytest.raises(ValueError, match=r"sampled token 2 at generated position 0.*temperature/top_k/top_p"):
        capture_from_logits(z, torch.tensor([2]), CaptureSpec(), temperature=1.0, top_k=1)


def test_hf_generate_scores_match_processed_capture(tiny_model_dir):
    """transformers' processed ``scores`` are what was sampled from: our processing of its raw ``logits`` agrees."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    out = model.generate(
        torch.tensor([[1, 5, 9, 13]]), do_sample=True, temperature=T, top_k=TOP_K, top_p=TOP_P, max_new_tokens=8,
        min_new_tokens=8, return_dict_in_generate=True, output_logits=True, output_scores=True, pad_token_id=0,
    )  # fmt: skip
    logits, scores = torch.cat(out.logits), torch.cat(out.scores)  # (8, V) each
    tokens = out.sequences[0, 4:]
    cap = capture_from_logits(logits, tokens, CaptureSpec(mode="full"), temperature=T, top_k=TOP_K, top_p=TOP_P)
    expected = torch.log_softmax(scores, -1)
    torch.testing.assert_close(cap.logprobs, expected[torch.arange(8), tokens], rtol=0, atol=1e-5)
    assert torch.equal(torch.isinf(cap.logits.float()), torch.isinf(scores))


# ---- vLLM -----------------------------------------------------------------------------------------------------------
def _vllm_logprobs(values: torch.Tensor, tokens: torch.Tensor, n: int) -> list[dict[int, Logprob]]:
    """vLLM's ``CompletionOutput.logprobs``: the top n by value with their 1-based rank, plus the sampled token."""
    out = []
    for row, tok in zip(values, tokens.tolist()):
        order = row.argsort(descending=True).tolist()
        entries = {t: Logprob(float(row[t]), r + 1, f"<{t}>") for r, t in enumerate(order[:n])}
        entries[tok] = Logprob(float(row[tok]), order.index(tok) + 1, f"<{tok}>")
        out.append(entries)
    return out


@pytest.mark.parametrize("raw", [True, False])
def test_vllm_output_gives_the_same_capture_as_logits(raw):
    z = _logits(seed=5)
    kw = {"temperature": T, "top_k": TOP_K, "top_p": 1.0}  # 5 tokens survive, so the 4th most likely can be drawn
    logp = torch.log_softmax(z, -1) if raw else _reference_processed_logprobs(z, **kw)
    # the sampled token is the 4th most likely, outside the top 3: each dict has k + 1 entries
    tokens = logp.argsort(-1, descending=True)[:, 3]
    spec = CaptureSpec(mode="topk", k=3, raw=raw)
    expected = capture_from_logits(z, tokens, spec, **kw)
    lps = _vllm_logprobs(logp, tokens, 3)
    assert all(len(d) == 4 for d in lps)
    got = capture_from_vllm(tokens.tolist(), lps, spec)
    for name in ("token_ids", "logprobs", "topk_logprobs", "topk_ids"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), rtol=0, atol=1e-6)

    ids = (3, 30)
    spec_ids = CaptureSpec(mode="token_ids", ids=ids, raw=raw)
    got = capture_from_vllm(tokens.tolist(), _vllm_logprobs(logp, tokens, V), spec_ids, vocab_size=V)
    torch.testing.assert_close(got.id_logprobs, capture_from_logits(z, tokens, spec_ids, **kw).id_logprobs)

    # full: the engine runs with logprobs_mode *_logits, so the dict values are (processed) logits
    spec_full = CaptureSpec(mode="full", raw=raw)
    expected = capture_from_logits(z, tokens, spec_full, **kw)
    got = capture_from_vllm(tokens.tolist(), _vllm_logprobs(expected.logits, tokens, V), spec_full)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=0, atol=1e-5)


def _vllm_id_logprobs(values: torch.Tensor, tokens: torch.Tensor, ids: list[int]) -> list[dict[int, Logprob]]:
    """vLLM 0.32's ``CompletionOutput.logprobs`` under ``logprob_token_ids=ids``: the sampled token first with its
    true rank, then each requested id with its list position 1..n as ``rank`` (a later duplicate key wins)."""
    out = []
    for row, tok in zip(values, tokens.tolist()):
        entries = {tok: Logprob(float(row[tok]), int((row > row[tok]).sum()) + 1, None)}
        entries.update({t: Logprob(float(row[t]), r + 1, None) for r, t in enumerate(ids)})
        out.append(entries)
    return out


@pytest.mark.parametrize("raw", [True, False])
def test_vllm_per_id_output_gives_the_whole_vocabulary_capture(raw):
    z = _logits(seed=9)
    kw = {"temperature": T, "top_k": TOP_K, "top_p": TOP_P}  # filtered ids are -inf in both paths
    logp = torch.log_softmax(z, -1) if raw else _reference_processed_logprobs(z, **kw)
    tokens = logp.argmax(-1)
    ids = (int(tokens[0]), 3, 30)  # the first sampled token is also a requested id
    spec = CaptureSpec(mode="token_ids", ids=ids, raw=raw)
    per_id = capture_from_vllm(tokens.tolist(), _vllm_id_logprobs(logp, tokens, list(ids)), spec, vocab_size=V)
    whole = capture_from_vllm(tokens.tolist(), _vllm_logprobs(logp, tokens, V), spec, vocab_size=V)
    torch.testing.assert_close(per_id.id_logprobs, whole.id_logprobs, rtol=0, atol=0)
    torch.testing.assert_close(per_id.logprobs, whole.logprobs, rtol=0, atol=0)
    torch.testing.assert_close(per_id.id_logprobs, capture_from_logits(z, tokens, spec, **kw).id_logprobs)


@dataclass
class _Flat:
    """The layout of vLLM's ``FlatLogprobs`` (``flat_logprobs=True``): per position, the sampled token first, then the
    top-k in rank order (or the requested ids, or the whole vocabulary), in flat primitive lists."""

    start_indices: list
    end_indices: list
    token_ids: list
    logprobs: list

    def __iter__(self):  # the Sequence view (a dict per position), which the generic path reads
        for s, e in zip(self.start_indices, self.end_indices):
            yield {t: Logprob(v, None, None) for t, v in zip(self.token_ids[s:e][::-1], self.logprobs[s:e][::-1])}


def _flat(values: torch.Tensor, tokens: torch.Tensor, columns: list[list[int]], steps: int = 3) -> list[_Flat]:
    """Split ``len(tokens)`` positions into ``steps`` parts (one per engine step, as DELTA outputs arrive)."""
    parts, bounds = [], torch.linspace(0, len(tokens), steps + 1).long().tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        flat = _Flat([], [], [], [])
        for pos in range(a, b):
            flat.start_indices.append(len(flat.logprobs))
            for t in [int(tokens[pos]), *columns[pos]]:
                flat.token_ids.append(t)
                flat.logprobs.append(float(values[pos, t]))
            flat.end_indices.append(len(flat.logprobs))
        parts.append(flat)
    return parts


@pytest.mark.parametrize("raw", [True, False])
def test_vllm_flat_logprobs_give_the_same_capture_as_the_dicts(raw):
    from verl.workers.rollout.logit_capture import capture_from_vllm_flat

    z = _logits(seed=11)
    kw = {"temperature": T, "top_k": TOP_K, "top_p": 1.0}
    logp = torch.log_softmax(z, -1) if raw else _reference_processed_logprobs(z, **kw)
    tokens = logp.argsort(-1, descending=True)[:, 2]
    ranked = logp.argsort(-1, descending=True).tolist()
    for spec, columns, values, vocab in (
        (CaptureSpec(mode="logprob", raw=raw), [[] for _ in ranked], logp, None),
        (CaptureSpec(mode="topk", k=3, raw=raw), [r[:3] for r in ranked], logp, None),
        (CaptureSpec(mode="token_ids", ids=(3, 30), raw=raw), [[3, 30] for _ in ranked], logp, V),
        (CaptureSpec(mode="full", raw=raw), [list(range(V)) for _ in ranked], logp, V),
    ):
        flat = capture_from_vllm_flat(tokens.tolist(), _flat(values, tokens, columns), spec, vocab)
        expected = capture_from_logits(z, tokens, spec, **kw)
        for name in ("token_ids", "logprobs", "topk_logprobs", "topk_ids", "id_logprobs"):
            if getattr(expected, name) is not None:
                torch.testing.assert_close(getattr(flat, name), getattr(expected, name), rtol=0, atol=1e-5)
        if spec.mode == "full":  # logits up to a per-row constant: the same distribution
            torch.testing.assert_close(
                torch.log_softmax(flat.logits, -1), expected.logits.log_softmax(-1), atol=1e-5, rtol=0
            )
    # a layout it cannot read in one pass (ids in another order) goes through the dicts, with the same values
    spec = CaptureSpec(mode="token_ids", ids=(3, 30), raw=raw)
    flat = capture_from_vllm_flat(tokens.tolist(), _flat(logp, tokens, [[30, 3]] * len(tokens)), spec, V)
    torch.testing.assert_close(
        flat.id_logprobs, capture_from_logits(z, tokens, spec, **kw).id_logprobs, atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match=f"for {len(tokens)} positions, {len(tokens) - 1} tokens"):
        capture_from_vllm_flat(tokens.tolist()[:-1], _flat(logp, tokens, [[]] * len(tokens)), CaptureSpec(), None)


def test_vllm_accepts_plain_floats_and_names_missing_ids():
    lps = [{4: -0.1, 2: -2.5}, {1: -0.3}]
    cap = capture_from_vllm([4, 1], lps, CaptureSpec())
    assert cap.logprobs.tolist() == pytest.approx([-0.1, -0.3])
    with pytest.raises(ValueError, match=r"vLLM position 1 lacks token id\(s\) \[2\]"):
        capture_from_vllm([4, 1], lps, CaptureSpec(mode="token_ids", ids=(2,)))
    with pytest.raises(ValueError, match="lack the sampled token 7"):
        capture_from_vllm([7, 1], lps, CaptureSpec())
    with pytest.raises(ValueError, match="set SamplingParams.logprobs"):
        capture_from_vllm([4, 1], None, CaptureSpec())


def test_vllm_request_settings_follow_the_spec():
    assert vllm_logprobs_mode(CaptureSpec(raw=True)) == "raw_logprobs"
    assert vllm_logprobs_mode(CaptureSpec(mode="topk", k=3)) == "processed_logprobs"
    assert vllm_logprobs_mode(CaptureSpec(mode="full", raw=True)) == "raw_logits"
    assert vllm_logprobs_mode(CaptureSpec(mode="full")) == "processed_logits"
    # Without per-id support (vLLM < 0.32) token_ids asks for the whole vocabulary, like full.
    assert [vllm_sampling_logprobs(s, V, max_token_ids=0) for s in _specs()] == [0, 4, -1, -1]
    # With it (vLLM 0.32: logprob_token_ids, at most 128 ids, logprobs == len(ids)) just the spec's ids.
    assert [vllm_sampling_logprobs(s, V, max_token_ids=128) for s in _specs()] == [0, 4, 2, -1]
    assert [vllm_logprob_token_ids(s, max_token_ids=128) for s in _specs()] == [None, None, [1, 2], None]
    many = CaptureSpec(mode="token_ids", ids=tuple(range(129)))  # over the limit: the whole-vocabulary fallback
    assert vllm_logprob_token_ids(many, max_token_ids=128) is None
    assert vllm_sampling_logprobs(many, 200, max_token_ids=128) == -1
    assert vllm_engine_kwargs(many, 200, max_token_ids=128)["max_logprobs"] == -1
    assert vllm_logprob_token_ids(CaptureSpec(mode="token_ids", ids=(2, 7)), max_token_ids=0) is None
    # max_logprobs admits the request without opening the whole vocabulary.
    assert vllm_engine_kwargs(CaptureSpec(mode="token_ids", ids=(2, 7)), V, max_token_ids=128) == {
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": 20,
    }
    assert vllm_engine_kwargs(CaptureSpec(mode="topk", k=50), 100) == {
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": 50,
    }
    with pytest.raises(ValueError, match=r"ids=\[3, 40\]: \[40\] >= vocabulary size 32"):
        vllm_sampling_logprobs(CaptureSpec(mode="token_ids", ids=(3, 40)), V)


def _specs() -> list[CaptureSpec]:
    return [
        CaptureSpec(),
        CaptureSpec(mode="topk", k=4),
        CaptureSpec(mode="token_ids", ids=(1, 2)),
        CaptureSpec(mode="full"),
    ]


# ---- SGLang ---------------------------------------------------------------------------------------------------------
def _triples(row: torch.Tensor, ids: list[int]) -> list[tuple[float, int, None]]:
    return [(float(row[t]), t, None) for t in ids]


def _sglang_response(logp: torch.Tensor, tokens: torch.Tensor, top: int, ids: list[int]) -> dict:
    """An SGLang ``generate`` result shaped as in engine_logprobs.md 1.3 (text omitted, skip_tokenizer_init)."""
    order = logp.argsort(-1, descending=True)
    meta = {
        "id": "r0",
        "finish_reason": {"type": "length", "length": L},
        "prompt_tokens": 3,
        "completion_tokens": L,
        "input_token_logprobs": [(None, 11, None)],  # the leading None of the last prompt position
        "input_top_logprobs": [None],
        "output_token_logprobs": [(float(logp[i, t]), int(t), None) for i, t in enumerate(tokens.tolist())],
        # a None entry padding each row: dropped
        "output_top_logprobs": [_triples(logp[i], order[i, :top].tolist()) + [None] for i in range(L)],
        "output_token_ids_logprobs": [_triples(logp[i], ids) for i in range(L)],
    }
    return {"output_ids": tokens.tolist(), "meta_info": meta}


def test_sglang_output_gives_the_same_capture_as_logits():
    # SGLang 0.5.x processed logprobs: temperature only, no top-k/top-p renormalisation, so compare at top_k=-1, top_p=1
    z = _logits(seed=6)
    logp = torch.log_softmax(z / T, -1)
    tokens = logp.argsort(-1, descending=True)[:, 5]
    ids = [9, 2]
    for spec, top in ((CaptureSpec(mode="topk", k=4), 4), (CaptureSpec(mode="token_ids", ids=ids), 0)):
        expected = capture_from_logits(z, tokens, spec, temperature=T)
        response = _sglang_response(logp, tokens, top, ids)
        for source in (response, response["meta_info"]):  # the whole dict or its meta_info
            got = capture_from_sglang(source, spec)
            for name in ("token_ids", "logprobs", "topk_logprobs", "topk_ids", "id_logprobs"):
                a, b = getattr(got, name), getattr(expected, name)
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # full via top_logprobs_num = V: log-probabilities, the same distribution as the processed logits
    spec = CaptureSpec(mode="full")
    got = capture_from_sglang(_sglang_response(logp, tokens, V, ids), spec)
    expected = capture_from_logits(z, tokens, spec, temperature=T)
    torch.testing.assert_close(
        torch.log_softmax(got.logits, -1), torch.log_softmax(expected.logits, -1), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(got.logprobs, expected.logprobs, rtol=0, atol=1e-5)


def test_sglang_malformed_outputs_are_named():
    logp = torch.log_softmax(_logits(), -1)
    tokens = logp.argmax(-1)
    response = _sglang_response(logp, tokens, 2, [1])
    with pytest.raises(ValueError, match="2 alternatives but .*k=3"):
        capture_from_sglang(response, CaptureSpec(mode="topk", k=3))
    response["output_ids"] = response["output_ids"][:-1]
    with pytest.raises(ValueError, match=f"{L} output_token_logprobs for {L - 1} output_ids"):
        capture_from_sglang(response, CaptureSpec())
    with pytest.raises(ValueError, match="return_logprob=True"):
        capture_from_sglang({"id": "r0"}, CaptureSpec())
    meta = dict(response["meta_info"], output_top_logprobs=[None] * L)
    with pytest.raises(ValueError, match=r"output_top_logprobs'\]\[0\] is None"):
        capture_from_sglang(meta, CaptureSpec(mode="topk", k=1))


def test_sglang_request_kwargs_follow_the_spec():
    got = [sglang_sampling_kwargs(s, V) for s in _specs()]
    assert [(g["top_logprobs_num"], g["token_ids_logprob"]) for g in got] == [
        (0, None),
        (4, None),
        (0, [1, 2]),
        (V, None),
    ]
    assert all(g["return_logprob"] is True for g in got)


# ---- budget and bytes -----------------------------------------------------------------------------------------------
def test_full_mode_over_budget_raises_before_generation_with_the_estimate():
    spec = CaptureSpec(mode="full", max_bytes=10_000_000)
    # 8 samples x 64 tokens x 32000 vocab x 4 B = 65,536,000 bytes = 0.06 GiB
    with pytest.raises(ValueError) as err:
        check_capture_budget(spec, batch_size=8, response_length=64, vocab_size=32000)
    msg = str(err.value)
    assert "65536000 bytes (0.06 GiB)" in msg and "actor_rollout_ref.rollout.logit_capture.max_bytes" in msg
    assert "mode=topk or token_ids" in msg and "response_length" in msg
    check_capture_budget(spec, batch_size=1, response_length=64, vocab_size=32000)  # 8,192,000 bytes: fits
    # fp16 halves it: 8 x 32 x 32000 x 2 = 16,384,000 > 10 MB; 4 x 32 x 32000 x 2 = 8,192,000 fits
    half = CaptureSpec(mode="full", dtype=torch.float16, max_bytes=10_000_000)
    with pytest.raises(ValueError, match="16384000 bytes"):
        check_capture_budget(half, 8, 32, 32000)
    check_capture_budget(half, 4, 32, 32000)
    for other in (CaptureSpec(max_bytes=1), CaptureSpec(mode="topk", k=50, max_bytes=1)):
        check_capture_budget(other, 1024, 4096, 152064)  # only full mode is ever refused


def test_bytes_per_token_per_mode():
    # 4 (logprob), 8k (topk), 4n (token_ids), 4V / 2V (full)
    k, ids = 3, (1, 2, 5)
    cases = [
        (CaptureSpec(), 4),
        (CaptureSpec(mode="topk", k=k), 8 * k),
        (CaptureSpec(mode="token_ids", ids=ids), 4 * len(ids)),
        (CaptureSpec(mode="full"), 4 * V),
        (CaptureSpec(mode="full", dtype="bfloat16"), 2 * V),
    ]
    z, tokens = _logits(), torch.zeros(L, dtype=torch.long)
    for spec, per_token in cases:
        cap = capture_from_logits(z, tokens, spec)
        assert cap.nbytes() == L * per_token, spec
        assert estimate_capture_bytes(spec, batch_size=2, response_length=L, vocab_size=V) == 2 * L * per_token
    assert capture_from_logits(z, tokens, cases[-1][0]).logits.dtype == torch.bfloat16


# ---- batch packing, concat, round trip ------------------------------------------------------------------------------
def _two_turns(spec: CaptureSpec) -> tuple[TokenCapture, TokenCapture]:
    z = _logits(seed=7)
    tokens = z.argmax(-1)
    return capture_from_logits(z[:2], tokens[:2], spec), capture_from_logits(z[2:5], tokens[2:5], spec)


def test_concat_joins_turns_in_order():
    spec = CaptureSpec(mode="topk", k=2)
    a, b = _two_turns(spec)
    both = TokenCapture.concat([a, b])
    assert len(both) == 5 and both.mode == "topk" and both.id_logprobs is None
    assert torch.equal(both.topk_ids, torch.cat([a.topk_ids, b.topk_ids]))
    assert torch.equal(both.logprobs, torch.cat([a.logprobs, b.logprobs]))
    with pytest.raises(ValueError, match="different kinds"):
        TokenCapture.concat([a, _two_turns(CaptureSpec())[0]])
    with pytest.raises(ValueError, match="at least one"):
        TokenCapture.concat([])


@pytest.mark.parametrize("mode", ["logprob", "topk", "token_ids", "full"])
def test_captures_to_tensors_places_turns_at_their_columns_and_round_trips(mode):
    spec = CaptureSpec(mode=mode, k=2, ids=(4, 1, 9), dtype="float16")
    a, b = _two_turns(spec)
    R = 9
    # sample 0: turn 1 at columns 0-1, user tokens at 2-3, turn 2 at 4-6; sample 1: one turn at 0..2; sample 2: none
    single = capture_from_logits(_logits(seed=8)[:3], torch.tensor([1, 2, 3]), spec)
    positions = [torch.tensor([0, 1, 4, 5, 6]), None, None]
    out = captures_to_tensors([TokenCapture.concat([a, b]), single, None], R, spec, positions)
    expected_keys = {
        "logprob": {"rollout_log_probs"},
        "topk": {"rollout_log_probs", "rollout_topk_logprobs", "rollout_topk_ids"},
        "token_ids": {"rollout_log_probs", "rollout_token_id_logprobs"},
        "full": {"rollout_log_probs", "rollout_logits"},
    }[mode]
    assert set(out) == expected_keys and set(out) <= set(CAPTURE_TENSOR_KEYS)
    lp = out["rollout_log_probs"]
    assert lp.shape == (3, R) and lp.dtype == torch.float32
    assert torch.equal(lp[0, [0, 1]], a.logprobs) and torch.equal(lp[0, [4, 5, 6]], b.logprobs)
    assert lp[0, [2, 3, 7, 8]].eq(0).all() and lp[1, 3:].eq(0).all() and lp[2].eq(0).all()  # padding 0
    if mode == "topk":
        ids = out["rollout_topk_ids"]
        assert ids.dtype == torch.long and ids.shape == (3, R, 2)
        assert ids[0, [2, 3]].eq(-1).all() and ids[2].eq(-1).all() and torch.equal(ids[0, 4:7], b.topk_ids)
    if mode == "token_ids":
        assert out["rollout_token_id_logprobs"].shape == (3, R, 3)
    if mode == "full":
        assert out["rollout_logits"].dtype == torch.float16 and out["rollout_logits"].shape == (3, R, V)
        assert torch.equal(out["rollout_logits"][0, [4, 5, 6]], b.logits)

    # round trip: the response mask marks generated tokens; responses carry the token ids
    responses = torch.zeros(3, R, dtype=torch.long)
    responses[0, positions[0]] = torch.cat([a.token_ids, b.token_ids])
    responses[1, :3] = single.token_ids
    mask = torch.zeros(3, R, dtype=torch.long)
    mask[0, positions[0]] = 1
    mask[1, :3] = 1
    batch = {**out, "responses": responses}
    for row, cap in ((0, TokenCapture.concat([a, b])), (1, single)):
        got = generation_logits_from_batch(batch, row, mask[row], spec=spec)
        want = cap.to_dict()
        assert set(got) == set(want) and got["mode"] == mode and got["ids"] == [4, 1, 9] and got["raw"] is False
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
    assert generation_logits_from_batch(out, 2, mask[2])["logprobs"].numel() == 0


def test_captures_to_tensors_rejects_bad_positions():
    spec = CaptureSpec()
    cap = _two_turns(spec)[1]  # 3 tokens
    with pytest.raises(ValueError, match=r"fall outside 0\.\.3"):
        captures_to_tensors([cap], 4, spec, [torch.tensor([0, 2, 4])])
    with pytest.raises(ValueError, match="fall outside"):
        captures_to_tensors([cap], 2, spec)  # longer than the response
    with pytest.raises(ValueError, match="positions has shape"):
        captures_to_tensors([cap], 4, spec, [torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="captured in mode 'logprob'"):
        captures_to_tensors([cap], 4, CaptureSpec(mode="topk", k=2))


def test_to_dict_is_the_interaction_payload():
    cap = capture_from_logits(_logits(), torch.zeros(L, dtype=torch.long), CaptureSpec(mode="token_ids", ids=(3, 1)))
    d = cap.to_dict()
    assert set(d) == {"mode", "ids", "raw", "token_ids", "logprobs", "id_logprobs"}
    assert d["mode"] == "token_ids" and d["ids"] == [3, 1] and d["raw"] is False
    assert d["id_logprobs"].shape == (L, 2)


# ---- spec -----------------------------------------------------------------------------------------------------------
def test_spec_from_config_accepts_typed_dictconfig_and_dict():
    assert CaptureSpec.from_config(LogitCaptureConfig()) is None  # enable=False
    assert CaptureSpec.from_config({"enable": False, "mode": "full"}) is None
    typed = CaptureSpec.from_config(LogitCaptureConfig(enable=True, mode="topk", k=5, dtype="bfloat16", raw=True))
    assert typed == CaptureSpec(mode="topk", k=5, raw=True, dtype=torch.bfloat16, max_bytes=1 << 30)
    node = OmegaConf.create({"enable": True, "mode": "token_ids", "ids": [7, 3], "max_bytes": 100})
    spec = CaptureSpec.from_config(node)
    assert spec.ids == (7, 3) and spec.n == 2 and spec.max_bytes == 100 and spec.dtype == torch.float32
    with pytest.raises(ValueError, match="logit_capture.mode"):
        CaptureSpec.from_config({"enable": True, "mode": "logits"})
    with pytest.raises(ValueError, match="unknown config key"):
        CaptureSpec.from_config({"enable": True, "top_k": 3})
    with pytest.raises(ValueError, match="needs token ids"):
        CaptureSpec(mode="token_ids")
