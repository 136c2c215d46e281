"""BaseConfig: a frozen dataclass that reads like a read-only mapping."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from verl.base_config import BaseConfig


@dataclass
class _Example(BaseConfig):
    _mutable_fields = BaseConfig._mutable_fields | {"steps"}

    lr: float = 0.1
    steps: int = -1
    tags: list[str] = field(default_factory=list)


def test_fields_are_readable_by_item_get_and_attribute():
    cfg = _Example(lr=0.5)
    assert cfg["lr"] == 0.5 == cfg.lr == cfg.get("lr")
    assert cfg.get("missing") is None
    assert cfg.get("missing", 3) == 3


def test_non_string_key_raises_type_error():
    with pytest.raises(TypeError):
        _Example()[0]


def test_missing_key_raises_attribute_error():
    with pytest.raises(AttributeError):
        _Example()["missing"]


def test_iteration_and_length_cover_the_fields_including_target():
    cfg = _Example()
    assert list(cfg) == ["_target_", "lr", "steps", "tags"]
    assert len(cfg) == 4
    assert dict(cfg.items())["lr"] == 0.1
    assert "lr" in cfg and "missing" not in cfg and 1 not in cfg


def test_fields_are_frozen_after_construction():
    cfg = _Example()
    with pytest.raises(FrozenInstanceError, match="lr"):
        cfg.lr = 1.0
    with pytest.raises(FrozenInstanceError):
        del cfg.lr
    assert cfg.lr == 0.1


def test_mutable_fields_can_be_reassigned():
    cfg = _Example()
    cfg.steps = 100
    assert cfg.steps == 100


def test_replace_builds_a_modified_copy():
    cfg = _Example()
    other = dataclasses.replace(cfg, lr=0.2)
    assert (cfg.lr, other.lr) == (0.1, 0.2)


def test_target_defaults_to_empty_string_and_equality_is_by_value():
    assert _Example()._target_ == ""
    assert _Example(lr=0.3) == _Example(lr=0.3)
    assert _Example(lr=0.3) != _Example(lr=0.4)


def test_pickle_round_trip_keeps_values_and_freezing():
    cfg = pickle.loads(pickle.dumps(_Example(lr=0.7, tags=["a"])))
    assert cfg == _Example(lr=0.7, tags=["a"])
    with pytest.raises(FrozenInstanceError):
        cfg.lr = 0.0
