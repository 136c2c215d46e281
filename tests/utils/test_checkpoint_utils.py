"""Checkpoint bookkeeping: tracker file, latest-checkpoint lookup, atomic writes, rotation, RNG state, ESI."""

from __future__ import annotations

import logging
import os
import random
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl.utils.checkpoint import (
    BaseCheckpointManager,
    atomic_write_text,
    find_latest_ckpt_path,
    get_checkpoint_tracker_filename,
    should_save_ckpt_esi,
)
from verl.utils.checkpoint import checkpoint_manager as cm


def test_tracker_filename_is_verl_name(tmp_path):
    assert get_checkpoint_tracker_filename(tmp_path) == str(tmp_path / "latest_checkpointed_iteration.txt")


def test_tracker_round_trip_finds_latest_checkpoint(tmp_path):
    (tmp_path / "global_step_3" / "actor").mkdir(parents=True)
    atomic_write_text(get_checkpoint_tracker_filename(tmp_path), "3")
    assert find_latest_ckpt_path(tmp_path) == str(tmp_path / "global_step_3")
    (tmp_path / "step-7").mkdir()
    atomic_write_text(get_checkpoint_tracker_filename(tmp_path), "7\n")
    assert find_latest_ckpt_path(str(tmp_path), directory_format="step-{}") == str(tmp_path / "step-7")


def test_missing_tracker_returns_none_with_reason(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger=cm.__name__):
        assert find_latest_ckpt_path(tmp_path) is None
    assert "no checkpoint tracker" in caplog.text
    assert find_latest_ckpt_path(None) is None


def test_dangling_or_garbled_tracker_returns_none_with_warning(tmp_path, caplog):
    atomic_write_text(get_checkpoint_tracker_filename(tmp_path), "5")  # global_step_5 was never written
    with caplog.at_level(logging.WARNING, logger=cm.__name__):
        assert find_latest_ckpt_path(tmp_path) is None
    assert "does not exist" in caplog.text
    atomic_write_text(get_checkpoint_tracker_filename(tmp_path), "five")
    assert find_latest_ckpt_path(tmp_path) is None


def test_atomic_write_keeps_old_content_when_writer_dies_before_replace(tmp_path, monkeypatch):
    target = tmp_path / "latest_checkpointed_iteration.txt"
    atomic_write_text(target, "1")

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed between fsync and rename")

    monkeypatch.setattr(cm.os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "2")
    monkeypatch.undo()
    assert target.read_text() == "1"
    assert os.listdir(tmp_path) == ["latest_checkpointed_iteration.txt"]  # no temporary file left behind


def test_atomic_write_replaces_content_and_creates_parents(tmp_path):
    target = tmp_path / "new" / "dir" / "f.txt"
    atomic_write_text(target, "a")
    atomic_write_text(target, "bb")
    assert target.read_text() == "bb"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)


def test_contents_flags_from_config():
    default = BaseCheckpointManager(model=None, optimizer=None)
    assert (default.should_save_model, default.should_save_optimizer, default.should_save_extra) == (True, True, True)
    assert not default.should_save_hf_model
    cfg = OmegaConf.create({"save_contents": ["model", "hf_model"], "load_contents": ["model"]})
    mgr = BaseCheckpointManager(model=None, optimizer=None, checkpoint_config=cfg)
    assert mgr.should_save_hf_model and not mgr.should_save_optimizer
    assert mgr.should_load_model and not mgr.should_load_optimizer and not mgr.should_load_extra
    # load_contents defaults to save_contents
    only_model = BaseCheckpointManager(None, None, checkpoint_config={"save_contents": ["model"]})
    assert only_model.checkpoint_load_contents == ["model"]
    with pytest.raises(ValueError, match="weights"):
        BaseCheckpointManager(None, None, checkpoint_config={"save_contents": ["weights"]})


def test_rotation_keeps_newest_checkpoints(tmp_path):
    mgr = BaseCheckpointManager(None, None)
    for step in range(1, 5):
        path = tmp_path / f"global_step_{step}"
        mgr.ensure_checkpoint_capacity(max_ckpt_to_keep=2)
        path.mkdir()
        mgr.register_checkpoint(str(path))
    # before each save at most 1 old checkpoint survives, so after step 4 only steps 3 and 4 remain
    assert sorted(os.listdir(tmp_path)) == ["global_step_3", "global_step_4"]
    assert mgr.previous_saved_paths == [str(tmp_path / "global_step_3"), str(tmp_path / "global_step_4")]
    mgr.register_checkpoint(str(tmp_path / "global_step_4"), max_ckpt_to_keep=1)  # re-register does not duplicate
    assert sorted(os.listdir(tmp_path)) == ["global_step_4"]


def test_keeping_one_checkpoint_never_deletes_it_before_the_next_is_saved(tmp_path):
    mgr = BaseCheckpointManager(None, None)
    old = tmp_path / "global_step_100"
    old.mkdir()
    mgr.register_checkpoint(str(old))
    mgr.ensure_checkpoint_capacity(max_ckpt_to_keep=1)
    assert old.exists(), "the only checkpoint was deleted before the new one was written"
    # the save of step 200 crashes here: step 100 is still there to resume from
    new = tmp_path / "global_step_200"
    new.mkdir()
    mgr.register_checkpoint(str(new), max_ckpt_to_keep=1)  # once saved, the old one goes
    assert sorted(os.listdir(tmp_path)) == ["global_step_200"]


def test_rotation_disabled_by_none_or_nonpositive(tmp_path):
    mgr = BaseCheckpointManager(None, None)
    for step in range(3):
        (tmp_path / str(step)).mkdir()
        mgr.register_checkpoint(str(tmp_path / str(step)))
    mgr.ensure_checkpoint_capacity(None)
    mgr.ensure_checkpoint_capacity(0)
    assert len(os.listdir(tmp_path)) == 3


def test_rng_state_round_trip():
    state = BaseCheckpointManager.get_rng_state()
    first = (torch.rand(2), np.random.rand(), random.random())
    BaseCheckpointManager.load_rng_state(state)
    again = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


def test_base_manager_save_and_load_are_abstract():
    mgr = BaseCheckpointManager(None, None)
    with pytest.raises(NotImplementedError):
        mgr.save_checkpoint("x")
    with pytest.raises(NotImplementedError):
        mgr.load_checkpoint("x")


@pytest.fixture
def esi_env(monkeypatch):
    monkeypatch.delenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", raising=False)
    monkeypatch.delenv("SAGEMAKER_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", raising=False)
    return monkeypatch


def test_esi_save_decision(esi_env):
    assert not should_save_ckpt_esi(100)  # no reservation
    esi_env.setenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", str(time.time() + 90))
    assert should_save_ckpt_esi(30)  # 90 s left <= 30 step + 60 save
    assert not should_save_ckpt_esi(0)  # no step duration known yet
    esi_env.setenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", str(time.time() + 200))
    assert not should_save_ckpt_esi(30)  # 200 s left > 90 s needed
    assert should_save_ckpt_esi(30, redundant_time=120)  # 200 <= 30 + 60 + 120
    esi_env.setenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", str(time.time() - 10))
    assert not should_save_ckpt_esi(30)  # already expired
    esi_env.setenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", "soon")
    assert not should_save_ckpt_esi(30)
    esi_env.delenv("MLP_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP")
    esi_env.setenv("SAGEMAKER_CURRENT_CAPACITY_BLOCK_EXPIRATION_TIMESTAMP", str(int(time.time()) + 100 * 60))
    assert not should_save_ckpt_esi(30 * 60)  # 100 min left > 31 min needed
