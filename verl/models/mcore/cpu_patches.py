"""Let megatron-core 0.1x run on CPU (gloo): the patches, each with its upstream cause.

megatron-core assumes CUDA in a few places that sit on the path of a plain GPT forward and backward. On a machine
without CUDA, :func:`apply_cpu_patches` changes exactly these, once per process; with CUDA it does nothing.

1. ``torch.cuda.current_device`` returns the CPU device. Upstream allocates on ``torch.cuda.current_device()``
   throughout: RoPE moves ``inv_freq`` there (``rotary_pos_embedding.py``), ``DotProductAttention`` takes its
   workspace from the global memory buffer there, and the tensor-parallel mappings (``mappings.py``) and layers
   allocate their all-gather outputs there.
2. The CUDA RNG calls (``torch.cuda.get_rng_state`` / ``manual_seed`` / ``manual_seed_all`` and
   ``tensor_parallel.random._get_cuda_rng_state`` / ``_set_cuda_rng_state``) use the CPU generator. Upstream's
   ``model_parallel_cuda_manual_seed`` and its ``CudaRNGStatesTracker`` (used by dropout and initialisation inside
   tensor-parallel regions) save and restore CUDA generator states.

3. ``LanguageModule.setup_embeddings_and_output_layer`` keeps ``Tensor.cuda`` from moving anything while it runs.
   Upstream (``language_module.py``) moves the shared embedding to CUDA (``weight.data = weight.data.cuda()``) before
   all-reducing it between the first and the last pipeline stage, when embeddings are tied and ``pp > 1``.

4. ``torch.cuda.synchronize`` does nothing. Upstream's pipeline point-to-point code (``p2p_communication.py``)
   synchronises the device after its batched sends and receives.
5. :func:`cuda_factories_on_cpu`, a context that the callers of megatron's pipeline schedules enter: tensors that
   upstream creates with a literal ``device="cuda"`` are made on the CPU. ``schedules.py`` counts the tokens of a
   step in ``torch.zeros([], dtype=torch.int, device="cuda")``.

Not patched, and avoided by our callers instead: ``get_default_causal_mask`` (``transformer/utils.py`` builds the
mask with ``device="cuda"``: we always pass an explicit mask) and ``FP32Optimizer`` / the distributed optimizer
(``torch.tensor(..., device="cuda")``: on CPU the worker uses a torch optimizer).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["apply_cpu_patches", "cuda_factories_on_cpu"]


class _CudaFactoriesOnCpu(TorchFunctionMode):
    """Rewrites a ``device="cuda"`` (or ``torch.device("cuda")``) keyword argument of any torch call to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": torch.device("cpu")}
        return func(*args, **kwargs)


def cuda_factories_on_cpu() -> contextlib.AbstractContextManager:
    """Patch 5 (see the module docstring) while the block runs, when CUDA is absent; nothing with CUDA."""
    if torch.cuda.is_available():
        return contextlib.nullcontext()
    return _CudaFactoriesOnCpu()


_APPLIED = False


def apply_cpu_patches() -> bool:
    """Apply the patches when CUDA is absent (idempotent); returns whether they are in force."""
    global _APPLIED
    if _APPLIED:
        return True
    if torch.cuda.is_available():
        return False
    cpu = torch.device("cpu")
    torch.cuda.current_device = lambda: cpu
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.manual_seed = lambda seed: None  # the CPU generator is seeded by the caller's torch.manual_seed
    torch.cuda.manual_seed_all = lambda seed: None
    torch.cuda.synchronize = lambda *args, **kwargs: None
    import megatron.core.tensor_parallel.random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    from megatron.core.models.common.language_module.language_module import LanguageModule

    setup = LanguageModule.setup_embeddings_and_output_layer

    def setup_on_cpu(self, *args, **kwargs):
        real_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda tensor, *a, **k: tensor
        try:
            return setup(self, *args, **kwargs)
        finally:
            torch.Tensor.cuda = real_cuda

    LanguageModule.setup_embeddings_and_output_layer = setup_on_cpu
    _APPLIED = True
    return True
