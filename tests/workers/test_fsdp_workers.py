"""FSDP workers through Ray: 2 CPU ranks (gloo), the tiny Llama, the hf rollout.

Worker groups are expensive to start (~15 s each on 2 cores), so one dp=2 actor/rollout/ref group is shared by
the tests in this module, which run in file order: generation and log-probs first, then the first update (also
replayed on a dp=1 group for the invariance check), then checkpointing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from verl.protocol import DataProto

pytestmark = [pytest.mark.ray]

RESPONSE_LENGTH = 8


# ------------------------------------------------------------------------------------------ helpers


def _actor_config(model_dir: str, *extra: str):
    from verl.utils.config import compose_config

    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
        f"data.max_response_length={RESPONSE_LENGTH}",
        "data.max_prompt_length=32",
        *extra,
    ]
    return compose_config("ppo_trainer", overrides=overrides)


_POOLS: dict[int, object] = {}  # id(worker group) -> its resource pool, released by _kill


def _worker_group(cls, n_ranks: int, **init_kwargs):
    import ray

    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    pool = RayResourcePool(process_on_nodes=[n_ranks], use_gpu=False)
    wg = RayWorkerGroup(pool, RayClassWithInitArgs(ray.remote(cls), **init_kwargs), device_name="cpu")
    _POOLS[id(wg)] = pool
    wg.init_model()
    return wg


def _kill(wg) -> None:
    """End the workers and give their placement-group CPUs back to the shared test cluster."""
    _POOLS.pop(id(wg)).release()


def _prompts(model_dir: str, n: int = 4) -> DataProto:
    """Left-padded chat prompts (``input_ids``, ``attention_mask``, ``position_ids``)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    questions = ["What is 3 + 4?", "say yes", "count one two three", "the cat is red or blue?"]
    texts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in (questions * n)[:n]
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    position_ids = torch.clip(torch.cumsum(mask, dim=-1) - 1, min=0)
    return DataProto.from_dict(
        tensors={"input_ids": enc["input_ids"], "attention_mask": mask, "position_ids": position_ids}
    )


def _training_batch(prompts: DataProto, vocab_size: int, seed: int = 0) -> DataProto:
    """Prompts + random responses of 8, 6, 3, 1, ... tokens (so the two ranks hold 14 and 4) + fixed advantages."""
    gen = torch.Generator().manual_seed(seed)
    bs = len(prompts)
    responses = torch.randint(0, vocab_size, (bs, RESPONSE_LENGTH), generator=gen)
    lengths = torch.tensor([8, 6, 3, 1] * (bs // 4 + 1))[:bs]
    response_mask = (torch.arange(RESPONSE_LENGTH) < lengths[:, None]).to(prompts.batch["attention_mask"].dtype)
    responses = responses.masked_fill(response_mask == 0, 0)
    position_ids = prompts.batch["position_ids"]
    response_pos = position_ids[:, -1:] + torch.arange(1, RESPONSE_LENGTH + 1)
    tensors = {
        "prompts": prompts.batch["input_ids"],
        "responses": responses,
        "input_ids": torch.cat([prompts.batch["input_ids"], responses], dim=-1),
        "attention_mask": torch.cat([prompts.batch["attention_mask"], response_mask], dim=-1),
        "position_ids": torch.cat([position_ids, response_pos], dim=-1),
        "response_mask": response_mask,
        "advantages": torch.randn(bs, RESPONSE_LENGTH, generator=gen),
    }
    return DataProto.from_dict(tensors=tensors, meta_info={"temperature": 1.0})


def _greedy(wg, prompts: DataProto) -> DataProto:
    greedy = DataProto.from_dict(
        tensors={k: prompts.batch[k] for k in ("input_ids", "attention_mask", "position_ids")},
        meta_info={"do_sample": False, "calculate_log_probs": True},
    )
    return wg.generate_sequences(greedy)


def _mean(values) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def actor_wg(ray_cluster, tiny_model_dir):
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    cfg = _actor_config(
        tiny_model_dir, "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"
    )
    wg = _worker_group(ActorRolloutRefWorker, 2, config=cfg.actor_rollout_ref, role="actor_rollout_ref")
    yield wg
    _kill(wg)


@pytest.fixture(scope="module")
def prompts(tiny_model_dir) -> DataProto:
    return _prompts(tiny_model_dir)


@pytest.fixture(scope="module")
def vocab_size(tiny_model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_model_dir).vocab_size


@pytest.fixture(scope="module")
def greedy_before_update(actor_wg, prompts) -> DataProto:
    return _greedy(actor_wg, prompts)


@pytest.fixture(scope="module")
def first_update(ray_cluster, tiny_model_dir, actor_wg, prompts, vocab_size, greedy_before_update):
    """The same batch through one engine-path update on the dp=2 group and on a fresh dp=1 group.

    The ranks hold unequal token counts (14 and 4), so only a global normalisation (tokens summed over ranks, as
    upstream's engine path does with trainer.use_legacy_worker_impl=disable) makes dp=1 and dp=2 agree.
    """
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    batch = _training_batch(prompts, vocab_size)
    batch.meta_info["global_batch_size"] = len(batch)  # one mini-batch of 4 sequences
    batch = batch.union(actor_wg.compute_log_prob(batch).select(batch_keys=["old_log_probs"]))
    out2 = actor_wg.update_actor(batch)
    after2 = actor_wg.compute_log_prob(batch).batch["old_log_probs"]

    cfg = _actor_config(tiny_model_dir)
    wg1 = _worker_group(ActorRolloutRefWorker, 1, config=cfg.actor_rollout_ref, role="actor")
    try:
        out1 = wg1.update_actor(batch)
        after1 = wg1.compute_log_prob(batch).batch["old_log_probs"]
    finally:
        _kill(wg1)
    return {
        "batch": batch,
        "dp2": out2.meta_info["metrics"],
        "dp1": out1.meta_info["metrics"],
        "after2": after2,
        "after1": after1,
    }


# ------------------------------------------------------------------------------------------ tests


def test_generate_sequences_follows_the_rollout_contract(actor_wg, prompts):
    out = actor_wg.generate_sequences(prompts)
    bs, prompt_len = prompts.batch["input_ids"].shape
    assert len(out) == bs
    assert out.batch["responses"].shape == (bs, RESPONSE_LENGTH)
    assert out.batch["input_ids"].shape == (bs, prompt_len + RESPONSE_LENGTH)
    assert torch.equal(out.batch["prompts"], prompts.batch["input_ids"])
    assert torch.equal(out.batch["attention_mask"][:, -RESPONSE_LENGTH:], out.batch["response_mask"])
    timing = out.meta_info["timing"]
    assert timing["generation_timing/max"] >= timing["generation_timing/min"] > 0


def test_old_and_ref_log_probs_are_equal_before_any_update(actor_wg, greedy_before_update):
    old = actor_wg.compute_log_prob(greedy_before_update)
    ref = actor_wg.compute_ref_log_prob(greedy_before_update)
    assert set(old.batch.keys()) == {"old_log_probs", "entropys"}
    assert set(ref.batch.keys()) == {"ref_log_prob"}
    assert old.batch["old_log_probs"].shape == (len(greedy_before_update), RESPONSE_LENGTH)
    torch.testing.assert_close(old.batch["old_log_probs"], ref.batch["ref_log_prob"], atol=1e-6, rtol=0)
    assert bool((old.batch["entropys"] >= 0).all())
    # The rollout copy generated with the same weights: its own log-probs agree with the actor's.
    mask = greedy_before_update.batch["response_mask"].bool()
    rollout_lp = greedy_before_update.batch["rollout_log_probs"]
    torch.testing.assert_close(rollout_lp[mask], old.batch["old_log_probs"][mask], atol=1e-4, rtol=0)


def test_update_actor_returns_finite_metrics_with_verl_names(first_update):
    metrics = first_update["dp2"]
    for key in (
        "actor/pg_loss",
        "actor/grad_norm",
        "actor/lr",
        "perf/cpu_memory_used_gb",
        "perf/max_memory_allocated_gb",
    ):
        assert key in metrics, key
        assert math.isfinite(_mean(metrics[key])), key
    assert _mean(metrics["actor/lr"]) == pytest.approx(1e-2)
    assert _mean(metrics["perf/max_memory_allocated_gb"]) == 0.0


def test_dp1_and_dp2_give_the_same_loss_and_update(first_update):
    dp1, dp2 = first_update["dp1"], first_update["dp2"]
    assert _mean(dp1["actor/pg_loss"]) == pytest.approx(_mean(dp2["actor/pg_loss"]), abs=1e-5)
    assert _mean(dp1["actor/grad_norm"]) == pytest.approx(_mean(dp2["actor/grad_norm"]), rel=1e-5)
    torch.testing.assert_close(first_update["after1"], first_update["after2"], atol=1e-5, rtol=0)


def test_generation_uses_fresh_weights_after_update(actor_wg, prompts, first_update, greedy_before_update):
    after = _greedy(actor_wg, prompts)
    changed = not torch.equal(after.batch["responses"], greedy_before_update.batch["responses"])
    before_lp = greedy_before_update.batch["rollout_log_probs"]
    assert changed or not torch.allclose(after.batch["rollout_log_probs"], before_lp, atol=1e-3)
    # What the rollout sampled with must be exactly the updated actor.
    current = actor_wg.compute_log_prob(after).batch["old_log_probs"]
    mask = after.batch["response_mask"].bool()
    torch.testing.assert_close(after.batch["rollout_log_probs"][mask], current[mask], atol=1e-4, rtol=0)


def test_checkpoint_resumes_bit_for_bit_in_a_new_worker_group(actor_wg, first_update, tiny_model_dir, tmp_path_factory):
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    ckpt = str(tmp_path_factory.mktemp("ckpt") / "global_step_1" / "actor")
    actor_wg.save_checkpoint(ckpt, None, 1)
    batch = first_update["batch"]
    cfg = _actor_config(tiny_model_dir)
    wg = _worker_group(ActorRolloutRefWorker, 2, config=cfg.actor_rollout_ref, role="actor_rollout")
    try:
        wg.load_checkpoint(ckpt)
        lp_saved = actor_wg.compute_log_prob(batch).batch["old_log_probs"]
        torch.testing.assert_close(wg.compute_log_prob(batch).batch["old_log_probs"], lp_saved, atol=0, rtol=0)
        # Optimizer, scheduler and RNG came back too: one more identical step on both stays identical.
        m_old, m_new = actor_wg.update_actor(batch).meta_info["metrics"], wg.update_actor(batch).meta_info["metrics"]
        assert _mean(m_old["actor/pg_loss"]) == _mean(m_new["actor/pg_loss"])
        torch.testing.assert_close(
            wg.compute_log_prob(batch).batch["old_log_probs"],
            actor_wg.compute_log_prob(batch).batch["old_log_probs"],
            atol=0,
            rtol=0,
        )
        # The rollout copy of the loaded group generates with the loaded weights.
        prompts = batch.select(batch_keys=["input_ids", "attention_mask", "position_ids"])
        prompts.batch["input_ids"] = batch.batch["prompts"]
        prompts.batch["attention_mask"] = batch.batch["attention_mask"][:, :-RESPONSE_LENGTH]
        prompts.batch["position_ids"] = batch.batch["position_ids"][:, :-RESPONSE_LENGTH]
        assert torch.equal(_greedy(wg, prompts).batch["responses"], _greedy(actor_wg, prompts).batch["responses"])
    finally:
        _kill(wg)
    _check_hf_export(ckpt, batch, lp_saved)


def _check_hf_export(ckpt: str, batch: DataProto, expected_log_probs: torch.Tensor) -> None:
    """``huggingface/`` loads with AutoModelForCausalLM and reproduces the worker's log-probs."""
    import os

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl.utils.torch_functional import logprobs_from_logits

    hf_dir = os.path.join(ckpt, "huggingface")
    assert os.path.exists(os.path.join(hf_dir, "config.json"))
    AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(
            input_ids=batch.batch["input_ids"],
            attention_mask=batch.batch["attention_mask"],
            position_ids=batch.batch["position_ids"],
        ).logits
    lp = logprobs_from_logits(logits[:, -RESPONSE_LENGTH - 1 : -1], batch.batch["responses"])
    mask = batch.batch["response_mask"].bool()  # the padding-free forward leaves padded positions at 0-logit values
    torch.testing.assert_close(lp[mask], expected_log_probs[mask], atol=1e-5, rtol=0)


def test_critic_computes_values_updates_and_saves_with_fsdp1(
    ray_cluster, tiny_model_dir, prompts, vocab_size, tmp_path
):
    from verl.workers.fsdp_workers import CriticWorker

    cfg = _actor_config(
        tiny_model_dir,
        "critic.strategy=fsdp",
        "critic.optim.lr=1e-2",
        "critic.ppo_micro_batch_size_per_gpu=2",
        "critic.forward_micro_batch_size_per_gpu=2",
    )
    wg = _worker_group(CriticWorker, 2, config=cfg.critic)
    try:
        batch = _training_batch(prompts, vocab_size)
        values = wg.compute_values(batch).batch["values"]
        assert values.shape == (len(batch), RESPONSE_LENGTH)
        batch.batch["values"] = values
        batch.batch["returns"] = torch.ones_like(values)
        metrics = wg.update_critic(batch).meta_info["metrics"]
        assert math.isfinite(_mean(metrics["critic/vf_loss"]))
        assert _mean(metrics["critic/lr"]) == pytest.approx(1e-2)
        new_values = wg.compute_values(batch).batch["values"]
        # Regressing onto returns of 1 moves the values towards 1.
        assert (new_values - 1).abs().mean() < (values - 1).abs().mean()
        wg.save_checkpoint(str(tmp_path / "critic"), None, 1)
        wg.update_critic(batch)
        wg.load_checkpoint(str(tmp_path / "critic"), del_local_after_load=False)
        torch.testing.assert_close(wg.compute_values(batch).batch["values"], new_values, atol=0, rtol=0)
    finally:
        _kill(wg)


def _reward_model_dir(tiny_model_dir: str, out) -> str:
    """A 1-label sequence classifier on the tiny backbone, with its own (different) chat template."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(out)
    return str(out)


def test_reward_model_scores_the_last_response_token_with_its_own_chat_template(
    ray_cluster, tiny_model_dir, prompts, vocab_size, tmp_path
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from verl.workers.fsdp_workers import RewardModelWorker

    rm_dir = _reward_model_dir(tiny_model_dir, tmp_path / "rm")
    cfg = _actor_config(
        tiny_model_dir,
        f"reward_model.model.path={rm_dir}",
        "reward_model.strategy=fsdp2",
        "reward_model.micro_batch_size_per_gpu=1",
    )
    batch = _training_batch(prompts, vocab_size)
    lengths = torch.tensor([8, 5, 3, 1])
    response_mask = (torch.arange(RESPONSE_LENGTH) < lengths[:, None]).long()
    batch.batch["attention_mask"][:, -RESPONSE_LENGTH:] = response_mask
    questions = ["What is 3 + 4?", "say yes", "count one two three", "the cat is red or blue?"]
    raw = np.empty(4, dtype=object)
    raw[:] = [[{"role": "user", "content": q}] for q in questions]
    batch.non_tensor_batch["raw_prompt"] = raw

    wg = _worker_group(RewardModelWorker, 2, config=cfg.reward_model)
    try:
        scores = wg.compute_rm_score(batch).batch["rm_scores"]
    finally:
        _kill(wg)

    in_tok, rm_tok = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32)
    for i in range(4):
        response = in_tok.decode(batch.batch["responses"][i, : lengths[i]].tolist(), skip_special_tokens=True)
        chat = [*raw[i], {"role": "assistant", "content": response}]
        ids = rm_tok(rm_tok.apply_chat_template(chat, tokenize=False), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            expected = rm(input_ids=ids["input_ids"]).logits[0, 0]
        assert scores[i, lengths[i] - 1].item() == pytest.approx(expected.item(), abs=1e-5)
        assert scores[i].count_nonzero() <= 1


def test_a_bad_mini_batch_size_raises_naming_the_key(tiny_model_dir, monkeypatch):
    from verl.workers.fsdp_workers import ActorRolloutRefWorker

    cfg = _actor_config(tiny_model_dir, "actor_rollout_ref.actor.ppo_mini_batch_size=3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29999")
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.ppo_mini_batch_size=3"):
        ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")


def test_micro_batch_that_does_not_divide_the_mini_batch_raises():
    from verl.utils.batch_sizes import actor_rank_batch_sizes
    from verl.utils.config import as_config
    from verl.workers.config import ActorRolloutRefConfig

    cfg = as_config(
        {"actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 3}, "rollout": {"n": 2}},
        ActorRolloutRefConfig,
    )
    with pytest.raises(ValueError, match="ppo_micro_batch_size_per_gpu=3"):
        actor_rank_batch_sizes(cfg, "actor", 2)


def test_batch_sizes_are_derived_per_rank_without_writing_the_config():
    from verl.utils.batch_sizes import actor_rank_batch_sizes
    from verl.utils.config import as_config
    from verl.workers.config import ActorRolloutRefConfig

    cfg = as_config(
        {
            "actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size": 4, "ppo_micro_batch_size_per_gpu": None},
            "rollout": {"n": 2, "log_prob_micro_batch_size": 8},
            "ref": {"log_prob_micro_batch_size": 4},
        },
        ActorRolloutRefConfig,
    )
    sizes = actor_rank_batch_sizes(cfg, "actor_rollout_ref", 2)
    # 4 prompts x n=2 = 8 responses per mini-batch, over 2 ranks = 4 each; the global micro 4 -> 2 per rank.
    assert (sizes.mini, sizes.micro, sizes.log_prob_micro, sizes.ref_micro) == (4, 2, 4, 2)
    assert cfg.actor.ppo_mini_batch_size == 4 and cfg.actor.ppo_micro_batch_size == 4  # untouched


def test_unreachable_model_path_names_the_config_key():
    from verl.utils.hf_models import resolve_model_path

    with pytest.raises(FileNotFoundError, match=r"actor_rollout_ref\.model\.path='/no/such/model'"):
        resolve_model_path("/no/such/model", "actor_rollout_ref.model.path")


def test_full_determinism_is_found_anywhere_in_a_worker_config():
    from verl.utils.config import as_config
    from verl.workers.config import ActorRolloutRefConfig
    from verl.workers.fsdp_base import _wants_full_determinism

    off = as_config({"actor": {"fsdp_config": {"full_determinism": False}}}, ActorRolloutRefConfig)
    on = as_config({"ref": {"fsdp_config": {"full_determinism": True}}}, ActorRolloutRefConfig)
    assert not _wants_full_determinism(off)
    assert _wants_full_determinism(on)
