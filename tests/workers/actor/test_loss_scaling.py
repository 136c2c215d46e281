"""verl's two loss-scaling paths, worked by hand (reference/verl_parity_facts.md section 1c).

Two ranks, one mini-batch of 4 sequences, micro-batch size 1 (so gradient accumulation GA = 2). Token losses:
rank 0 holds A = (1, 3) and B = (1, 1, 1, 1); rank 1 holds C = (6,) and D = (0, 0, 3). N = 10 tokens, S = 17.

Each rank's contribution is sum_mu scale_mu * L_mu; FSDP averages gradients over ranks, so the objective is
J = (1/2) * sum_ranks sum_mu scale_mu * L_mu. On the engine path L_mu already divides by the global counts and
scale_mu = 1; on the legacy path L_mu is a micro-batch-local mean and scale_mu = 1/GA.

The policy losses are evaluated at ratio 1 (log_prob == old_log_prob) with advantages = -loss, so every token's
loss is exactly the number above (vanilla: -A * r = loss; the dual clip does not bind at r = 1).
"""

from __future__ import annotations

import pytest
import torch

from verl.trainer.ppo import core_algos
from verl.workers.actor.dp_actor import micro_batch_scales

RANKS = [[[1.0, 3.0], [1.0, 1.0, 1.0, 1.0]], [[6.0], [0.0, 0.0, 3.0]]]  # rank -> micro-batches (1 row each)
WIDTH = 4
GLOBAL_BATCH_SIZE = 4  # sequences per mini-batch over both ranks
TOTAL_TOKENS = 10


def _rows(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (loss, mask) of a micro-batch, each (b, WIDTH)."""
    loss = torch.zeros(len(rows), WIDTH)
    mask = torch.zeros(len(rows), WIDTH)
    for i, row in enumerate(rows):
        loss[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
    return loss, mask


def _policy_loss(loss_mode: str, rows: list[list[float]], agg_mode: str, info: dict) -> float:
    token_loss, mask = _rows(rows)
    log_prob = torch.zeros_like(token_loss)
    config = {"clip_ratio": 0.2, "clip_ratio_c": 3.0, "global_batch_info": info}
    value, _ = core_algos.get_policy_loss_fn(loss_mode)(
        old_log_prob=log_prob,
        log_prob=log_prob,
        advantages=-token_loss,
        response_mask=mask,
        loss_agg_mode=agg_mode,
        config=config,
    )
    return float(value)


def _objective(loss_mode: str, agg_mode: str, engine: bool, packing=None) -> float:
    """J over both ranks; ``packing`` (legacy dynamic bsz) lists each rank's micro-batches as lists of rows."""
    ranks = packing or [[[row] for row in rank] for rank in RANKS]
    per_rank = []
    for micro_batches in ranks:
        info = {}
        if engine:
            info = {"dp_size": 2, "batch_num_tokens": TOTAL_TOKENS, "global_batch_size": GLOBAL_BATCH_SIZE}
        rows_per_micro = [len(m) for m in micro_batches]
        scales = micro_batch_scales(rows_per_micro, sum(rows_per_micro), packing is not None, engine)
        per_rank.append(sum(s * _policy_loss(loss_mode, m, agg_mode, info) for s, m in zip(scales, micro_batches)))
    return sum(per_rank) / len(per_rank)


@pytest.mark.parametrize(
    "agg_mode, legacy, engine",
    [
        # legacy per-micro values (2, 1, 6, 1) -> ((2+1)/2 + (6+1)/2) / 2 = (1.5 + 3.5) / 2 = 2.5
        # engine: 2*4/10=0.8, 2*4/10=0.8, 2*6/10=1.2, 2*3/10=0.6 -> ((0.8+0.8) + (1.2+0.6)) / 2 = 1.7 = 17/10
        ("token-mean", 2.5, 1.7),
        # row sums 4, 4, 6, 3; legacy ((4+4)/2 + (6+3)/2)/2 = 4.25; engine 2*4/4=2, 2, 3, 1.5 -> (4 + 4.5)/2 = 4.25
        ("seq-mean-token-sum", 4.25, 4.25),
        # row means 2, 1, 6, 1; legacy (1.5 + 3.5)/2 = 2.5; engine 2*2/4=1, 0.5, 3, 0.5 -> (1.5 + 3.5)/2 = 2.5
        ("seq-mean-token-mean", 2.5, 2.5),
    ],
)
def test_vanilla_worked_example_both_paths(agg_mode, legacy, engine):
    assert _objective("vanilla", agg_mode, engine=False) == pytest.approx(legacy, abs=1e-6)
    assert _objective("vanilla", agg_mode, engine=True) == pytest.approx(engine, abs=1e-6)


def test_legacy_dynamic_bsz_depends_on_packing():
    # rank 0 packs A+B into one micro-batch (scale 2/2): token-mean (1+3+1+1+1+1)/6 = 8/6; rank 1 keeps C and D
    # apart (scale 1/2 each): (6 + 1)/2 = 3.5. J = (8/6 + 3.5) / 2 = 2.41667, not the 2.5 of the fixed split.
    packing = [[[[1.0, 3.0], [1.0, 1.0, 1.0, 1.0]]], [[[6.0]], [[0.0, 0.0, 3.0]]]]
    assert _objective("vanilla", "token-mean", engine=False, packing=packing) == pytest.approx(2.416667, abs=1e-5)


@pytest.mark.parametrize("loss_mode", ["gspo", "geo_mean"])
def test_sequence_losses_worked_example_both_paths(loss_mode):
    # Both reduce each row to its token mean (2, 1, 6, 1). gspo forces seq-mean-token-mean; geo_mean averages rows.
    # Legacy: per-micro 2, 1, 6, 1 scaled by 1/2 -> 2.5. Engine: 2 * row / 4 -> 1, 0.5, 3, 0.5 -> 2.5. Upstream's
    # geo_mean ignores the global counts on the engine path and would give ((2+1) + (6+1)) / 2 = 5 here.
    for agg_mode in ("token-mean", "seq-mean-token-sum"):  # the requested mode must not matter
        assert _objective(loss_mode, agg_mode, engine=False) == pytest.approx(2.5, abs=1e-5)
        assert _objective(loss_mode, agg_mode, engine=True) == pytest.approx(2.5, abs=1e-5)


def test_micro_batch_scales():
    assert micro_batch_scales([1, 1, 1, 1], 4, use_dynamic_bsz=False, global_norm=False) == [0.25] * 4
    assert micro_batch_scales([3, 1], 4, use_dynamic_bsz=True, global_norm=False) == [0.75, 0.25]
    assert micro_batch_scales([3, 1], 4, use_dynamic_bsz=True, global_norm=True) == [1.0, 1.0]
