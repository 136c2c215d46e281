"""megatron-core's process groups for one worker group: initialised once per process, torn down on request."""

from __future__ import annotations

import os

import torch

__all__ = ["initialize_model_parallel"]


def initialize_model_parallel(
    *,
    tensor_model_parallel_size: int,
    pipeline_model_parallel_size: int,
    context_parallel_size: int,
    expert_model_parallel_size: int,
    seed: int,
    virtual_pipeline_model_parallel_size: int | None = None,
) -> None:
    """Start ``torch.distributed`` if needed (nccl with CUDA, gloo without), then megatron-core's groups and the
    tensor-parallel RNG tracker (the sizes are ``*.megatron``'s). Calling it again with the same sizes does
    nothing."""
    import torch.distributed as dist

    from verl.models.mcore.cpu_patches import apply_cpu_patches

    apply_cpu_patches()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(
            backend,
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if parallel_state.model_parallel_is_initialized():
        same = (
            parallel_state.get_tensor_model_parallel_world_size() == tensor_model_parallel_size
            and parallel_state.get_pipeline_model_parallel_world_size() == pipeline_model_parallel_size
            and parallel_state.get_context_parallel_world_size() == context_parallel_size
            and parallel_state.get_expert_model_parallel_world_size() == expert_model_parallel_size
        )
        if not same:
            raise RuntimeError("megatron-core's parallel groups are already initialised with other sizes")
        return
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        expert_model_parallel_size=expert_model_parallel_size,
    )
    model_parallel_cuda_manual_seed(seed)
