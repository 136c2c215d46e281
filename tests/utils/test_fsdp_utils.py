"""FSDP helpers on 2 gloo processes: wrapping, gradient clipping, full-state-dict round trips, checkpoints.

Each strategy runs once in a fresh interpreter (this file doubles as the launcher script, because pytest's
importlib mode makes test modules unimportable from ``torch.multiprocessing`` children); every rank writes its
observations to a file and the tests below assert on them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

# ------------------------------------------------------------------------------------------ the 2-rank program


def _batch(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (4, 16), generator=torch.Generator().manual_seed(1))


def _loss(model, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, labels=x).loss


def _check_wrapping(model, reference, x, strategy: str) -> dict:
    from torch.distributed.fsdp import FSDPModule

    out = {}
    if strategy == "fsdp2":
        out["layers_sharded"] = all(isinstance(layer, FSDPModule) for layer in model.model.layers)
        out["root_sharded"] = isinstance(model, FSDPModule)
    with torch.no_grad():
        out["forward_max_diff"] = (model(input_ids=x).logits - reference(input_ids=x).logits).abs().max().item()
    return out


def _check_clipping(model, reference, x, strategy: str) -> dict:
    from verl.utils.fsdp_utils import fsdp2_clip_grad_norm_, local_shard

    _loss(reference, x).backward()
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters() if p.grad is not None]).item()
    _loss(model, x).backward()
    if strategy == "fsdp2":
        norm = fsdp2_clip_grad_norm_(model.parameters(), max_norm=0.1)
    else:
        norm = model.clip_grad_norm_(0.1)
    # Norm of the clipped gradient, from this rank's shards summed over ranks.
    squares = sum(local_shard(p.grad).double().pow(2).sum() for p in model.parameters() if p.grad is not None)
    torch.distributed.all_reduce(squares)
    clipped = squares.sqrt().item()
    model.zero_grad()
    return {"grad_norm": float(norm), "ref_grad_norm": ref_norm, "clipped_norm": clipped}


def _check_full_state_dict(model, reference) -> dict:
    from verl.utils.fsdp_utils import get_full_state_dict, load_full_state_dict

    expected = reference.state_dict()
    rank0_only = get_full_state_dict(model, cpu_offload=True)
    everywhere = get_full_state_dict(model, cpu_offload=False)
    state_dict_keys = sorted(everywhere)
    out = {
        "offload_keys": len(rank0_only),
        "all_keys": len(everywhere),
        "state_dict_keys": state_dict_keys,
        "full_matches": all(torch.equal(v, expected[k]) for k, v in everywhere.items()),
    }
    from verl.utils.fsdp_utils import full_params, is_fsdp2_module

    with full_params(model) as state:  # the rollout's weight sync: unshard() on FSDP2, the state dict otherwise
        out["full_params_keys"] = sorted(state)
        out["full_params_match"] = all(torch.equal(v, everywhere[k]) for k, v in state.items())
        # FSDP2 takes the unshard() path: inside the block the module itself holds plain full tensors
        out["unsharded_inside"] = all(type(p).__name__ != "DTensor" for p in model.parameters())
    if is_fsdp2_module(model):  # resharded on exit: forward and optimizer see DTensor shards again
        out["resharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # corrupt, then restore from rank 0's copy
    load_full_state_dict(model, everywhere if torch.distributed.get_rank() == 0 else {}, broadcast_from_rank0=True)
    restored = get_full_state_dict(model, cpu_offload=False)
    out["restored"] = all(torch.equal(v, expected[k]) for k, v in restored.items())
    return out


def _check_checkpoint(model, x, ckpt_dir: str, tokenizer) -> dict:
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.hf_models import build_lr_scheduler, build_optimizer

    optim_cfg = {"lr": 1e-2, "lr_warmup_steps": 3, "total_training_steps": 10}
    optimizer = build_optimizer(model.parameters(), optim_cfg)
    scheduler = build_lr_scheduler(optimizer, optim_cfg)

    def step() -> float:
        loss = _loss(model, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        return loss.item()

    step()  # warm-up step 0 runs at lr 0
    step()
    manager = FSDPCheckpointManager(
        model, optimizer, scheduler, tokenizer, {"save_contents": ["model", "optimizer", "extra", "hf_model"]}
    )
    manager.save_checkpoint(ckpt_dir, global_step=1)
    noise_after_save = torch.rand(1).item()
    straight = [step(), step()]
    manager.load_checkpoint(ckpt_dir)
    noise_after_load = torch.rand(1).item()
    resumed = [step(), step()]
    return {
        "straight": straight,
        "resumed": resumed,
        "rng_restored": noise_after_save == noise_after_load,
        "files": sorted(os.listdir(ckpt_dir)),
    }


def _run_rank(rank: int, world: int, port: int, strategy: str, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from transformers import AutoTokenizer

    from verl.utils.fsdp_utils import create_device_mesh, wrap_model
    from verl.utils.hf_models import build_causal_lm

    reference = build_causal_lm(model_dir)
    # Named block classes: one unit per decoder layer even for this small model (the default would make it one).
    layer_cls = type(reference.model.layers[0]).__name__
    config = {"wrap_policy": {"transformer_layer_cls_to_wrap": [layer_cls]}}
    model = wrap_model(build_causal_lm(model_dir), strategy, config, create_device_mesh(world))
    x = _batch(reference.config.vocab_size)
    results = _check_wrapping(model, reference, x, strategy)
    results.update(_check_clipping(model, reference, x, strategy))
    results.update(_check_full_state_dict(model, reference))
    results.update(_check_checkpoint(model, x, os.path.join(out_dir, "ckpt"), AutoTokenizer.from_pretrained(model_dir)))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import torch.multiprocessing as mp

    _strategy, _model_dir, _out_dir = sys.argv[1:4]
    mp.spawn(_run_rank, args=(2, _free_port(), _strategy, _model_dir, _out_dir), nprocs=2, join=True)


# ------------------------------------------------------------------------------------------ tests


def _launch(strategy: str, model_dir: str, out_dir) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, __file__, strategy, model_dir, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        r["out_dir"] = str(out_dir)
    return ranks


@pytest.fixture(scope="module")
def fsdp2_ranks(tiny_model_dir, tmp_path_factory) -> list[dict]:
    return _launch("fsdp2", tiny_model_dir, tmp_path_factory.mktemp("fsdp2"))


@pytest.fixture(scope="module")
def fsdp1_ranks(tiny_model_dir, tmp_path_factory) -> list[dict]:
    return _launch("fsdp", tiny_model_dir, tmp_path_factory.mktemp("fsdp1"))


@pytest.mark.slow
def test_fsdp2_shards_every_decoder_layer_and_matches_the_unsharded_forward(fsdp2_ranks):
    for r in fsdp2_ranks:
        assert r["layers_sharded"] and r["root_sharded"]
        assert r["forward_max_diff"] < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp1"])
def test_grad_clipping_uses_the_global_norm(strategy, request):
    for r in request.getfixturevalue(f"{strategy}_ranks"):
        # Both ranks see the same batch, so the averaged sharded gradient equals the single-process one.
        assert r["grad_norm"] == pytest.approx(r["ref_grad_norm"], rel=1e-4)
        assert r["clipped_norm"] == pytest.approx(0.1, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp1"])
def test_full_state_dict_round_trip(strategy, request):
    rank0, rank1 = request.getfixturevalue(f"{strategy}_ranks")
    assert rank0["offload_keys"] == rank0["all_keys"] > 0
    assert rank1["offload_keys"] == 0  # cpu_offload gathers to rank 0 only
    assert rank1["all_keys"] == rank0["all_keys"]
    for r in (rank0, rank1):
        assert r["full_matches"] and r["restored"]
        assert r["full_params_match"] and r["full_params_keys"] == r["state_dict_keys"]
        if strategy == "fsdp2":
            assert r["unsharded_inside"] and r["resharded"] is True


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp1"])
def test_checkpoint_resume_is_bit_exact(strategy, request):
    for r in request.getfixturevalue(f"{strategy}_ranks"):
        assert r["resumed"] == r["straight"]
        assert r["rng_restored"]
        for name in ("model", "optim", "extra_state"):
            assert f"{name}_world_size_2_rank_0.pt" in r["files"] and f"{name}_world_size_2_rank_1.pt" in r["files"]
        assert "fsdp_config.json" in r["files"] and "huggingface" in r["files"]
        assert not [f for f in r["files"] if ".tmp" in f]


@pytest.mark.slow
def test_hf_export_loads_with_auto_model(fsdp2_ranks, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    hf_dir = os.path.join(fsdp2_ranks[0]["out_dir"], "ckpt", "huggingface")
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert model.config.vocab_size == original.config.vocab_size
    # Two warm-up steps (lr 0, then lr/3) were taken before saving, so the exported weights moved.
    assert not torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_atomic_save_leaves_no_complete_looking_file_when_interrupted(tmp_path, monkeypatch):
    from verl.utils.checkpoint import fsdp_checkpoint_manager as fcm

    target = tmp_path / "model_world_size_1_rank_0.pt"

    def partial_then_crash(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(fcm.torch, "save", partial_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fcm.atomic_torch_save({"a": 1}, str(target))
    assert not target.exists()


def test_loading_a_checkpoint_with_another_world_size_is_refused(tmp_path):
    import json

    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    (tmp_path / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 4}))
    manager = FSDPCheckpointManager(torch.nn.Linear(2, 2), None)
    with pytest.raises(ValueError, match="world size 4"):
        manager.load_checkpoint(str(tmp_path))


def test_single_process_checkpoint_round_trip_restores_model_and_optimizer(tmp_path):
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(3, 4)

    def step() -> float:
        loss = model(x).pow(2).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    step()
    manager = FSDPCheckpointManager(model, optimizer)
    manager.save_checkpoint(str(tmp_path))
    straight = [step(), step()]
    manager.load_checkpoint(str(tmp_path))
    assert [step(), step()] == straight
    assert (tmp_path / "model_world_size_1_rank_0.pt").exists()


# ------------------------------------------------------------------------------------------ model/optimizer builders


def test_value_model_head_is_seeded_identically_and_has_no_dropout(tiny_model_dir):
    from verl.utils.hf_models import build_value_model

    a, b = build_value_model(tiny_model_dir, seed=3), build_value_model(tiny_model_dir, seed=3)
    assert torch.equal(a.score.weight, b.score.weight)  # every rank builds the same head before sharding
    assert a.config.num_labels == 1 and a.config.classifier_dropout == 0.0
    x = torch.randint(0, a.config.vocab_size, (2, 6))
    a.train()
    assert torch.equal(a(input_ids=x).logits, a(input_ids=x).logits)  # deterministic in train mode
    assert a(input_ids=x).logits.shape == (2, 6, 1)


def test_override_config_reaches_the_built_model(tiny_model_dir):
    from verl.utils.hf_models import build_causal_lm

    model = build_causal_lm(tiny_model_dir, override_config={"rms_norm_eps": 1e-3, "attn_implementation": "eager"})
    assert model.config.rms_norm_eps == 1e-3
    assert model.config._attn_implementation == "eager"


def test_reward_wrapper_scores_every_token_like_the_sequence_classifier(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from verl.utils.hf_models import TokenScoreModel

    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    x = torch.randint(4, classifier.config.vocab_size, (2, 7))
    with torch.no_grad():
        per_token = TokenScoreModel(classifier)(input_ids=x)  # (2, 7)
        pooled = classifier(input_ids=x).logits[:, 0]  # pooled at the last (non-pad) token
    torch.testing.assert_close(per_token[:, -1], pooled)


def test_constant_schedule_without_warmup_starts_at_the_full_lr():
    from verl.utils.hf_models import build_lr_scheduler, build_optimizer

    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"lr": 0.5, "betas": [0.8, 0.9]})
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    scheduler = build_lr_scheduler(optimizer, {"lr_warmup_steps": -1, "lr_warmup_steps_ratio": 0.0})
    assert scheduler.get_last_lr() == [0.5]


def test_warmup_ratio_and_cosine_schedule():
    from verl.utils.hf_models import build_lr_scheduler, build_optimizer

    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(2))], {"lr": 1.0})
    cfg = {"lr_warmup_steps_ratio": 0.5, "total_training_steps": 4, "lr_scheduler_type": "cosine", "min_lr_ratio": 0.0}
    scheduler = build_lr_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # 2 warm-up steps (0, 0.5), then cosine from 1 over the remaining 2 steps: 1, 0.5.
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="total_training_steps"):
        build_lr_scheduler(optimizer, {"lr_scheduler_type": "cosine"})


def test_mixed_precision_defaults_to_fp32_on_cpu_and_accepts_explicit_dtypes():
    from verl.utils.fsdp_utils import mixed_precision_dtypes

    assert mixed_precision_dtypes({}) == (torch.float32, torch.float32, torch.float32)
    explicit = {"mixed_precision": {"param_dtype": "bf16", "reduce_dtype": "fp32", "buffer_dtype": "fp32"}}
    assert mixed_precision_dtypes(explicit) == (torch.bfloat16, torch.float32, torch.float32)
    with pytest.raises(ValueError, match="Unknown dtype"):
        mixed_precision_dtypes({"mixed_precision": {"param_dtype": "fp8"}})


def test_fsdp2_units_follow_the_wrap_policy_and_small_models_are_one_unit(tiny_model_dir, monkeypatch):
    from verl.utils import fsdp_utils
    from verl.utils.hf_models import build_causal_lm

    model = build_causal_lm(tiny_model_dir)
    layers = list(model.model.layers)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < fsdp_utils.SINGLE_UNIT_MAX_PARAMS
    assert fsdp_utils.fsdp2_blocks(model, {}) == []  # verl's defaults on a small model: the root is the only unit
    named = {"wrap_policy": {"transformer_layer_cls_to_wrap": [type(layers[0]).__name__]}}
    assert fsdp_utils.fsdp2_blocks(model, named) == layers
    per_layer = sum(p.numel() for p in layers[0].parameters())
    assert fsdp_utils.fsdp2_blocks(model, {"wrap_policy": {"min_num_params": per_layer}}) == layers
    assert fsdp_utils.fsdp2_blocks(model, {"wrap_policy": {"min_num_params": per_layer + 1}}) == []
    monkeypatch.setattr(fsdp_utils, "SINGLE_UNIT_MAX_PARAMS", n_params)  # a model at the threshold: per layer
    assert fsdp_utils.fsdp2_blocks(model, {"wrap_policy": {"min_num_params": 0}}) == layers


def test_small_frozen_models_are_replicated_unless_the_config_asks_for_sharding(tiny_model_dir):
    from verl.utils.fsdp_utils import replicate_frozen_model
    from verl.utils.hf_models import build_causal_lm

    model = build_causal_lm(tiny_model_dir)
    assert replicate_frozen_model(model, "fsdp2", {})
    layer = type(model.model.layers[0]).__name__
    for config in (
        {"param_offload": True},
        {"offload_policy": True},
        {"wrap_policy": {"transformer_layer_cls_to_wrap": [layer]}},
        {"wrap_policy": {"min_num_params": 1}},
        {"mixed_precision": {"param_dtype": "bf16"}},  # sharded, it would compute in bf16: keep that
    ):
        assert not replicate_frozen_model(model, "fsdp2", config), config
    assert not replicate_frozen_model(model, "fsdp", {})  # FSDP1 keeps its own behaviour


def test_adamw_uses_the_multi_tensor_implementation_with_bit_identical_updates():
    from verl.utils.hf_models import build_optimizer

    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (16, 64), (5,)]
    start = [torch.randn(s) for s in shapes]
    cfg = {"lr": 1e-2, "weight_decay": 0.01, "betas": [0.9, 0.99]}
    runs = {}
    for name, override in (("default", None), ("per-parameter", {"foreach": False})):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = build_optimizer(params, {**cfg, "override_optimizer_config": override})
        assert optimizer.defaults["foreach"] is (override is None)  # an explicit choice is kept
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        runs[name] = params
    for fast, slow in zip(runs["default"], runs["per-parameter"]):
        assert torch.equal(fast, slow)
