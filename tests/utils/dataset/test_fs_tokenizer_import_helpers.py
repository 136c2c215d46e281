"""Helpers the data path relies on: copy_to_local, load_extern_object / deprecated, hf_tokenizer / hf_processor."""

from __future__ import annotations

import warnings

import pytest

from verl.utils.fs import copy_to_local
from verl.utils.import_utils import deprecated, import_external_libs, load_extern_object
from verl.utils.tokenizer import hf_processor, hf_tokenizer


def test_copy_to_local_passes_local_paths_through(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hi")
    assert copy_to_local(str(f)) == str(f)
    assert copy_to_local(f"file://{f}", cache_dir="/unused", use_shm=True) == str(f)


def test_copy_to_local_missing_path_and_remote_scheme(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        copy_to_local(str(tmp_path / "nothing_here"))
    with pytest.raises(ValueError, match=r"hdfs://.*not supported"):
        copy_to_local("hdfs://namenode/models/qwen")


def test_load_extern_object_from_file_and_module(tmp_path):
    f = tmp_path / "ext_mod.py"
    f.write_text("VALUE = 41\ndef add_one(x):\n    return x + 1\n")
    assert load_extern_object(str(f), "add_one")(load_extern_object(str(f), "VALUE")) == 42
    assert load_extern_object("os.path", "join") is __import__("os").path.join
    with pytest.raises(AttributeError, match="'missing'"):
        load_extern_object(str(f), "missing")
    with pytest.raises(FileNotFoundError):
        load_extern_object(str(tmp_path / "none.py"), "x")
    import_external_libs(["json"])  # plain import, no error


def test_deprecated_warns_and_still_calls():
    @deprecated("new_fn")
    def old_fn(x):
        return x * 2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert old_fn(2) == 4
    assert "use new_fn" in str(caught[0].message)


def test_hf_tokenizer_loads_the_tiny_model_and_fills_a_missing_pad(tiny_model_dir):
    tok = hf_tokenizer(tiny_model_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    tok.pad_token = None
    from verl.utils.tokenizer import set_pad_token_id

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        set_pad_token_id(tok)
    assert tok.pad_token_id == tok.eos_token_id


def test_hf_processor_is_none_for_text_models(tiny_model_dir):
    assert hf_processor(tiny_model_dir) is None
