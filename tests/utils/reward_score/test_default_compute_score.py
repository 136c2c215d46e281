"""default_compute_score: data_source dispatch, return normalisation and errors."""

from __future__ import annotations

import pytest

import verl.utils.reward_score as reward_score
from verl.utils.reward_score import default_compute_score


@pytest.mark.parametrize(
    "data_source, completion, truth, expected",
    [
        ("openai/gsm8k", "#### 42", "42", 1.0),
        ("lighteval/MATH", r"\boxed{\frac12}", "0.5", 1.0),
        ("DigitalLearningGmbH/MATH-lighteval", r"\boxed{3}", "3", 1.0),
        ("HuggingFaceH4/MATH-500", r"\boxed{3}", "4", 0.0),
        ("numina_cn_k12", r"\boxed{3}", "3", 1.0),  # tuple result -> float(first element)
        ("numina_olympiads", r"\boxed{3}", "4", 0.0),
        ("hiyouga/geometry3k", r"<think>a</think>\boxed{3}", "3", 1.0),
        ("searchR1_nq", "<answer>Paris</answer>", {"target": ["paris"]}, 1.0),
    ],
)
def test_dispatch_returns_float(data_source, completion, truth, expected):
    result = default_compute_score(data_source, completion, truth)
    assert isinstance(result, float)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize("data_source", ["math_dapo", "math", "math_dapo_reasoning", "aime2024", "aime25"])
def test_dapo_sources_return_the_dict(data_source):
    assert default_compute_score(data_source, "Answer: 5", "5") == {"score": 1.0, "acc": True, "pred": "5"}


def test_unknown_source_lists_known_ones():
    with pytest.raises(NotImplementedError) as info:
        default_compute_score("my/dataset", "x", "y")
    message = str(info.value)
    assert "my/dataset" in message and "openai/gsm8k" in message and "aime*" in message


@pytest.mark.parametrize("data_source", ["codecontests", "apps", "codeforces", "taco", "phase0_code"])
def test_code_sources_without_a_url_run_in_the_embedded_sandbox(data_source):
    # no reward_model.sandbox_fusion.url: the embedded sandbox judges the tests (one right, one wrong program)
    cases = '{"inputs": ["2\\n"], "outputs": ["4\\n"]}'
    right = default_compute_score(data_source, "```python\nprint(int(input()) * 2)\n```", cases)
    wrong = default_compute_score(data_source, "```python\nprint(5)\n```", cases)
    assert (right["score"] if isinstance(right, dict) else right) == 1.0
    assert (wrong["score"] if isinstance(wrong, dict) else wrong) == 0.0


@pytest.mark.parametrize(
    "raw, expected",
    [
        (True, 1.0),
        (3, 3.0),
        ((0.25, "meta"), 0.25),
        ([1, 2], 1.0),
        ({"score": 0.5, "acc": True}, {"score": 0.5, "acc": True}),
    ],
)
def test_return_normalisation(monkeypatch, raw, expected):
    monkeypatch.setitem(reward_score._REGISTERED, "test/raw", lambda *a, **k: raw)
    assert default_compute_score("test/raw", "s", "t") == expected


def test_dict_without_score_is_an_error(monkeypatch):
    monkeypatch.setitem(reward_score._REGISTERED, "test/bad", lambda *a, **k: {"acc": 1})
    with pytest.raises(ValueError, match="without 'score'"):
        default_compute_score("test/bad", "s", "t")


def test_registered_source_gets_extra_info_and_kwargs(monkeypatch):
    seen = {}

    def scorer(solution_str, ground_truth, extra_info=None, **kwargs):
        seen.update(extra_info=extra_info, kwargs=kwargs)
        return 1

    monkeypatch.setattr(reward_score, "_REGISTERED", {})
    reward_score.register_data_source("test/custom", scorer)
    assert default_compute_score("test/custom", "s", "t", extra_info={"i": 1}, foo=2) == 1.0
    assert seen == {"extra_info": {"i": 1}, "kwargs": {"foo": 2}}
    with pytest.raises(ValueError, match="already registered"):
        reward_score.register_data_source("test/custom", lambda *a, **k: 0)
