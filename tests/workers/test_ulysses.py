"""Ulysses sequence parallelism on CPU (gloo): the all-to-all attention forward equals the plain one, and the FSDP
workers with ``ulysses_sequence_parallel_size=2`` (actor, reference and critic) give the numbers of
``ulysses_sequence_parallel_size=1`` on the same batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def _torchrun(nproc: int, script: str, *args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(HERE / script), *args]
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]


@pytest.fixture(scope="module")
def single_kv_model_dir(tmp_path_factory) -> str:
    """The tiny architecture with one key-value head (the group must repeat it)."""
    from verl.utils.testing.tiny import TinyModelSpec, build_tiny_model

    out = tmp_path_factory.mktemp("tiny_single_kv")
    build_tiny_model(out, seed=0, spec=TinyModelSpec(num_kv_heads=1))
    return str(out)


def test_ulysses_forward_and_gradients_equal_the_plain_forward(tiny_model_dir, single_kv_model_dir, tmp_path):
    """2 ranks: outputs within 1e-5 and gradients within 1e-5 relative of the same forward without sequence
    parallelism, for split and repeated key-value heads, a filler token, a rank that reads no position, and
    activation checkpointing (the recomputation runs after the forward's block)."""
    _torchrun(2, "ulysses_rank.py", tiny_model_dir, single_kv_model_dir, str(tmp_path / "r.json"), cwd=tmp_path)
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report) == {
        "kv_heads_split",
        "kv_head_repeated",
        "odd_length_filler",
        "all_rows_on_rank_1",
        "gradient_checkpointing",
    }
    for case, gaps in report.items():
        assert gaps["logits"] < 1e-5, (case, gaps)
        assert gaps["grads_rel"] < 1e-5, (case, gaps)


def test_workers_with_sequence_parallel_2_equal_sequence_parallel_1_on_the_same_batch(tiny_model_dir, tmp_path):
    """The real FSDP workers on one fixed batch: 2 ranks without Ulysses (data parallel 2) against 4 ranks with
    ulysses_sequence_parallel_size=2 (data parallel 2 x sequence parallel 2), both padding-free. Log-probs (actor and
    reference) and values within 1e-5; the PPO update's policy loss, KL loss and gradient norm, and the critic's
    value loss and gradient norm, within 1e-5 relative (also on verl's engine path); log-probs after the lr=1e-2
    update within 5e-4."""
    sys.path.insert(0, str(HERE))
    from parity_worker import batch
    from transformers import AutoTokenizer

    _torchrun(2, "parity_worker.py", "fsdp-rmpad", tiny_model_dir, str(tmp_path / "sp1.json"), "1", cwd=tmp_path)
    _torchrun(4, "parity_worker.py", "fsdp-rmpad", tiny_model_dir, str(tmp_path / "sp2.json"), "2", cwd=tmp_path)
    one = json.loads((tmp_path / "sp1.json").read_text())
    two = json.loads((tmp_path / "sp2.json").read_text())
    mask = batch(AutoTokenizer.from_pretrained(tiny_model_dir)).chunk(2)[0].batch["response_mask"].bool()
    for key, tol in (("log_probs", 1e-5), ("ref_log_probs", 1e-5), ("after", 5e-4), ("values", 1e-5)):
        gap = (torch.tensor(one[key]) - torch.tensor(two[key])).abs()[mask].max().item()
        assert gap < tol, (key, gap)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
    assert one["metrics"]["actor/grad_norm"][0] > 0.1  # a real update
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert two["engine_metrics"][key] == pytest.approx(one["engine_metrics"][key], rel=1e-5, abs=1e-7), key
    for key in ("critic/vf_loss", "critic/grad_norm"):
        assert two["critic_metrics"][key] == pytest.approx(one["critic_metrics"][key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_outside_the_sequence_parallel_block_the_model_keeps_its_own_kernel(tiny_model_dir, kernel):
    """Generation and padded forwards of a Ulysses-routed model run the model's own attention (and masks): the same
    logits and the same greedy tokens as the unrouted model."""
    from transformers import AutoModelForCausalLM

    from verl.utils.ulysses import enable_ulysses

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=kernel)
    routed = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=kernel)
    assert enable_ulysses(routed) == f"verl_ulysses_{kernel}"
    assert routed.model.layers[0].self_attn.config._attn_implementation == f"verl_ulysses_{kernel}"
    ids = torch.randint(4, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    with torch.no_grad():
        assert torch.equal(routed(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits)
    greedy = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False}
    assert torch.equal(routed.generate(ids, **greedy), plain.generate(ids, **greedy))
