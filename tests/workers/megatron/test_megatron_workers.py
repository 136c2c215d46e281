"""The Megatron workers (``--config-name ppo_megatron_trainer``) on CPU: the same numbers as the FSDP workers on
the same batch (actor and critic), PPO with GAE through ``main_ppo`` with tensor parallelism 2 (actor, reference and
critic), exact resume and an HF export.

Needs the ``[megatron]`` extra (megatron-core); skipped without it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("megatron.core")

HERE = Path(__file__).parent
REPO = HERE.parents[2]


def _torchrun(nproc: int, *args: str, cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", "0"]
    cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0", str(HERE.parent / "parity_worker.py"), *args]
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]


def test_first_update_equals_the_fsdp_workers_on_the_same_batch(tiny_model_dir, tmp_path):
    """FSDP2 on two ranks (data parallel 2) and Megatron on four (tensor parallel 2 x data parallel 2, then pipeline
    parallel 2 x data parallel 2) score and train on one fixed batch, each data-parallel group on its half:
    log-probs on response tokens within 1e-5, policy loss and gradient norm within 1e-5 relative, log-probs after
    the update within 5e-4 (an lr=1e-2 Adam step amplifies gradient rounding); the critic likewise (values, value loss, gradient norm)."""
    sys.path.insert(0, str(HERE.parent))
    from parity_worker import batch
    from transformers import AutoTokenizer

    _torchrun(2, "fsdp", tiny_model_dir, str(tmp_path / "fsdp.json"), "1", cwd=tmp_path)
    _torchrun(4, "megatron", tiny_model_dir, str(tmp_path / "megatron.json"), "2", cwd=tmp_path)
    fsdp = json.loads((tmp_path / "fsdp.json").read_text())
    mega = json.loads((tmp_path / "megatron.json").read_text())
    mask = batch(AutoTokenizer.from_pretrained(tiny_model_dir)).chunk(2)[0].batch["response_mask"].bool()
    for key, tol in (("log_probs", 1e-5), ("ref_log_probs", 1e-5), ("after", 5e-4)):
        gap = (torch.tensor(fsdp[key]) - torch.tensor(mega[key])).abs()[mask].max().item()
        assert gap < tol, (key, gap)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss"):
        want, got = fsdp["metrics"][key], mega["metrics"][key]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), key
    assert fsdp["metrics"]["actor/grad_norm"][0] > 0.1  # a real update, not a zero gradient
    # a second update on verl's engine path, where the loss divides by counts over the data-parallel ranks only
    for key in ("actor/pg_loss", "actor/grad_norm"):
        want, got = fsdp["engine_metrics"][key], mega["engine_metrics"][key]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7), key
    # the critic: values before and after one update on fixed returns, the value loss and its gradient norm
    for key, tol in (("values", 1e-5), ("values_after", 1e-4)):
        gap = (torch.tensor(fsdp[key]) - torch.tensor(mega[key])).abs()[mask].max().item()
        assert gap < tol, (key, gap)
    for key, rel in (("critic/vf_loss", 1e-5), ("critic/grad_norm", 5e-5)):
        want, got = fsdp["critic_metrics"][key], mega["critic_metrics"][key]
        assert got == pytest.approx(want, rel=rel, abs=1e-7), key

    # pipeline parallel: two stages of one layer each x data parallel 2, micro-batches through megatron-core's 1F1B
    # schedule; the same numbers
    _torchrun(4, "megatron", tiny_model_dir, str(tmp_path / "pp.json"), "1", "2", cwd=tmp_path)
    pipe = json.loads((tmp_path / "pp.json").read_text())
    for key, tol in (("log_probs", 1e-5), ("ref_log_probs", 1e-5), ("after", 5e-4), ("values", 1e-5)):
        gap = (torch.tensor(fsdp[key]) - torch.tensor(pipe[key])).abs()[mask].max().item()
        assert gap < tol, ("pp", key, gap)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss"):
        assert pipe["metrics"][key] == pytest.approx(fsdp["metrics"][key], rel=1e-5, abs=1e-7), ("pp", key)
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert pipe["engine_metrics"][key] == pytest.approx(fsdp["engine_metrics"][key], rel=1e-4, abs=1e-7), key
    for key, rel in (("critic/vf_loss", 1e-5), ("critic/grad_norm", 5e-5)):
        assert pipe["critic_metrics"][key] == pytest.approx(fsdp["critic_metrics"][key], rel=rel, abs=1e-7), key


def _overrides(out: Path, model_dir: str, steps: int, extra: list[str]) -> list[str]:
    return [
        "algorithm.adv_estimator=gae",
        f"data.train_files={out.parent / 'data' / 'train.parquet'}",
        f"data.val_files={out.parent / 'data' / 'test.parquet'}",
        "data.train_batch_size=4",
        "data.max_prompt_length=48",
        "data.max_response_length=8",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2",
        "actor_rollout_ref.actor.megatron.dtype=float32",
        "critic.megatron.tensor_model_parallel_size=2",
        "critic.megatron.dtype=float32",
        "critic.model.enable_gradient_checkpointing=False",
        "critic.ppo_micro_batch_size_per_gpu=8",
        "critic.optim.lr=1e-3",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        f"custom_reward_function.path={REPO / 'examples' / 'quickstart' / 'reward.py'}",
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=2",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={out / 'ckpt'}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.progress_bar=False",
        *extra,
    ]


def _run(overrides: list[str], metrics_path: Path, monkeypatch) -> list[dict]:
    from verl.trainer.main_ppo import load_config, run_ppo
    from verl.utils.config import compose_config

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(metrics_path))
    run_ppo(load_config(compose_config("ppo_megatron_trainer", overrides)))
    return [json.loads(line) for line in metrics_path.read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.e2e
def test_ppo_with_tensor_parallel_2_trains_resumes_exactly_and_exports(
    tiny_model_dir, tmp_path, ray_cluster, monkeypatch
):
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart" / "make_data.py"), "--out", str(tmp_path / "data")],
        check=True,
        capture_output=True,
    )
    straight = _run(
        _overrides(tmp_path / "a", tiny_model_dir, 3, ["trainer.save_freq=2"]), tmp_path / "a.jsonl", monkeypatch
    )
    assert [r["step"] for r in straight] == [1, 2, 3]
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/vf_loss", "critic/grad_norm"):
        assert all(math.isfinite(r["data"][key]) for r in straight), key
    assert straight[-1]["data"]["actor/kl_loss"] > 0  # the actor moved away from the (megatron) reference

    # resume: a second job starts from the first job's global_step_2 and must retrace its step 3 exactly
    step_dir = tmp_path / "a" / "ckpt" / "global_step_2"
    actor_dir = step_dir / "actor"
    assert sorted(p.name for p in actor_dir.glob("model_world_size_2_rank_*.pt")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]
    assert (step_dir / "critic" / "model_world_size_2_rank_1.pt").exists()
    resume_root = tmp_path / "b" / "ckpt"
    shutil.copytree(step_dir, resume_root / "global_step_2")
    (resume_root / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = _run(
        _overrides(tmp_path / "b", tiny_model_dir, 3, ["trainer.resume_mode=auto"]), tmp_path / "b.jsonl", monkeypatch
    )
    assert [r["step"] for r in resumed] == [3]
    for key in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/vf_loss"):
        assert [r["data"][key] for r in resumed] == [straight[2]["data"][key]], key

    # the HF export of the TP=2 slices loads with transformers and is the trained model, not the initial one
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(actor_dir / "huggingface", dtype=torch.float32)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    changed = [name for name, p in exported.state_dict().items() if not torch.equal(p, initial.state_dict()[name])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.embed_tokens.weight" in changed


@pytest.mark.ray
@pytest.mark.e2e
def test_ppo_with_pipeline_parallel_2_trains_resumes_exactly_and_exports_both_models(
    tiny_model_dir, tmp_path, ray_cluster, monkeypatch
):
    """GAE PPO through ``main_ppo`` with two pipeline stages (one layer each) for the actor, the reference and the
    critic: step 2 of a job resumed from step 1 retraces the straight job's, and both HF exports load with
    transformers (the policy, and the value model as a token classifier) with every weight present."""
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart" / "make_data.py"), "--out", str(tmp_path / "data")],
        check=True,
        capture_output=True,
    )
    layout = [
        "actor_rollout_ref.actor.megatron.tensor_model_parallel_size=1",
        "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=2",
        "critic.megatron.tensor_model_parallel_size=1",
        "critic.megatron.pipeline_model_parallel_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",  # 4 micro-batches in flight through the stages
        "critic.ppo_micro_batch_size_per_gpu=2",
        "critic.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
    ]
    straight = _run(
        _overrides(tmp_path / "a", tiny_model_dir, 2, [*layout, "trainer.save_freq=1"]),
        tmp_path / "a.jsonl",
        monkeypatch,
    )
    assert [r["step"] for r in straight] == [1, 2]
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/vf_loss", "critic/grad_norm"):
        assert all(math.isfinite(r["data"][key]) for r in straight), key
    assert straight[-1]["data"]["actor/kl_loss"] > 0

    step_dir = tmp_path / "a" / "ckpt" / "global_step_1"
    assert json.loads((step_dir / "actor" / "megatron_config.json").read_text())["pp"] == 2
    resume_root = tmp_path / "b" / "ckpt"
    shutil.copytree(step_dir, resume_root / "global_step_1")
    (resume_root / "latest_checkpointed_iteration.txt").write_text("1")
    resumed = _run(
        _overrides(tmp_path / "b", tiny_model_dir, 2, [*layout, "trainer.resume_mode=auto"]),
        tmp_path / "b.jsonl",
        monkeypatch,
    )
    assert [r["step"] for r in resumed] == [2]
    for key in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/vf_loss"):
        assert [r["data"][key] for r in resumed] == [straight[1]["data"][key]], key

    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    policy, info = AutoModelForCausalLM.from_pretrained(
        step_dir / "actor" / "huggingface", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    changed = {name for name, p in policy.state_dict().items() if not torch.equal(p, initial[name])}
    # a layer of each stage, and the tied embedding (the first stage's input and the last stage's output)
    assert {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= changed
    assert "model.embed_tokens.weight" in changed
    value, info = AutoModelForTokenClassification.from_pretrained(
        step_dir / "critic" / "huggingface", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert value.config.num_labels == 1 and value.score.weight.shape == (1, value.config.hidden_size)
