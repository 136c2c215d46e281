"""Tests for the rollout registry in verl/workers/rollout/base.py."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from verl.workers.rollout import BaseRollout, get_rollout_class
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, register_rollout

REPO = Path(__file__).resolve().parents[3]


# The design table: (name, mode) -> (module, class, pip extra). Only hf ships today; the others resolve once their
# module exists and its backend is installed, and until then must fail naming what to install.
PKG = "verl.workers.rollout"
DESIGN_TABLE = {
    ("hf", "sync"): (f"{PKG}.hf_rollout", "HFRollout", None),
    ("hf", "async"): (f"{PKG}.hf_rollout", "HFRollout", None),
    ("vllm", "async"): (f"{PKG}.vllm_rollout", "ServerAdapter", "vllm"),
    ("vllm", "sync"): (f"{PKG}.vllm_rollout", "ServerAdapter", "vllm"),
    ("sglang", "async"): (f"{PKG}.sglang_rollout.sglang_rollout", "ServerAdapter", "sglang"),
    ("sglang_with_logit", "async"): (
        f"{PKG}.sglang_rollout.sglang_rollout_with_logit",
        "SGLangRolloutWithLogit",
        "sglang",
    ),
    ("spd", "sync"): (f"{PKG}.spd_rollout", "SPDRollout", None),
}


def test_registry_has_every_design_table_key():
    assert set(DESIGN_TABLE) <= set(_ROLLOUT_REGISTRY)


@pytest.mark.parametrize("key", sorted(DESIGN_TABLE), ids=lambda k: "-".join(k))
def test_each_entry_resolves_to_its_class_or_names_what_to_install(key):
    module_path, class_name, extra = DESIGN_TABLE[key]
    try:
        module = importlib.import_module(module_path)
    except ImportError:
        module = None
    if module is not None:
        cls = get_rollout_class(*key)
        assert cls is getattr(module, class_name)
        assert isinstance(cls, type) and issubclass(cls, BaseRollout)
        return
    # Not importable here (module not written yet, or its backend not installed): the error says what to do.
    hint = rf"pip install verl\[{extra}\]" if extra else "check the verl installation"
    with pytest.raises(ImportError, match=hint) as err:
        get_rollout_class(*key)
    assert module_path in str(err.value) and repr(key[0]) in str(err.value)


def test_registered_plugin_resolves_to_the_class_object(monkeypatch):
    plugin = types.ModuleType("my_rollout_plugin")

    class MyRollout(BaseRollout):
        pass

    plugin.MyRollout = MyRollout
    monkeypatch.setitem(sys.modules, "my_rollout_plugin", plugin)
    monkeypatch.setattr("verl.workers.rollout.base._ROLLOUT_REGISTRY", dict(_ROLLOUT_REGISTRY))
    register_rollout("mine", "sync", "my_rollout_plugin.MyRollout")
    assert get_rollout_class("mine", "sync") is MyRollout
    with pytest.raises(ValueError, match=r"\('mine', 'sync'\)"):
        get_rollout_class("mine", "async")  # registered for sync only; the listing shows the plugin's key


def test_registered_path_without_the_class_is_an_import_error(monkeypatch):
    monkeypatch.setattr("verl.workers.rollout.base._ROLLOUT_REGISTRY", dict(_ROLLOUT_REGISTRY))
    register_rollout("typo", "sync", "verl.workers.rollout.base.BaseRolout")
    with pytest.raises(ImportError, match="BaseRolout"):
        get_rollout_class("typo", "sync")


def test_unknown_rollout_key_raises_value_error_listing_registered_keys():
    with pytest.raises(ValueError) as err:
        get_rollout_class("trtllm", "async")
    message = str(err.value)
    assert "'trtllm'" in message and "actor_rollout_ref.rollout.name" in message
    for name, mode in _ROLLOUT_REGISTRY:
        assert f"({name!r}, {mode!r})" in message
    # A known engine with a mode it does not serve is unknown too.
    with pytest.raises(ValueError, match=r"'spd' with mode 'async'"):
        get_rollout_class("spd", "async")


def test_unimportable_backend_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setattr("verl.workers.rollout.base._ROLLOUT_REGISTRY", dict(_ROLLOUT_REGISTRY))
    register_rollout("sglang", "async", "verl_no_such_module_for_test.adapter.ServerAdapter")  # re-registration wins
    with pytest.raises(ImportError, match=r"pip install verl\[sglang\]") as err:
        get_rollout_class("sglang", "async")
    assert "verl_no_such_module_for_test.adapter" in str(err.value)


def test_importing_the_rollout_package_does_not_import_engines(tmp_path):
    # Stand-in vllm / sglang packages on the path: an eager import anywhere would succeed and show in sys.modules.
    for name in ("vllm", "sglang"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    script = (
        "import sys\n"
        "import verl.workers.rollout\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'sglang') "
        "or m.startswith('verl.workers.rollout.'))\n"
        "print(loaded)\n"
        "verl.workers.rollout.get_rollout_class('hf', 'sync')\n"
        "print('verl.workers.rollout.hf_rollout' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded, hf_loaded_on_demand = out.stdout.split("\n")[:2]
    assert loaded == "['verl.workers.rollout.base']"
    assert hf_loaded_on_demand == "True"  # the check above can see a lazily imported engine


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
