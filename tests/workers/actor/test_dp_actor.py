"""Tests for verl/workers/actor/dp_actor.py on the tiny offline model (single process, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from verl.protocol import DataProto
from verl.workers.actor import DataParallelPPOActor

PROMPT_LEN, RESPONSE_LEN, PAD = 6, 5, 3


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def _actor_config(**overrides):
    cfg = {
        "ppo_mini_batch_size": 4,
        "ppo_micro_batch_size_per_gpu": 4,
        "use_dynamic_bsz": False,
        "ppo_max_token_len_per_gpu": 64,
        "ppo_epochs": 1,
        "clip_ratio": 0.2,
        "clip_ratio_low": 0.2,
        "clip_ratio_high": 0.2,
        "clip_ratio_c": 3.0,
        "policy_loss": {"loss_mode": "vanilla"},
        "loss_agg_mode": "token-mean",
        "entropy_coeff": 0.0,
        "use_kl_loss": False,
        "kl_loss_coef": 0.001,
        "kl_loss_type": "low_var_kl",
        "grad_clip": 1.0,
        "ulysses_sequence_parallel_size": 1,
        "use_remove_padding": False,
    }
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def _make_batch(vocab: int, bs: int = 4, seed: int = 0) -> DataProto:
    """Left-padded prompts + right-padded responses of different lengths, like a rollout output."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(4, vocab, (bs, PROMPT_LEN), generator=g)
    responses = torch.randint(4, vocab, (bs, RESPONSE_LEN), generator=g)
    prompt_mask = torch.ones(bs, PROMPT_LEN, dtype=torch.long)
    response_mask = torch.ones(bs, RESPONSE_LEN, dtype=torch.long)
    for row in range(bs):
        prompt_mask[row, : row % 3] = 0
        response_mask[row, RESPONSE_LEN - row % 4 :] = 0
    prompts = prompts.masked_fill(prompt_mask == 0, PAD)
    responses = responses.masked_fill(response_mask == 0, PAD)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=-1)
    position_ids = torch.clamp(attention_mask.cumsum(-1) - 1, min=0)
    advantages = torch.randn(bs, RESPONSE_LEN, generator=g) * response_mask
    return DataProto.from_dict(
        tensors={
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=-1),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "advantages": advantages,
        },
        meta_info={"temperature": 1.0, "micro_batch_size": 2, "use_dynamic_bsz": False, "max_token_len": 64},
    )


def _with_old_log_probs(actor: DataParallelPPOActor, data: DataProto) -> DataProto:
    data.batch["old_log_probs"] = actor.compute_log_prob(data)["log_probs"]
    return data


def test_compute_log_prob_equals_a_hand_rolled_log_softmax_gather(base_model):
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _make_batch(base_model.config.vocab_size)
    data.meta_info["temperature"] = 0.7
    out = actor.compute_log_prob(data, calculate_entropy=True)
    with torch.no_grad():
        logits = base_model(
            input_ids=data.batch["input_ids"],
            attention_mask=data.batch["attention_mask"],
            position_ids=data.batch["position_ids"],
        ).logits
    logits = logits[:, PROMPT_LEN - 1 : -1] / 0.7  # position t predicts token t+1
    logp = F.log_softmax(logits, dim=-1)
    expected = logp.gather(-1, data.batch["responses"].unsqueeze(-1)).squeeze(-1)
    expected_entropy = -(logp.exp() * logp).sum(-1)
    assert out["log_probs"].shape == (4, RESPONSE_LEN) and out["log_probs"].dtype == torch.float32
    torch.testing.assert_close(out["log_probs"], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["entropys"], expected_entropy, atol=1e-5, rtol=0)
    assert actor.compute_log_prob(data)["entropys"] is None


def test_compute_log_prob_dynamic_bsz_matches_fixed_and_keeps_row_order(base_model):
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _make_batch(base_model.config.vocab_size, bs=6, seed=1)
    fixed = actor.compute_log_prob(data, calculate_entropy=True)
    data.meta_info.update(use_dynamic_bsz=True, max_token_len=PROMPT_LEN + RESPONSE_LEN + 2)  # ~1 row per micro
    dynamic = actor.compute_log_prob(data, calculate_entropy=True)
    torch.testing.assert_close(dynamic["log_probs"], fixed["log_probs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dynamic["entropys"], fixed["entropys"], atol=1e-5, rtol=0)


def test_compute_log_prob_requires_temperature(base_model):
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _make_batch(base_model.config.vocab_size)
    del data.meta_info["temperature"]
    with pytest.raises(ValueError, match="temperature"):
        actor.compute_log_prob(data)


def test_update_policy_lowers_the_loss_and_reports_verl_metric_names(base_model):
    model = copy.deepcopy(base_model)
    # Two mini-batches, so old_log_probs stay fixed and the ratio moves away from 1.
    actor = DataParallelPPOActor(
        _actor_config(ppo_mini_batch_size=2, ppo_micro_batch_size_per_gpu=1),
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
    )
    data = _with_old_log_probs(actor, _make_batch(model.config.vocab_size))
    data.batch["advantages"] = data.batch["response_mask"].float()  # every token is good: raise its probability
    losses = []
    for _ in range(4):
        metrics = actor.update_policy(data)
        losses.append(sum(metrics["actor/pg_loss"]) / len(metrics["actor/pg_loss"]))
    assert losses[-1] < losses[0]
    for name in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower", "actor/grad_norm"):
        assert name in metrics, name
    assert len(metrics["actor/grad_norm"]) == 2  # one optimizer step per mini-batch
    assert len(metrics["actor/pg_clipfrac"]) == 4  # one entry per micro-batch
    new_lp = actor.compute_log_prob(data)["log_probs"]
    mask = data.batch["response_mask"].bool()
    assert new_lp[mask].mean() > data.batch["old_log_probs"][mask].mean()


def _param_delta_after_one_sgd_step(base_model, data: DataProto, **cfg) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(base_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    actor = DataParallelPPOActor(
        _actor_config(**{"grad_clip": 1e9, "optim": {"clip_grad": 1e9}, **cfg}),
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
    )
    actor.update_policy(data)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_engine_path_update_does_not_depend_on_the_micro_batch_split(base_model, loss_agg_mode):
    # Engine path (the trainer tags global_batch_size): losses divide by the mini-batch's global counts and
    # micro-batches are summed unscaled, so 1x4, 2x2 and token-packed micro-batches give the same SGD step.
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _with_old_log_probs(actor, _make_batch(base_model.config.vocab_size, seed=2))
    data.meta_info["global_batch_size"] = 4
    common = {"loss_agg_mode": loss_agg_mode}  # one mini-batch, one epoch: exactly one SGD step
    big = _param_delta_after_one_sgd_step(base_model, data, ppo_micro_batch_size_per_gpu=4, **common)
    small = _param_delta_after_one_sgd_step(base_model, data, ppo_micro_batch_size_per_gpu=2, **common)
    dynamic = _param_delta_after_one_sgd_step(
        base_model, data, use_dynamic_bsz=True, ppo_max_token_len_per_gpu=PROMPT_LEN + RESPONSE_LEN, **common
    )
    assert any(d.abs().max() > 0 for d in big.values())
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-5, rtol=0)
        torch.testing.assert_close(dynamic[name], big[name], atol=1e-5, rtol=0)


def test_legacy_path_scales_micro_batch_means_by_one_over_grad_accum(base_model):
    # Legacy path (default): each micro-batch's token-mean is local and scaled by 1/GA. The rows hold 5, 4, 3 and 2
    # response tokens, so with micro-batches of 2 the objective is 0.5 * (mean over rows 0-1 + mean over rows 2-3),
    # which weighs rows 2-3's tokens 9/5 times more than the full-batch token mean does.
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _with_old_log_probs(actor, _make_batch(base_model.config.vocab_size, seed=2))
    delta = _param_delta_after_one_sgd_step(base_model, data, ppo_micro_batch_size_per_gpu=2)
    full = _param_delta_after_one_sgd_step(base_model, data, ppo_micro_batch_size_per_gpu=4)

    model = copy.deepcopy(base_model)  # the same objective built by hand, differentiated by autograd
    reference = DataParallelPPOActor(_actor_config(), model)
    objective = 0.0
    for micro in data.split(2):
        log_prob = reference._forward_micro_batch(micro, temperature=1.0)["log_probs"]
        ratio = torch.exp(log_prob - log_prob.detach())  # on-policy: value 1, gradient d log_prob
        mask = micro.batch["response_mask"]
        objective = objective + 0.5 * ((-micro.batch["advantages"] * ratio) * mask).sum() / mask.sum()
    objective.backward()
    for name, param in model.named_parameters():
        expected = -1.0 * param.grad  # SGD, lr 1; grad_clip is effectively off
        torch.testing.assert_close(delta[name], expected, atol=1e-5, rtol=1e-4)
    assert max((delta[n] - full[n]).abs().max().item() for n in delta) > 1e-4  # the split matters on this path


def test_non_finite_grad_norm_skips_the_step(base_model):
    model = copy.deepcopy(base_model)
    actor = DataParallelPPOActor(_actor_config(), model, torch.optim.SGD(model.parameters(), lr=1.0))
    data = _with_old_log_probs(actor, _make_batch(model.config.vocab_size))
    data.batch["advantages"] = torch.full_like(data.batch["advantages"], float("nan"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = actor.update_policy(data)
    assert actor.skipped_steps == 1
    assert not torch.isfinite(torch.tensor(metrics["actor/grad_norm"][0]))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_reference_policy_has_no_update(base_model):
    ref = DataParallelPPOActor(_actor_config(), base_model, actor_optimizer=None)
    data = _with_old_log_probs(ref, _make_batch(base_model.config.vocab_size))
    with pytest.raises(RuntimeError, match="reference"):
        ref.update_policy(data)


def test_rollout_log_probs_equal_actor_recompute(base_model, tiny_model_dir):
    from transformers import AutoTokenizer

    from verl.workers.rollout.hf_rollout import HFRollout

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in ("one two", "what is 1 + 2?")
    ]
    enc = tokenizer(chats, return_tensors="pt", padding=True)
    prompts = DataProto.from_dict(
        tensors={
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "position_ids": torch.clamp(enc["attention_mask"].cumsum(-1) - 1, min=0),
        },
        meta_info={"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "seed": 5},
    )
    rollout_cfg = OmegaConf.create(
        # no top-k/top-p: the sampled-from distribution is the actor's softmax(logits / T)
        {"temperature": 0.8, "top_p": 1.0, "top_k": -1, "response_length": 6, "calculate_log_probs": True}
    )
    out = HFRollout(base_model, rollout_cfg).generate_sequences(prompts)
    out.meta_info.update(temperature=0.8, micro_batch_size=1, use_dynamic_bsz=False)
    recomputed = DataParallelPPOActor(_actor_config(), base_model).compute_log_prob(out)["log_probs"]
    mask = out.batch["response_mask"]
    torch.testing.assert_close(recomputed * mask, out.batch["rollout_log_probs"], atol=1e-4, rtol=0)


def test_engine_path_clips_with_optim_clip_grad_and_legacy_with_grad_clip(base_model):
    # SGD with lr 1 moves the weights by the clipped gradient, so the step's global norm is the clip value.
    actor = DataParallelPPOActor(_actor_config(), base_model)
    data = _with_old_log_probs(actor, _make_batch(base_model.config.vocab_size, seed=2))
    clips = {"grad_clip": 1e-3, "optim": {"clip_grad": 2e-3}}
    legacy = _param_delta_after_one_sgd_step(base_model, data, **clips)
    data.meta_info["global_batch_size"] = 4
    engine = _param_delta_after_one_sgd_step(base_model, data, **clips)

    def norm(delta):
        return torch.sqrt(sum((d.double() ** 2).sum() for d in delta.values())).item()

    assert norm(legacy) == pytest.approx(1e-3, rel=1e-3)
    assert norm(engine) == pytest.approx(2e-3, rel=1e-3)


@pytest.mark.parametrize("dynamic", [False, True])
def test_on_policy_update_without_old_log_probs_returns_them_and_updates_identically(base_model, dynamic):
    """The trainer's skipped old-log-prob pass: same step, and the update hands back what the pass would compute."""
    overrides = {"ppo_micro_batch_size_per_gpu": 2, "use_kl_loss": True}
    if dynamic:  # micro-batches packed by tokens, rows out of order inside the update
        overrides.update(use_dynamic_bsz=True, ppo_max_token_len_per_gpu=PROMPT_LEN + RESPONSE_LEN + 2)
    models, actors = [], []
    for _ in range(2):
        model = copy.deepcopy(base_model)
        models.append(model)
        actors.append(
            DataParallelPPOActor(_actor_config(**overrides), model, torch.optim.Adam(model.parameters(), lr=1e-2))
        )
    data = _make_batch(base_model.config.vocab_size, bs=4, seed=3)
    data.batch["ref_log_prob"] = actors[0].compute_log_prob(data)["log_probs"] - 0.1
    expected = actors[0].compute_log_prob(data, calculate_entropy=True)  # what the skipped pass would give
    with_pass = data.select(deepcopy=True)
    with_pass.batch["old_log_probs"] = expected["log_probs"]
    metrics_pass = actors[0].update_policy(with_pass)
    assert actors[0].on_policy_log_probs is None  # old_log_probs were given: nothing to hand back
    metrics_skip = actors[1].update_policy(data.select(deepcopy=True))
    got = actors[1].on_policy_log_probs
    torch.testing.assert_close(got["old_log_probs"], expected["log_probs"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["entropys"], expected["entropys"], atol=1e-6, rtol=0)
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/ppo_kl", "actor/pg_clipfrac"):
        assert metrics_skip[key] == pytest.approx(metrics_pass[key], abs=1e-7), key
    for p_pass, p_skip in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p_skip, p_pass, atol=0, rtol=0)


def test_update_without_old_log_probs_is_refused_when_not_on_policy(base_model):
    model = copy.deepcopy(base_model)
    actor = DataParallelPPOActor(_actor_config(ppo_mini_batch_size=2), model, torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="old_log_probs.*on-policy"):
        actor.update_policy(_make_batch(model.config.vocab_size))


def test_only_the_response_positions_go_through_the_output_head(base_model):
    """logits_to_keep = R + 1 when the model takes it; a model without the argument gets every position."""
    from verl.workers.actor.dp_actor import forward_logits

    data = _make_batch(base_model.config.vocab_size)
    seen = {}

    class Spy(torch.nn.Module):  # transformers' signature, so logits_to_keep is passed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache=False, logits_to_keep=0):
            seen["logits_to_keep"] = logits_to_keep
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=logits_to_keep,
            )

    class Plain(torch.nn.Module):  # no such argument: nothing extra is passed
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    kept = DataParallelPPOActor(_actor_config(), Spy(base_model)).compute_log_prob(data)["log_probs"]
    assert seen["logits_to_keep"] == RESPONSE_LEN + 1
    full = DataParallelPPOActor(_actor_config(), Plain(base_model)).compute_log_prob(data)["log_probs"]
    torch.testing.assert_close(kept, full, atol=1e-6, rtol=0)
    assert forward_logits(Plain(base_model), data, logits_to_keep=3).shape[1] == PROMPT_LEN + RESPONSE_LEN
