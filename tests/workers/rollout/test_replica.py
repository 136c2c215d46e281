"""verl.workers.rollout.replica: the registry, sizes, refusals, and real standalone / colocated servers under Ray."""

from __future__ import annotations

import json
import urllib.request

import pytest

from verl.workers.rollout.replica import (
    HFReplica,
    RolloutMode,
    RolloutReplica,
    SGLangReplica,
    get_rollout_replica_class,
    vLLMReplica,
)


def _rollout(**overrides) -> dict:
    cfg = {
        "name": "hf",
        "tensor_model_parallel_size": 1,
        "data_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "load_format": "auto",
        "dtype": "bfloat16",
        "max_model_len": None,
        "max_num_seqs": 8,
        "engine_kwargs": {"hf": {}, "vllm": {}, "sglang": {}},
    }
    cfg.update(overrides)
    return cfg


def _chat(address: str, model: str, n: int = 1) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "say one two"}], "max_tokens": 4, "n": n}
    req = urllib.request.Request(
        f"http://{address}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def test_registry_maps_names_and_lists_them_on_a_miss():
    assert get_rollout_replica_class("hf") is HFReplica
    assert get_rollout_replica_class("vllm") is vLLMReplica
    assert get_rollout_replica_class("sglang") is SGLangReplica
    with pytest.raises(ValueError, match=r"unknown rollout replica 'trt'.*\['hf', 'sglang', 'vllm'\]"):
        get_rollout_replica_class("trt")


def test_rollout_mode_values_match_verl():
    assert [m.value for m in RolloutMode] == ["hybrid", "colocated", "standalone"]


def test_world_size_is_tp_times_dp_times_pp():
    replica = HFReplica(
        3, _rollout(tensor_model_parallel_size=2, data_parallel_size=3, pipeline_model_parallel_size=2), {}
    )
    assert replica.world_size == 12  # 2 * 3 * 2
    assert replica.gpus_per_node == 8 and replica.nnodes == 1  # 12 // min(8, 12)
    assert "replica_3" in replica.name and replica.server_address is None and replica.server_handle is None
    with pytest.raises(TypeError):
        RolloutReplica(0, _rollout(), {})  # abstract: a backend must say how to start its server


def test_dummy_load_format_is_refused_outside_hybrid_mode():
    replica = HFReplica(0, _rollout(load_format="dummy"), {"path": "/m"})
    with pytest.raises(ValueError, match="load_format=dummy in standalone mode would serve a randomly initialised"):
        replica.init_standalone()  # refused before Ray is touched
    with pytest.raises(ValueError, match="load_format=dummy in colocated mode"):
        replica.init_colocated(resource_pool=None)
    HFReplica.check_config(_rollout(load_format="dummy"), RolloutMode.HYBRID)  # hybrid: synced from the trainer


def test_unsupported_load_format_is_named():
    with pytest.raises(ValueError, match=r"load_format=safetensors is not supported by rollout.name=hf.*\['auto'\]"):
        HFReplica.check_config(_rollout(load_format="safetensors"))
    vLLMReplica.check_config(_rollout(load_format="safetensors"))


def test_hybrid_http_serving_is_refused_with_the_alternative():
    class FakeGroup:
        world_size = 4
        workers = ["w0", "w1", "w2", "w3"]

    replica = HFReplica(1, _rollout(tensor_model_parallel_size=2), {"path": "/m"})
    with pytest.raises(NotImplementedError, match="hybrid training workers.*init_standalone"):
        replica.init_hybrid(FakeGroup())
    assert replica.workers == ["w2", "w3"] and replica.rollout_mode is RolloutMode.HYBRID


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_sglang_on_cpu_is_refused_clearly():
    with pytest.raises(ValueError, match="rollout.name=sglang needs a CUDA GPU"):
        SGLangReplica(0, _rollout(name="sglang"), {"path": "/m"}).init_standalone()


def test_vllm_server_kwargs_follow_the_rollout_config():
    kwargs = vLLMReplica(1, _rollout(max_model_len=256, engine_kwargs={"vllm": {"swap_space": 2}}), {}).server_kwargs()
    assert kwargs["max_model_len"] == 256 and kwargs["max_batch_size"] == 8 and kwargs["seed"] == 1
    assert kwargs["engine_kwargs"]["swap_space"] == 2 and kwargs["engine_kwargs"]["load_format"] == "auto"


@pytest.mark.ray
@pytest.mark.slow
def test_standalone_hf_replica_serves_the_tiny_model_and_shuts_down(tiny_model_dir, ray_cluster):
    ray = ray_cluster
    replica = HFReplica(0, _rollout(), {"path": tiny_model_dir}, gpus_per_node=2)
    replica.init_standalone()
    try:
        assert replica.rollout_mode is RolloutMode.STANDALONE
        host, port = replica.server_address.rsplit(":", 1)
        assert int(port) > 0
        out = _chat(replica.server_address, tiny_model_dir, n=2)
        assert len(out["choices"]) == 2 and out["usage"]["completion_tokens"] > 0
        assert ray.get_actor(replica.name) is not None  # the server actor is named after the replica
        assert ray.get(replica.server_handle.address.remote()) == replica.server_address
    finally:
        replica.shutdown()
    with pytest.raises(ValueError):
        ray.get_actor(replica.name)
    assert replica.server_address is None


@pytest.mark.ray
@pytest.mark.slow
def test_colocated_hf_replica_shares_a_resource_pool_bundle(tiny_model_dir, ray_cluster):
    from verl.single_controller.ray import RayResourcePool

    pool = RayResourcePool([1], use_gpu=False, max_colocate_count=2)
    replica = HFReplica(0, _rollout(), {"path": tiny_model_dir}, gpus_per_node=1)
    try:
        replica.init_colocated(pool)
        assert replica.rollout_mode is RolloutMode.COLOCATED
        assert len(_chat(replica.server_address, tiny_model_dir)["choices"]) == 1
    finally:
        replica.shutdown()
        pool.release()


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.vllm
def test_standalone_vllm_replica_serves_the_tiny_model(tiny_model_dir, ray_cluster):
    replica = vLLMReplica(0, _rollout(name="vllm", max_model_len=128), {"path": tiny_model_dir}, gpus_per_node=1)
    replica.init_standalone()
    try:
        out = _chat(replica.server_address, tiny_model_dir, n=2)
        assert len(out["choices"]) == 2 and out["usage"]["completion_tokens"] > 0
    finally:
        replica.shutdown()
