"""One rank of the Ulysses forward check (run by test_ulysses.py under torchrun, 2 ranks, gloo, no Ray).

Each rank runs ``forward_packed`` twice on the same micro-batch: alone (no sequence parallelism) and as one rank of
a Ulysses group of 2 (``verl.utils.ulysses``), on plain (unsharded) models loaded from the same weights. Rank 0 writes
the largest differences of the outputs and of the parameter gradients (the group's gradients averaged over its two
ranks, as FSDP would) for each case: a model whose key-value heads split over the group, one whose single key-value
head has to be repeated, a packed row whose length is not a multiple of 2 (filler tokens), and a batch whose response
positions all fall in the second rank's slice (the first rank gathers nothing), and activation checkpointing.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def _batch(leads: list[int], tails: list[int], prompt_len: int, response_len: int, seed: int):
    from verl.protocol import DataProto

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 500, (len(leads), prompt_len + response_len), generator=gen)
    mask = torch.ones_like(ids)
    for row, (lead, tail) in enumerate(zip(leads, tails)):
        mask[row, :lead] = 0
        if tail:
            mask[row, -tail:] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    tensors = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    return DataProto.from_dict(tensors={**tensors, "responses": ids[:, prompt_len:]})


def _run(model, data, response_len: int, group) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    from verl.workers.actor.dp_actor import forward_packed

    model.zero_grad()
    logits = forward_packed(model, data, response_len, group)
    picked = torch.log_softmax(logits.float(), -1).gather(-1, data.batch["responses"].unsqueeze(-1))
    picked.sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return logits.detach(), grads


def main(plain_dir: str, single_kv_dir: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from verl.utils.ulysses import enable_ulysses, ulysses_groups

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    sp_group, _ = ulysses_groups(2)
    cases = {
        "kv_heads_split": (plain_dir, _batch([0, 3, 5, 1], [0, 2, 0, 3], 10, 6, seed=0)),  # 50 tokens
        "kv_head_repeated": (single_kv_dir, _batch([0, 3, 5, 1], [0, 2, 0, 3], 10, 6, seed=1)),
        "odd_length_filler": (plain_dir, _batch([0, 2, 4], [1, 0, 0], 9, 5, seed=2)),  # 35 tokens + 1 filler
        "all_rows_on_rank_1": (plain_dir, _batch([0], [0], 30, 2, seed=3)),  # 32 tokens, read at 29 and 30
        # the decoder layers recomputed in backward, after the forward's sequence-parallel block has ended
        "gradient_checkpointing": (plain_dir, _batch([0, 3, 5, 1], [0, 2, 0, 3], 10, 6, seed=4)),
    }
    report = {}
    for name, (model_dir, data) in cases.items():
        alone = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
        grouped = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
        enable_ulysses(grouped)
        if name == "gradient_checkpointing":
            from verl.utils.hf_models import enable_gradient_checkpointing

            for model in (alone, grouped):
                enable_gradient_checkpointing(model)
                model.train()
        want, want_grads = _run(alone, data, data.batch["responses"].size(1), None)
        got, got_grads = _run(grouped, data, data.batch["responses"].size(1), sp_group)
        gap = 0.0
        for key, grad in got_grads.items():
            dist.all_reduce(grad, group=sp_group)
            grad /= 2
            gap = max(gap, (grad - want_grads[key]).abs().max().item() / (want_grads[key].abs().max().item() + 1e-12))
        nnz = int(data.batch["attention_mask"].sum())
        report[name] = {"logits": (got - want).abs().max().item(), "grads_rel": gap, "tokens": nnz}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:4])
