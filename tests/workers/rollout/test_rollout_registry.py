"""Tests for the rollout registry in verl/workers/rollout/base.py."""

from __future__ import annotations

import asyncio
import sys

import pytest

from verl.workers.rollout import BaseRollout, get_rollout_class
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, register_rollout


def test_registry_holds_the_design_table_keys():
    assert _ROLLOUT_REGISTRY[("hf", "sync")] == "verl.workers.rollout.hf_rollout.HFRollout"
    assert _ROLLOUT_REGISTRY[("hf", "async")] == "verl.workers.rollout.hf_rollout.HFRollout"
    assert _ROLLOUT_REGISTRY[("vllm", "async")] == "verl.workers.rollout.vllm_rollout.ServerAdapter"
    assert _ROLLOUT_REGISTRY[("vllm", "sync")] == "verl.workers.rollout.vllm_rollout.ServerAdapter"
    assert _ROLLOUT_REGISTRY[("sglang", "async")] == "verl.workers.rollout.sglang_rollout.sglang_rollout.ServerAdapter"
    assert (
        _ROLLOUT_REGISTRY[("sglang_with_logit", "async")]
        == "verl.workers.rollout.sglang_rollout.sglang_rollout_with_logit.SGLangRolloutWithLogit"
    )
    assert _ROLLOUT_REGISTRY[("spd", "sync")] == "verl.workers.rollout.spd_rollout.SPDRollout"


def test_get_rollout_class_returns_hf_rollout_for_both_modes():
    from verl.workers.rollout.hf_rollout import HFRollout

    assert get_rollout_class("hf", "sync") is HFRollout
    assert get_rollout_class("hf", "async") is HFRollout
    assert issubclass(HFRollout, BaseRollout)


def test_unknown_rollout_key_raises_value_error_listing_registered_keys():
    with pytest.raises(ValueError) as err:
        get_rollout_class("trtllm", "async")
    message = str(err.value)
    assert "'trtllm'" in message and "('hf', 'sync')" in message and "('vllm', 'async')" in message


def test_unimportable_backend_raises_import_error_naming_the_extra(monkeypatch):
    register_rollout("sglang", "async", "verl_no_such_module_for_test.adapter.ServerAdapter")
    try:
        with pytest.raises(ImportError, match=r"pip install verl\[sglang\]"):
            get_rollout_class("sglang", "async")
    finally:
        register_rollout("sglang", "async", "verl.workers.rollout.sglang_rollout.sglang_rollout.ServerAdapter")


def test_importing_the_rollout_package_does_not_import_engines():
    import verl.workers.rollout  # noqa: F401

    assert "vllm" not in sys.modules or sys.modules["vllm"] is not None
    assert "sglang" not in sys.modules


def test_register_rollout_rejects_unknown_modes():
    with pytest.raises(ValueError, match="sync"):
        register_rollout("mine", "batch", "pkg.Mine")


def test_base_rollout_defaults_suit_in_process_engines():
    rollout = BaseRollout(config={"name": "x"})
    asyncio.run(rollout.resume(tags=["weights"]))
    asyncio.run(rollout.release())
    with pytest.raises(NotImplementedError):
        rollout.generate_sequences(None)
    with pytest.raises(NotImplementedError):
        asyncio.run(rollout.update_weights(iter([])))
