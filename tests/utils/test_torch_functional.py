"""Tests for verl.utils.torch_functional: hand-computed examples, formulation equivalences, invariances."""

from __future__ import annotations

import math

import pytest
import torch

from verl.utils import torch_functional as verl_F


def test_gather_from_labels_picks_the_labelled_class():
    data = torch.tensor([[[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]]])
    labels = torch.tensor([[2, 0]])
    assert torch.equal(verl_F.gather_from_labels(data, labels), torch.tensor([[0.7, 0.5]]))


def test_logprobs_from_logits_literal_uniform_and_two_class():
    # Uniform logits over 4 classes: log p = -log 4 = -1.386294.
    # Logits [0, ln 3]: p(class 1) = 3 / (1 + 3) = 0.75 -> log 0.75 = -0.287682.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]]])
    labels = torch.tensor([[3, 1]])
    out = verl_F.logprobs_from_logits(logits, labels)
    assert torch.allclose(out, torch.tensor([[-math.log(4.0), math.log(0.75)]]), atol=1e-6)


def test_logprobs_from_logits_matches_naive_for_float32_and_bf16():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50)
    labels = torch.randint(0, 50, (3, 7))
    ref = verl_F.logprobs_from_logits_naive(logits, labels)
    assert torch.allclose(verl_F.logprobs_from_logits(logits, labels), ref, atol=1e-5)
    bf16 = logits.bfloat16()
    ref_bf16 = verl_F.logprobs_from_logits_naive(bf16.float(), labels)
    assert torch.allclose(verl_F.logprobs_from_logits(bf16, labels), ref_bf16, atol=1e-5)


def test_logprobs_from_logits_chunking_is_invariant_to_chunk_size(monkeypatch):
    torch.manual_seed(1)
    logits = torch.randn(5, 9, 13)
    labels = torch.randint(0, 13, (5, 9))
    full = verl_F.logprobs_from_logits(logits, labels)
    monkeypatch.setattr(verl_F, "_LOGPROB_CHUNK_ROWS", 4)
    assert torch.allclose(verl_F.logprobs_from_logits(logits, labels), full, atol=1e-6)


def test_logprobs_from_logits_gradient_matches_naive():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 6, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    labels = torch.randint(0, 6, (2, 3))
    verl_F.logprobs_from_logits(a, labels).sum().backward()
    verl_F.logprobs_from_logits_naive(b, labels).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_entropy_from_logits_literal():
    # Uniform over 4 -> H = ln 4 = 1.386294. One-hot-ish (logit 1e4 on one class) -> H ~ 0.
    # Two classes with p = (0.25, 0.75): H = -(0.25 ln .25 + .75 ln .75) = 0.346574 + 0.215762 = 0.562335.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e9, -1e9]])
    out = verl_F.entropy_from_logits(logits)
    assert torch.allclose(out, torch.tensor([math.log(4.0), 0.0, 0.562335]), atol=1e-5)


def test_entropy_chunked_equals_unchunked():
    torch.manual_seed(3)
    logits = torch.randn(4, 5, 17)
    full = verl_F.entropy_from_logits(logits)
    assert torch.allclose(verl_F.entropy_from_logits_with_chunking(logits, chunk_size=3), full, atol=1e-6)
    explicit = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(full, explicit, atol=1e-5)


def test_log_probs_from_logits_response_shifts_by_one():
    torch.manual_seed(4)
    input_ids = torch.randint(0, 8, (2, 6))
    logits = torch.randn(2, 6, 8)
    out = verl_F.log_probs_from_logits_response(input_ids, logits, response_length=2)
    # Token 4 is predicted by logit 3, token 5 by logit 4.
    expected = torch.log_softmax(logits[:, 3:5], -1).gather(-1, input_ids[:, 4:6, None]).squeeze(-1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_masked_sum_and_mean_literal_and_nan_outside_mask():
    values = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # Masked sum = 1 + 2 + 4 + 6 = 13; count 4 -> mean 3.25. Row sums: [3, 10]; row means [1.5, 5].
    assert verl_F.masked_sum(values, mask).item() == 13.0
    assert verl_F.masked_mean(values, mask).item() == pytest.approx(3.25)
    assert torch.allclose(verl_F.masked_mean(values, mask, axis=-1), torch.tensor([1.5, 5.0]))
    assert verl_F.masked_mean(values, torch.zeros_like(mask)).item() == 0.0


def test_masked_var_literal_and_errors():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    # mean 2; squared deviations 1, 0, 1 -> biased 2/3, unbiased 2/2 = 1.
    assert verl_F.masked_var(values, mask).item() == pytest.approx(1.0)
    assert verl_F.masked_var(values, mask, unbiased=False).item() == pytest.approx(2.0 / 3.0)
    assert torch.allclose(verl_F.masked_var(values, mask), values[:3].var())
    with pytest.raises(ValueError):
        verl_F.masked_var(values, torch.zeros(4))
    with pytest.raises(ValueError):
        verl_F.masked_var(values, torch.tensor([0, 1, 0, 0]))


def test_masked_whiten_literal_and_shift_invariance():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    # mean 2, unbiased var 1 -> (x - 2) / 1 on masked positions: [-1, 0, 1].
    out = verl_F.masked_whiten(values, mask)
    assert torch.allclose(out[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    # Without mean shift the mean (2) is added back: [1, 2, 3].
    assert torch.allclose(verl_F.masked_whiten(values, mask, shift_mean=False)[:3], values[:3], atol=1e-6)
    # Whitening is invariant to an affine transform a*x + b with a > 0.
    assert torch.allclose(verl_F.masked_whiten(3.0 * values + 7.0, mask)[:3], out[:3], atol=1e-5)


def test_clip_by_value_with_tensor_bounds():
    x = torch.tensor([-2.0, 0.5, 3.0])
    out = verl_F.clip_by_value(x, torch.tensor([-1.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 2.5]))
    assert torch.equal(out, torch.tensor([-1.0, 1.0, 2.5]))


def test_get_response_mask_includes_first_eos_and_accepts_lists():
    ids = torch.tensor([[5, 2, 7, 2], [1, 1, 1, 1], [3, 4, 9, 0]])
    assert torch.equal(verl_F.get_response_mask(ids, eos_token=2), torch.tensor([[1, 1, 0, 0], [1] * 4, [1] * 4]))
    multi = verl_F.get_response_mask(ids, eos_token=[9, 4])
    assert torch.equal(multi, torch.tensor([[1] * 4, [1] * 4, [1, 1, 0, 0]]))
    assert verl_F.get_response_mask(ids, dtype=torch.bool).dtype == torch.bool


def test_compute_grad_norm_is_l2_norm_of_all_grads():
    model = torch.nn.Linear(2, 1, bias=True)
    model.weight.grad = torch.tensor([[3.0, 0.0]])
    model.bias.grad = torch.tensor([4.0])
    # sqrt(3^2 + 4^2) = 5
    assert verl_F.compute_grad_norm(model) == pytest.approx(5.0)


def test_get_unpad_data_literal():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    indices, cu_seqlens, max_len = verl_F.get_unpad_data(mask)
    assert indices.tolist() == [1, 2, 3, 4, 5]
    assert cu_seqlens.tolist() == [0, 2, 5]
    assert max_len == 3


def test_pad_2d_list_and_pad_sequence_to_length():
    out = verl_F.pad_2d_list_to_length([[1, 2], [3]], pad_token_id=0, max_length=4)
    assert out.tolist() == [[1, 2, 0, 0], [3, 0, 0, 0]]
    assert verl_F.pad_2d_list_to_length([[1, 2], [3]], pad_token_id=9).tolist() == [[1, 2], [3, 9]]
    t = torch.tensor([[1, 2]])
    assert verl_F.pad_sequence_to_length(t, 4, 0).tolist() == [[1, 2, 0, 0]]
    assert verl_F.pad_sequence_to_length(t, 4, 0, left_pad=True).tolist() == [[0, 0, 1, 2]]
    assert verl_F.pad_sequence_to_length(t, 1, 0) is t


def test_postprocess_data_pads_left_by_default():
    ids, mask = torch.tensor([[7, 8]]), torch.tensor([[1, 1]])
    out_ids, out_mask = verl_F.postprocess_data(ids, mask, max_length=4, pad_token_id=0)
    assert out_ids.tolist() == [[0, 0, 7, 8]] and out_mask.tolist() == [[0, 0, 1, 1]]
    out_ids, _ = verl_F.postprocess_data(ids, mask, max_length=4, pad_token_id=0, left_pad=False)
    assert out_ids.tolist() == [[7, 8, 0, 0]]


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("left", [3, 4, 5, 6]),  # keep the last 4
        ("right", [1, 2, 3, 4]),  # keep the first 4
        ("middle", [1, 2, 5, 6]),  # 4 // 2 = 2 from the start, 2 from the end
    ],
)
def test_postprocess_data_truncation_modes(mode, expected):
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out_ids, out_mask = verl_F.postprocess_data(ids, torch.ones_like(ids), 4, 0, truncation=mode)
    assert out_ids.tolist() == [expected]
    assert out_mask.shape == (1, 4)


def test_postprocess_data_middle_truncation_odd_length():
    ids = torch.arange(1, 8).unsqueeze(0)  # 7 tokens -> keep 5: 5 // 2 = 2 head, 3 tail
    out_ids, _ = verl_F.postprocess_data(ids, torch.ones_like(ids), 5, 0, truncation="middle")
    assert out_ids.tolist() == [[1, 2, 5, 6, 7]]


def test_postprocess_data_error_names_lengths_and_key():
    ids = torch.ones(1, 6, dtype=torch.long)
    with pytest.raises(ValueError) as err:
        verl_F.postprocess_data(ids, ids, 4, 0, truncation="error")
    assert "6" in str(err.value) and "4" in str(err.value) and "data.truncation" in str(err.value)
    with pytest.raises(ValueError):
        verl_F.postprocess_data(ids, ids, 4, 0, truncation="sideways")


def test_tokenize_and_postprocess_data_uses_tokenizer_without_special_tokens():
    seen = {}

    def fake_tokenizer(text, return_tensors, add_special_tokens):
        seen["special"] = add_special_tokens
        ids = torch.tensor([[ord(c) for c in text]])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    ids, mask = verl_F.tokenize_and_postprocess_data("ab", fake_tokenizer, 3, pad_token_id=0)
    assert ids.tolist() == [[0, 97, 98]] and mask.tolist() == [[0, 1, 1]] and seen["special"] is False


def test_remove_pad_token_keeps_masked_ids():
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert verl_F.remove_pad_token(ids, mask) == [[5, 6], [1, 2, 3, 4]]


def test_split_dict_tensor_into_batches():
    from tensordict import TensorDict

    td = TensorDict({"a": torch.arange(6)}, batch_size=[6])
    parts = verl_F.split_dict_tensor_into_batches(td, 2)
    assert [p["a"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError):
        verl_F.split_dict_tensor_into_batches(td, 4)


def _lrs(scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_constant_schedule_without_warmup_starts_at_the_base_lr():
    # 0 warm-up steps: multiplier 1 from the very first step (not 0/1 = 0, which would waste step 0)
    assert _lrs(verl_F.get_constant_schedule_with_warmup(_opt(), 0), 3) == [1.0, 1.0, 1.0]


def test_constant_schedule_with_warmup_literal():
    # warmup 2: 0/2, 1/2, then 1.
    assert _lrs(verl_F.get_constant_schedule_with_warmup(_opt(), 2), 4) == [0.0, 0.5, 1.0, 1.0]


def test_cosine_schedule_with_warmup_literal():
    # warmup 2, total 6, min 0.2: warmup [0, .5]; decay progress p = (s-2)/4 for s = 2..5:
    # 0.6 + 0.4 cos(pi p) -> p=0: 1.0, p=.25: .6+.4*.7071=.882843, p=.5: .6, p=.75: .6-.282843=.317157
    lrs = _lrs(verl_F.get_cosine_schedule_with_warmup(_opt(), 2, 6, min_lr_ratio=0.2), 6)
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.882843, 0.6, 0.317157], abs=1e-6)
    lrs = _lrs(verl_F.get_cosine_schedule_with_warmup(_opt(), 2, 6, init_lr_ratio=0.5), 2)
    assert lrs == pytest.approx([0.5, 0.75])


def test_wsd_schedule_literal():
    # warmup 2, total 12, stable 0.5 -> remaining 10, stable 5, decay 5: steps 2..6 flat at 1,
    # step 7 progress 0 -> 1.0, step 9 progress 0.4 -> 0.5 (1 + cos(0.4 pi)) = 0.654508, step >= 12 -> min 0.1.
    lrs = _lrs(verl_F.get_wsd_schedule_with_warmup(_opt(), 2, 12, min_lr_ratio=0.1, stable_ratio=0.5), 13)
    assert lrs[:7] == pytest.approx([0.0, 0.5, 1, 1, 1, 1, 1])
    assert lrs[7] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.654508, abs=1e-6)
    assert lrs[12] == pytest.approx(0.1)


def test_distributed_reductions_without_process_group_are_local():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, max_v, min_v, std = verl_F.distributed_mean_max_min_std(values)
    # mean 2.5, unbiased std = sqrt((2.25+.25+.25+2.25)/3) = sqrt(5/3) = 1.290994
    assert (mean.item(), max_v.item(), min_v.item()) == (2.5, 4.0, 1.0)
    assert std.item() == pytest.approx(1.290994, abs=1e-6)
    mask = torch.tensor([1, 0, 1, 0])
    assert verl_F.distributed_masked_mean(values, mask).item() == pytest.approx(2.0)
