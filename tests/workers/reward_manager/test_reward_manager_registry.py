"""Reward manager registry: lookup, re-registration and errors."""

from __future__ import annotations

import pytest

from verl.workers.reward_manager import BatchRewardManager, DAPORewardManager, NaiveRewardManager
from verl.workers.reward_manager.registry import REWARD_MANAGER_REGISTRY, get_reward_manager_cls, register


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr("verl.workers.reward_manager.registry.REWARD_MANAGER_REGISTRY", dict(REWARD_MANAGER_REGISTRY))


def test_builtin_managers_are_registered():
    assert get_reward_manager_cls("naive") is NaiveRewardManager
    assert get_reward_manager_cls("batch") is BatchRewardManager
    assert get_reward_manager_cls("dapo") is DAPORewardManager


def test_unknown_name_lists_registered_ones():
    with pytest.raises(ValueError, match="Unknown reward manager: nope.*naive"):
        get_reward_manager_cls("nope")


def test_lookup_is_case_sensitive():
    with pytest.raises(ValueError, match="Unknown reward manager: Naive"):
        get_reward_manager_cls("Naive")


def test_register_same_class_twice_is_fine_but_a_different_class_is_not(clean_registry):
    @register("custom_test_manager")
    class Custom:
        pass

    assert register("custom_test_manager")(Custom) is Custom
    assert get_reward_manager_cls("custom_test_manager") is Custom

    class Other:
        pass

    with pytest.raises(ValueError, match="already registered"):
        register("custom_test_manager")(Other)
