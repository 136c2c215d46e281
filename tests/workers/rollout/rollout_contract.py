"""The rollout output contract (module docstring of ``verl/workers/rollout/hf_rollout.py``) as one check.

Run against every engine: hf (``test_hf_rollout.py``/``test_vllm_rollout.py``), vLLM (``test_vllm_rollout.py``) and
SGLang (fake engine on CPU, the real one on GPU; ``test_sglang_rollout.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from verl.protocol import DataProto

REQUIRED_KEYS = ("prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask")


def check_rollout_output(
    out: DataProto, prompts: DataProto, response_length: int, eos_id: int | Sequence[int], pad_id: int
) -> None:
    """Assert that ``out`` is a valid rollout of ``prompts``.

    Checks: the keys and shapes; prompts unchanged; ``input_ids = prompts ++ responses``; ``response_mask`` is 1 up
    to and including the first EOS (ones form a prefix, nothing after an EOS); responses hold ``pad_id`` wherever the
    mask is 0; the attention mask continues with the response mask; positions continue by +1; ``rollout_log_probs``
    (when present) is finite, <= 0 on generated tokens and 0 on padding; the non-tensor batch is carried over.
    """
    eos_ids = torch.as_tensor([eos_id] if isinstance(eos_id, int) else list(eos_id)).reshape(-1)
    batch = out.batch
    for key in REQUIRED_KEYS:
        assert key in batch.keys(), f"rollout output lacks {key!r}"
    idx = prompts.batch["input_ids"]
    bs, p = idx.shape
    r = response_length
    shapes = {"prompts": (bs, p), "responses": (bs, r), "input_ids": (bs, p + r), "attention_mask": (bs, p + r)}
    shapes.update({"position_ids": (bs, p + r), "response_mask": (bs, r)})
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, f"{key} has shape {tuple(batch[key].shape)}, expected {shape}"
    responses, mask = batch["responses"], batch["response_mask"]
    assert torch.equal(batch["prompts"], idx), "prompts must be returned exactly as given (left-padded)"
    assert torch.equal(batch["input_ids"], torch.cat([idx, responses], dim=-1)), "input_ids != prompts ++ responses"
    assert torch.equal(batch["attention_mask"][:, :p], prompts.batch["attention_mask"]), "prompt mask changed"
    assert torch.equal(batch["attention_mask"][:, p:], mask), "response attention mask != response_mask"
    assert set(mask.unique().tolist()) <= {0, 1}, "response_mask must be 0/1"
    # Ones form a prefix: the mask never rises again after a 0.
    assert bool((mask[:, 1:] <= mask[:, :-1]).all()), "response_mask has a 1 after a 0"
    assert bool((responses[mask == 0] == pad_id).all()), "responses must hold pad_id wherever response_mask is 0"
    is_eos = torch.isin(responses, eos_ids) & mask.bool()
    lengths = mask.sum(-1)
    for row in range(bs):
        eos_positions = is_eos[row].nonzero().flatten().tolist()
        assert len(eos_positions) <= 1, f"row {row}: tokens after the first EOS are kept in the mask"
        if eos_positions:
            assert eos_positions[0] == int(lengths[row]) - 1, f"row {row}: the mask does not end at its EOS"
    positions = batch["position_ids"]
    assert torch.equal(positions[..., :p], prompts.batch["position_ids"]), "prompt positions changed"
    expected = prompts.batch["position_ids"][..., -1:] + torch.arange(1, r + 1)
    assert torch.equal(positions[..., p:], expected), "response positions must continue by +1 per token"
    if "rollout_log_probs" in batch.keys():
        lp = batch["rollout_log_probs"]
        assert tuple(lp.shape) == (bs, r) and lp.dtype == torch.float32, "rollout_log_probs must be (bs, R) float32"
        assert bool(torch.isfinite(lp).all()), "rollout_log_probs must be finite"
        assert bool((lp[mask.bool()] <= 1e-6).all()), "log-probabilities must be <= 0"
        assert bool((lp[~mask.bool()] == 0).all()), "rollout_log_probs must be 0 on padding"
    for key, value in (prompts.non_tensor_batch or {}).items():
        assert key in out.non_tensor_batch, f"non-tensor key {key!r} was dropped"
        assert np.array_equal(out.non_tensor_batch[key], value), f"non-tensor {key!r} changed"
