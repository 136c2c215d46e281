"""One rank of the tensor-parallel megatron checks (run by tests/models/test_mcore.py under torchrun).

Rank r builds the tiny model's TP slice from the HF weights, runs the HF-style forward, and reports (as JSON on
rank 0): the largest logit difference to the HF model on real tokens, whether the gathered slices reassemble to
the unsharded layout and convert back to the HF weights exactly, and a backward pass's gradient norm.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from verl.models.mcore import hf_to_mcore_config, hf_to_mcore_state_dict, mcore_to_hf_state_dict, merge_tp_shards
from verl.models.mcore.model import MegatronCausalLM, build_gpt_model
from verl.models.mcore.parallel import initialize_model_parallel


def main(model_dir: str, tp: int) -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # tests/gpu/run.sh runs this on CUDA too
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    cfg = hf.config
    initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=1,
        context_parallel_size=1,
        expert_model_parallel_size=1,
        seed=1,
    )
    from megatron.core import parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    gpt = build_gpt_model(cfg, hf_to_mcore_config(cfg, tensor_model_parallel_size=tp))
    shard = hf_to_mcore_state_dict({k: v.cpu() for k, v in hf.state_dict().items()}, cfg, tp_rank=rank, tp_size=tp)
    missing, unexpected = gpt.load_state_dict(shard, strict=False)
    missing = [m for m in missing if not m.endswith("_extra_state")]
    model = MegatronCausalLM(gpt.to(device), cfg)

    ids = torch.randint(4, int(cfg.vocab_size), (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    mask[2, :2] = 0
    mask[2, -1] = 0
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    got = model(ids, attention_mask=mask, position_ids=positions).logits
    diff = (want - got.detach()).abs()[mask.bool()].max().item()
    (got.float()[mask.bool()].logsumexp(-1).mean()).backward()
    local_sq = sum(float(p.grad.float().pow(2).sum()) for p in gpt.parameters() if p.grad is not None)

    shards = [None] * tp
    tensors = {k: v.cpu() for k, v in gpt.state_dict().items() if torch.is_tensor(v)}
    dist.all_gather_object(shards, tensors, group=parallel_state.get_tensor_model_parallel_group())
    merged = merge_tp_shards(shards)
    hf_cpu = {k: v.cpu() for k, v in hf.state_dict().items()}
    single = hf_to_mcore_state_dict(hf_cpu, cfg)
    reassembled = set(merged) == set(single) and all(torch.equal(merged[k], single[k]) for k in single)
    back = mcore_to_hf_state_dict(merged, cfg)
    reference = {k: v for k, v in hf_cpu.items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    round_trip = set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    if dist.get_rank() == 0:
        report = {
            "tp": tp,
            "missing": missing,
            "unexpected": list(unexpected),
            "max_logit_diff": diff,
            "local_shapes": {k: list(v.shape) for k, v in shard.items()},
            "reassembled": reassembled,
            "round_trip": round_trip,
            "grad_sq_rank0": local_sq,
        }
        print("REPORT " + json.dumps(report), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
