"""End-to-end training through ``main_ppo``'s TaskRunner on the tiny model, 2 FSDP ranks on CPU under Ray.

These are the slowest tests of the suite (each a few tens of seconds): GRPO with a KL loss and reference policy,
PPO with a GAE critic, and a resume check (4 steps straight == 2 steps + resume + 2 steps).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]

# A dense reward (varies with every response) so that a few steps always produce non-zero advantages.
DENSE_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return (sum(map(ord, solution_str)) % 11) / 10.0
"""


def _write_task(out: Path, n_train: int = 16, n_val: int = 4) -> tuple[str, str]:
    rows = lambda n, split: [  # noqa: E731
        {
            "data_source": "quickstart/repeat_digit",
            "prompt": [{"role": "user", "content": f"Repeat the digit 7, please ({i})."}],
            "ability": "toy",
            "reward_model": {"style": "rule", "ground_truth": "7"},
            "extra_info": {"split": split, "index": i},
        }
        for i in range(n)
    ]
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows(n_train, "train")).to_parquet(out / "train.parquet")
    pd.DataFrame(rows(n_val, "test")).to_parquet(out / "test.parquet")
    return str(out / "train.parquet"), str(out / "test.parquet")


def _overrides(tmp_path: Path, model_dir: str, estimator: str, steps: int, extra: list[str] = ()) -> list[str]:
    train, val = _write_task(tmp_path / "data")
    reward_file = tmp_path / "dense_reward.py"
    reward_file.write_text(DENSE_REWARD)
    return [
        f"algorithm.adv_estimator={estimator}",
        f"data.train_files={train}",
        f"data.val_files={val}",
        "data.train_batch_size=4",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        "data.dataloader_num_workers=0",
        "data.seed=7",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "critic.ppo_micro_batch_size_per_gpu=2",
        "critic.optim.lr=1e-3",
        f"custom_reward_function.path={reward_file}",
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=2",
        "trainer.nnodes=1",
        "trainer.logger=[console,file]",
        "trainer.project_name=e2e",
        f"trainer.experiment_name={estimator}",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.total_training_steps={steps}",
        "trainer.total_epochs=100",
        "trainer.progress_bar=False",
        *extra,
    ]


def _run(overrides: list[str], metrics_path: Path, monkeypatch) -> list[dict]:
    import copy

    from verl.trainer.main_ppo import load_config, run_ppo
    from verl.utils.config import compose_config, to_plain

    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(metrics_path))
    config = load_config(compose_config("ppo_trainer", overrides))
    before = copy.deepcopy(to_plain(config))
    run_ppo(config)
    assert to_plain(config) == before, "the validated config tree was written during the run"
    return [json.loads(line) for line in metrics_path.read_text().splitlines()]


def _finite(rows: list[dict], key: str) -> list[float]:
    values = [r["data"][key] for r in rows if key in r["data"]]
    assert values, f"metric {key} was never logged"
    assert all(math.isfinite(v) for v in values), (key, values)
    return values


def test_grpo_with_kl_loss_and_reference_policy_trains(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    extra = [
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
        "trainer.val_before_train=True",
        "trainer.test_freq=3",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 3, extra), tmp_path / "m.jsonl", monkeypatch)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # step 0 is the validation before training
    val_key = "val-core/quickstart/repeat_digit/reward/mean@1"
    assert val_key in rows[0]["data"] and val_key in rows[3]["data"]
    assert 0.0 <= rows[3]["data"][val_key] <= 1.0
    train = rows[1:]
    pg = _finite(train, "actor/pg_loss")
    kl = _finite(train, "actor/kl_loss")
    assert len(set(pg)) > 1, "policy loss did not change across steps"
    # the actor starts equal to the frozen reference and drifts away from it as it is updated
    assert 0 <= kl[0] < kl[-1]
    for key in ("critic/score/mean", "response_length/mean", "timing_s/gen", "timing_s/ref", "perf/throughput"):
        _finite(train, key)


def test_ppo_with_gae_critic_trains(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    rows = _run(_overrides(tmp_path, tiny_model_dir, "gae", 2), tmp_path / "m.jsonl", monkeypatch)
    vf = _finite(rows, "critic/vf_loss")
    assert len(vf) == 2 and vf[0] != vf[1]
    _finite(rows, "critic/values/mean")
    _finite(rows, "timing_s/update_critic")


def test_ppo_with_ulysses_sequence_parallel_trains(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    """actor, reference and critic with ulysses_sequence_parallel_size=2 on the 2 ranks (one data-parallel group of
    2 sequence-parallel ranks) through main_ppo; the numbers against SP=1 are checked in tests/workers/test_ulysses.py."""
    extra = [
        "actor_rollout_ref.model.use_remove_padding=True",
        "critic.model.use_remove_padding=True",
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
        "critic.ulysses_sequence_parallel_size=2",
        "actor_rollout_ref.actor.use_kl_loss=True",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "gae", 2, extra), tmp_path / "m.jsonl", monkeypatch)
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "critic/vf_loss", "critic/grad_norm"):
        _finite(rows, key)
    assert _finite(rows, "actor/kl_loss")[-1] > 0  # the reference's log-probs reached the actor's loss


def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    """4 steps straight == 2 steps, a checkpoint, a new run resuming from it, 2 more steps (within 1e-4)."""
    straight = _run(
        _overrides(tmp_path / "a", tiny_model_dir, "grpo", 4, ["trainer.resume_mode=disable"]),
        tmp_path / "a.jsonl",
        monkeypatch,
    )
    first = _overrides(tmp_path / "b", tiny_model_dir, "grpo", 2, ["trainer.save_freq=2"])
    _run(first, tmp_path / "b1.jsonl", monkeypatch)
    assert (tmp_path / "b" / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    second = _overrides(tmp_path / "b", tiny_model_dir, "grpo", 4, ["trainer.resume_mode=auto"])
    resumed = _run(second, tmp_path / "b2.jsonl", monkeypatch)
    assert [r["step"] for r in resumed] == [3, 4]
    for key in ("critic/score/mean", "actor/pg_loss", "response_length/mean"):
        want = [r["data"][key] for r in straight if r["step"] in (3, 4)]
        got = [r["data"][key] for r in resumed]
        assert got == pytest.approx(want, abs=1e-4), key


def test_rollout_correction_and_dynamic_sampling_run_through_the_trainer(
    tmp_path, tiny_model_dir, ray_cluster, monkeypatch
):
    extra = [
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "algorithm.rollout_correction.rollout_is=token",
        "algorithm.rollout_correction.rollout_rs=seq_mean_k3",
        "algorithm.rollout_correction.rollout_rs_threshold=0.5",
        "algorithm.filter_groups.enable=True",
        "algorithm.filter_groups.metric=seq_reward",
        "trainer.use_legacy_worker_impl=disable",
        f"trainer.validation_data_dir={tmp_path / 'val_dump'}",
        "trainer.val_before_train=True",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 2, extra), tmp_path / "m.jsonl", monkeypatch)
    train = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("rollout_corr/rollout_is_mean", "rollout_corr/kl", "rollout_corr/rollout_rs_masked_fraction"):
        _finite(train, key)
    # the rollout engine and the trainer share weights at generation time: the IS weights are ~1
    assert all(abs(v - 1.0) < 1e-3 for v in _finite(train, "rollout_corr/rollout_is_mean"))
    assert all(n >= 1 for n in _finite(train, "train/num_gen_batches"))
    assert (tmp_path / "val_dump" / "0.jsonl").exists()  # validation generations dumped before training


def test_full_determinism_runs_with_deterministic_kernels(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    extra = ["actor_rollout_ref.actor.fsdp_config.full_determinism=True"]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 1, extra), tmp_path / "m.jsonl", monkeypatch)
    _finite(rows, "actor/pg_loss")


def test_bypass_mode_trains_on_rollout_log_probs(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    extra = [
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "algorithm.rollout_correction.bypass_mode=True",
        "algorithm.rollout_correction.loss_type=reinforce",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 2, extra), tmp_path / "m.jsonl", monkeypatch)
    assert all("timing_s/old_log_prob" not in r["data"] for r in rows)  # no recompute in bypass mode
    _finite(rows, "actor/pg_loss")
    _finite(rows, "actor/ppo_kl")


@pytest.mark.vllm
@pytest.mark.parametrize("tp", [2])  # TP=1 runs the same sync per engine (and the multi-turn vLLM test below)
def test_grpo_with_vllm_rollout_keeps_engine_weights_in_sync(tp, tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    pytest.importorskip("vllm")
    extra = [
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={tp}",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "actor_rollout_ref.actor.optim.lr=1e-2",  # large steps: a stale engine would be far off the actor
        # engine path: rollout_corr/* are the driver's (rollout vs actor before the update); the legacy actor
        # overwrites them with per-micro-batch values taken after earlier mini-batches' steps, as verl does
        "trainer.use_legacy_worker_impl=disable",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 3, extra), tmp_path / "m.jsonl", monkeypatch)
    assert [r["step"] for r in rows] == [1, 2, 3]
    _finite(rows, "actor/pg_loss")
    # vLLM's sampled-token log-probs against the actor's recomputation with the same weights, every step (the engine
    # received the updated weights before steps 2 and 3); ~1e-6 here, a stale engine gives ~1e-1
    for diff in _finite(rows, "rollout_corr/log_ppl_abs_diff"):
        assert diff < 1e-4, diff


LORA = [
    "actor_rollout_ref.model.lora_rank=8",
    "actor_rollout_ref.model.lora_alpha=16",
    "actor_rollout_ref.actor.optim.lr=1e-2",
    "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.01",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",  # one update per step: step 1's KL is measured before it
]


def _logits_of(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def test_lora_trains_adapters_against_the_base_model_saves_both_exports_and_resumes_exactly(
    tmp_path, tiny_model_dir, ray_cluster, monkeypatch
):
    """LoRA on FSDP1 with the hf engine (the engine gets the merged weights before every rollout): the reference is
    the base model (step 1's KL to it is exactly 0), checkpoints hold the adapter and a merged export that agree, and
    2 steps + resume from the checkpoint + 2 steps == 4 steps straight."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    extra = [*LORA, "actor_rollout_ref.actor.strategy=fsdp", "trainer.save_freq=2"]
    extra += ["actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"]
    straight = _run(_overrides(tmp_path / "a", tiny_model_dir, "grpo", 4, extra), tmp_path / "a.jsonl", monkeypatch)
    kl = _finite(straight, "actor/kl_loss")
    assert kl[0] == 0.0 and kl[-1] > 0  # the actor starts as the base model and moves away from it
    assert len(set(_finite(straight, "actor/pg_loss"))) > 1

    actor = tmp_path / "a" / "ckpt" / "global_step_4" / "actor"
    assert (actor / "lora_adapter" / "adapter_config.json").is_file()
    ids = torch.randint(4, 500, (2, 16), generator=torch.Generator().manual_seed(0))
    merged = _logits_of(AutoModelForCausalLM.from_pretrained(actor / "huggingface"), ids)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), actor / "lora_adapter")
    assert torch.allclose(_logits_of(adapted, ids), merged, atol=1e-4)
    base = _logits_of(AutoModelForCausalLM.from_pretrained(tiny_model_dir), ids)
    assert (merged - base).abs().max() > 1e-3  # training moved the adapters

    resume = [
        "trainer.resume_mode=resume_path",
        f"trainer.resume_from_path={tmp_path / 'a' / 'ckpt' / 'global_step_2'}",
    ]
    resumed = _run(
        _overrides(
            tmp_path / "b", tiny_model_dir, "grpo", 4, [*LORA, "actor_rollout_ref.actor.strategy=fsdp", *resume]
        ),
        tmp_path / "b.jsonl",
        monkeypatch,
    )
    assert [r["step"] for r in resumed] == [3, 4]
    for key in ("critic/score/mean", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm"):
        want = [r["data"][key] for r in straight if r["step"] in (3, 4)]
        assert [r["data"][key] for r in resumed] == pytest.approx(want, abs=1e-5), key


@pytest.mark.vllm
def test_lora_with_vllm_rollout_serves_the_merged_adapters(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    """vLLM receives the adapters merged into the weights before each rollout: its sampled-token log-probs equal the
    LoRA actor's recomputation (a stale or unmerged engine would be ~1e-1 off at this learning rate)."""
    pytest.importorskip("vllm")
    extra = [
        *LORA,
        "actor_rollout_ref.actor.optim.lr=5e-2",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "trainer.use_legacy_worker_impl=disable",
    ]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", 3, extra), tmp_path / "m.jsonl", monkeypatch)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert _finite(rows, "actor/kl_loss")[-1] > 0
    for diff in _finite(rows, "rollout_corr/log_ppl_abs_diff"):
        assert diff < 1e-4, diff


def _multiturn_example(tmp_path: Path, model_dir: str, engine: str) -> list[str]:
    """The overrides of examples/grpo_trainer/run_multiturn_nd_grpo.sh on this test's tiny task."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("multiturn_nd", REPO / "examples/data_preprocess/multiturn_nd.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    data = tmp_path / "mt"
    data.mkdir()
    pd.DataFrame(builder.make_rows(16, 2, "train", 0)).to_parquet(data / "train.parquet")
    labels = builder.label_token_ids(model_dir)
    yaml_path = builder.write_interaction_yaml(data, labels, prob_weight=0.5)
    ids = sorted({i for v in labels.values() for i in v})
    base = _overrides(tmp_path, model_dir, "grpo", 2)
    base = [o for o in base if not o.startswith(("data.train_files", "data.val_files", "custom_reward_function"))]
    return [
        *base,
        f"data.train_files={data / 'train.parquet'}",
        f"data.val_files={data / 'train.parquet'}",
        "data.max_prompt_length=160",
        "data.max_response_length=48",
        "data.return_raw_chat=True",
        f"actor_rollout_ref.rollout.name={engine}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",  # as the example script (one engine per rank)
        "actor_rollout_ref.rollout.multi_turn.enable=True",
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=2",
        f"actor_rollout_ref.rollout.multi_turn.interaction_config_path={yaml_path}",
        "actor_rollout_ref.rollout.logit_capture.enable=True",
        "actor_rollout_ref.rollout.logit_capture.mode=token_ids",
        f"actor_rollout_ref.rollout.logit_capture.ids=[{','.join(map(str, ids))}]",
        f"custom_reward_function.path={REPO / 'examples/grpo_trainer/multiturn_nd_reward.py'}",
    ]


@pytest.mark.parametrize("engine", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_multiturn_dialog_example_with_logit_capture_trains(engine, tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    if engine == "vllm":
        pytest.importorskip("vllm")
    rows = _run(_multiturn_example(tmp_path, tiny_model_dir, engine), tmp_path / "m.jsonl", monkeypatch)
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "num_turns/mean", "response_length/mean"):
        _finite(rows, key)
    assert all(r["data"]["num_turns/max"] >= 2 for r in rows)  # prompt + at least one assistant turn per dialogue
    # The reward is the interaction's score: 0.5 * exact match + 0.5 * P(correct label) from the captured logits.
    # Exact match alone gives multiples of 0.25 here (two turns); the probabilities make the scores continuous.
    scores = [r["data"][k] for r in rows for k in ("critic/score/mean", "critic/score/max")]
    assert any(abs(v * 4 - round(v * 4)) > 1e-6 for v in scores), scores


def test_skipping_the_on_policy_old_log_prob_pass_changes_no_number(tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    """One mini-batch, one epoch: the update's own forward replaces the old-log-prob pass, with the same results."""
    on_policy = [
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",  # = train_batch_size: one mini-batch
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.actor.kl_loss_coef=0.01",
    ]
    runs = {}
    for run, skip in (("pass", "False"), ("skip", "True")):
        extra = [*on_policy, f"actor_rollout_ref.actor.skip_on_policy_old_log_prob={skip}"]
        runs[run] = _run(
            _overrides(tmp_path / run, tiny_model_dir, "grpo", 3, extra), tmp_path / f"{run}.jsonl", monkeypatch
        )
    assert all("timing_s/old_log_prob" in r["data"] for r in runs["pass"])
    assert not any("timing_s/old_log_prob" in r["data"] for r in runs["skip"])  # the pass really was skipped
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "critic/score/mean", "actor/ppo_kl"):
        assert [r["data"][key] for r in runs["skip"]] == pytest.approx(
            [r["data"][key] for r in runs["pass"]], abs=1e-7
        ), key
    # entropies come from the update's forward (train mode, another micro-batch shape): equal up to float noise
    entropy = {run: [r["data"]["actor/entropy"] for r in rows] for run, rows in runs.items()}
    assert entropy["skip"] == pytest.approx(entropy["pass"], rel=1e-5)


# ------------------------------------------------------------------------------------------ golden trajectory
# The first steps' losses of a fixed tiny GRPO run (seeded model, data, sampling and ranks), on both of verl's
# loss-scaling paths. Any change to the numerics shows up here as a diff that someone must explain: regenerate with
#     VERL_WRITE_GOLDEN=1 python -m pytest tests/trainer/test_main_ppo_e2e.py -k golden
# and say why in the commit. Tolerance: 1e-4 relative (plus 1e-6 absolute), far below any real change of the maths
# and above the float noise of a different CPU's BLAS.
GOLDEN = Path(__file__).parent / "golden" / "grpo_tiny_cpu.json"
GOLDEN_KEYS = ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "critic/score/mean")
GOLDEN_STEPS = 4


@pytest.mark.parametrize("path", ["legacy", "engine", "legacy-replicated"])
def test_golden_trajectory(path, tmp_path, tiny_model_dir, ray_cluster, monkeypatch):
    """``legacy-replicated``: fsdp_size=1 (hybrid sharding with shard groups of one, i.e. every rank holds the whole
    model and gradients are all-reduced) must give the legacy path's numbers exactly as full sharding does."""
    import os

    extra = ["actor_rollout_ref.actor.use_kl_loss=True", "actor_rollout_ref.actor.kl_loss_coef=0.01"]
    if path == "engine":
        extra.append("trainer.use_legacy_worker_impl=disable")
    if path == "legacy-replicated":
        extra += ["actor_rollout_ref.actor.fsdp_config.fsdp_size=1", "actor_rollout_ref.ref.fsdp_config.fsdp_size=1"]
    rows = _run(_overrides(tmp_path, tiny_model_dir, "grpo", GOLDEN_STEPS, extra), tmp_path / "m.jsonl", monkeypatch)
    got = {key: [r["data"][key] for r in rows] for key in GOLDEN_KEYS}
    golden_key = path.split("-")[0]
    if os.environ.get("VERL_WRITE_GOLDEN") and golden_key == path:
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        stored[path] = got
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())[golden_key]
    for key in GOLDEN_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key


def _script_overrides(script: Path, variables: dict[str, str]) -> list[str]:
    """The ``key=value`` arguments a bash example passes to ``main_ppo`` (its ``$VAR``s substituted)."""
    import re
    import shlex

    text = script.read_text()
    body = text[text.index("-m verl.trainer.main_ppo") + len("-m verl.trainer.main_ppo") : text.index('"$@"')]
    body = re.sub(r"`#[^`]*`", " ", body).replace("\\\n", " ")
    for name, value in variables.items():
        body = body.replace(f'"${name}"', value).replace(f"${name}", value)
    return shlex.split(body)


def test_v09_style_grpo_command_runs(tmp_path, tiny_model_dir, ray_cluster, monkeypatch, capsys):
    """verl v0.9's GRPO example command (examples/grpo_trainer/run_v09_style_grpo_cpu.sh: local paths, CPU sizes)
    trains through main_ppo: the script's own arguments, run in this process on the session's Ray cluster."""
    import subprocess

    data = tmp_path / "data"
    subprocess.run([sys.executable, str(REPO / "examples/quickstart/make_data.py"), "--out", str(data)], check=True)
    script = REPO / "examples" / "grpo_trainer" / "run_v09_style_grpo_cpu.sh"
    variables = {"TRAIN_FILE": str(data / "train.parquet"), "TEST_FILE": str(data / "test.parquet")}
    variables.update({"MODEL": tiny_model_dir, "ROOT": str(REPO), "OUT": str(tmp_path / "out")})
    overrides = _script_overrides(script, variables)
    assert "trainer.use_v1=false" in overrides and "actor_rollout_ref.rollout.name=vllm" in overrides
    overrides += ["actor_rollout_ref.rollout.name=hf", "trainer.total_training_steps=2", "trainer.test_freq=-1"]
    rows = _run(overrides, tmp_path / "metrics.jsonl", monkeypatch)
    assert "verl v0.9 keys written (trainer.use_v1)" in capsys.readouterr().out
    train = [r["data"] for r in rows if "critic/score/mean" in r["data"]]
    assert len(train) == 2
    # v0.9's default calculate_log_probs=true: the rollout's log-probs reach the trainer's off-policy metrics
    assert all("rollout_corr/kl" in step for step in train)
