"""One rank of the pipeline-parallel megatron check (run by tests/models/test_mcore.py under torchrun, 2 ranks).

Stage s builds its ``GPTModel`` stage (embedding on the first, final norm and output layer on the last) from the
converter's stage state dict, loaded strictly; the stages run one forward as a pipeline (stage 0's hidden states go
to stage 1 over gloo, megatron's ``set_input_tensor``) and the last stage reports, as JSON, the largest logit
difference to the HF model, and whether the stages' state dicts merge back to the HF weights exactly.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from verl.models.mcore import hf_to_mcore_config, hf_to_mcore_state_dict, mcore_to_hf_state_dict, merge_pp_stages
from verl.models.mcore.model import build_gpt_model, causal_key_mask
from verl.models.mcore.parallel import initialize_model_parallel


def main(model_dir: str) -> None:
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = hf.config
    initialize_model_parallel(
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=2,
        context_parallel_size=1,
        expert_model_parallel_size=1,
        seed=1,
    )
    from megatron.core import parallel_state

    stage = parallel_state.get_pipeline_model_parallel_rank()
    first, last = stage == 0, stage == 1
    tf = hf_to_mcore_config(cfg, pipeline_model_parallel_size=2)
    gpt = build_gpt_model(cfg, tf, pre_process=first, post_process=last)
    state = hf_to_mcore_state_dict(hf.state_dict(), cfg, pp_rank=stage, pp_size=2)
    missing, unexpected = gpt.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("_extra_state")]

    ids = torch.randint(4, int(cfg.vocab_size), (2, 10), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(10)[None, :].expand(2, 10)
    mask = causal_key_mask(torch.ones_like(ids))
    with torch.no_grad():
        if first:
            hidden = gpt(ids, positions, mask)  # [seq, batch, hidden] without the post-process
            dist.send(hidden.contiguous(), dst=1)
        else:
            hidden = torch.empty(10, 2, int(cfg.hidden_size))
            dist.recv(hidden, src=0)
            gpt.set_input_tensor(hidden)
            logits = gpt(ids, positions, mask)
            want = hf(input_ids=ids).logits
    stages = [None, None]
    dist.all_gather_object(stages, {k: v for k, v in gpt.state_dict().items() if torch.is_tensor(v)})
    back = mcore_to_hf_state_dict(merge_pp_stages(stages, int(cfg.num_hidden_layers), cfg.tie_word_embeddings), cfg)
    reference = {k: v for k, v in hf.state_dict().items() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    round_trip = set(back) == set(reference) and all(torch.equal(back[k], reference[k]) for k in reference)
    report = {"stage": stage, "missing": missing, "unexpected": list(unexpected), "round_trip": round_trip}
    report["keys"] = sorted(k for k in state if not k.startswith("decoder.layers."))
    if last:
        report["max_logit_diff"] = (want - logits).abs().max().item()
    print("REPORT " + json.dumps(report), flush=True)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
