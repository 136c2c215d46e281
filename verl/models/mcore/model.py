"""A megatron-core ``GPTModel`` for an HF Llama / Qwen2 config, and an adapter with the HF causal-LM forward.

:class:`MegatronCausalLM` takes what a Hugging Face causal LM takes (``input_ids``, ``attention_mask``,
``position_ids``, ``logits_to_keep``) and returns an object with ``.logits`` over the whole vocabulary (gathered
across tensor-parallel ranks, with gradients flowing back to each rank's slice). The PPO actor and critic maths
therefore run on it unchanged.

Positions: ``GPTModel`` applies rotary embeddings by absolute index, whereas the batches it receives are left-padded
prompts followed by right-padded responses (HF counts positions from the first real token). Each row is rotated so
that its first real token sits at index 0, run, and the logits rotated back: real tokens then see exactly the
positions HF gives them, and the padding (now at the end of every row) is masked out as a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from verl.models.mcore.config_converter import rope_theta

__all__ = ["MegatronCausalLM", "ValueHead", "build_gpt_model", "causal_key_mask"]


class ValueHead(nn.Module):
    """Takes the place of ``GPTModel.output_layer`` in a value model: one value per position from the final
    hidden state (as an HF ``*ForTokenClassification`` head with one label), whole on every tensor-parallel rank."""

    def __init__(self, hidden_size: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, bias=bias)

    def forward(self, hidden_states: torch.Tensor, weight: Any = None, **unused: Any):
        del weight, unused  # GPTModel passes the output-layer arguments of its vocabulary head
        return self.linear(hidden_states), None


def build_gpt_model(
    hf_config: Any, tf_config: Any, pre_process: bool = True, post_process: bool = True, value_head: bool = False
):
    """``GPTModel`` with the local layer spec (plain torch modules, no Transformer Engine) for ``hf_config``;
    ``value_head``: a value model (:class:`ValueHead` instead of the vocabulary output layer)."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    if value_head:
        model = _gpt(GPTModel, get_gpt_layer_local_spec, hf_config, tf_config, pre_process, post_process, tied=False)
        if post_process:
            model.output_layer = ValueHead(int(hf_config.hidden_size))
        return model
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    return _gpt(GPTModel, get_gpt_layer_local_spec, hf_config, tf_config, pre_process, post_process, tied=tied)


def _gpt(gpt_class, layer_spec, hf_config, tf_config, pre_process, post_process, tied):
    return gpt_class(
        config=tf_config,
        transformer_layer_spec=layer_spec(normalization="RMSNorm"),
        vocab_size=int(hf_config.vocab_size),
        max_sequence_length=int(getattr(hf_config, "max_position_embeddings", 4096)),
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=tied,
        position_embedding_type="rope",
        rotary_base=int(rope_theta(hf_config)),
    )


def causal_key_mask(valid: torch.Tensor) -> torch.Tensor:
    """megatron's boolean attention mask (``True`` = masked), ``[batch, 1, seq, seq]``: causal, and no key that is
    padding (``valid`` is ``[batch, seq]``, 1 for real tokens)."""
    seq = valid.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=valid.device).tril()
    allowed = causal[None, :, :] & valid.bool()[:, None, :]
    return ~allowed[:, None, :, :]


@dataclass
class _Output:
    logits: torch.Tensor


class MegatronCausalLM(nn.Module):
    """``GPTModel`` behind a Hugging Face causal-LM forward (see the module docstring).

    Args:
        gpt: the ``GPTModel`` (this rank's tensor-parallel slice).
        hf_config: the HF config it was built from (kept as ``.config`` for callers that read it).
    """

    def __init__(self, gpt: nn.Module, hf_config: Any, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.gpt = gpt
        self.config = hf_config
        self.compute_dtype = compute_dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        use_cache: bool = False,
        **unused: Any,
    ) -> _Output:
        del position_ids, use_cache, unused  # positions come from the rotation below (see the module docstring)
        output, finish = self.stage_forward(input_ids, attention_mask)
        return _Output(logits=finish(output, logits_to_keep))

    def stage_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[Any, Any]:
        """This pipeline stage's forward: ``(output, finish)``.

        ``output`` is what the stage's ``GPTModel`` returns: the vocabulary logits (rows rotated, see the module
        docstring) on the last stage, the ``[seq, batch, hidden]`` float32 hidden states that go to the next stage
        on the others (whose input came through ``set_input_tensor``). ``finish(logits, logits_to_keep=0)`` turns the
        last stage's output into the HF forward's ``(batch, seq, vocab)`` logits, rows back in place.
        """
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        lead = torch.where(valid.any(dim=1), valid.int().argmax(dim=1), torch.zeros_like(valid[:, 0], dtype=torch.long))
        count = valid.sum(dim=1)
        index = torch.arange(seq, device=input_ids.device)[None, :]
        inside = (index >= lead[:, None]) & (index < (lead + count)[:, None])
        if not torch.equal(inside, valid):
            raise ValueError("MegatronCausalLM needs each row's real tokens to be contiguous (left/right padding only)")
        forward_index = (index + lead[:, None]) % seq  # row r, new column c <- old column c + lead_r
        ids = torch.gather(input_ids, 1, forward_index)
        rotated_valid = torch.gather(valid, 1, forward_index)
        positions = index.expand(batch, seq)
        mask = causal_key_mask(rotated_valid)
        if self.compute_dtype != torch.float32:  # weights stay float32 (the optimizer's copy); compute in dtype
            with torch.autocast(device_type=input_ids.device.type, dtype=self.compute_dtype):
                output = self.gpt(ids, positions, mask, runtime_gather_output=True)
        else:
            output = self.gpt(ids, positions, mask, runtime_gather_output=True)
        # the hidden states a stage sends travel as float32 (the pipeline dtype of the receiving buffers)
        output = output.float()
        back_index = (index - lead[:, None]) % seq

        def finish(logits: torch.Tensor, logits_to_keep: int | torch.Tensor = 0) -> torch.Tensor:
            logits = torch.gather(logits, 1, back_index[:, :, None].expand(-1, -1, logits.shape[-1]))
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                logits = logits[:, -logits_to_keep:, :]
            elif torch.is_tensor(logits_to_keep):
                logits = logits[:, logits_to_keep, :]
            return logits

        return output, finish

    @property
    def data_parallel_group(self) -> Any:
        """The ranks that hold other rows (the tensor-parallel ranks of one group share theirs)."""
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_group()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Finish the gradients and clip them; returns the total norm before clipping.

        Gradients are first averaged over the data-parallel ranks (what FSDP's reduce-scatter does). The norm then
        counts each tensor-parallel slice once and each replicated parameter (the norms) once, summed over the
        model-parallel group, so it is the norm of the whole model's gradient, as an unsharded model would give.
        """
        import torch.distributed as dist
        from megatron.core import parallel_state

        params = [p for p in self.parameters() if p.grad is not None]
        dp_group = parallel_state.get_data_parallel_group()
        dp = dist.get_world_size(dp_group)
        if dp > 1:
            for p in params:
                dist.all_reduce(p.grad, group=dp_group)
                p.grad.div_(dp)
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            # a tied embedding lives on the first and the last stage: both copies get the sum of their gradients
            # (megatron's embedding group), and the last stage's (marked ``shared``) is left out of the norm
            shared = [p for p in params if getattr(p, "shared_embedding", False)]
            embedding_group = parallel_state.get_embedding_group(check_initialized=False)
            if shared and embedding_group is not None and parallel_state.is_rank_in_embedding_group():
                for p in shared:
                    dist.all_reduce(p.grad, group=embedding_group)
        first_tp_rank = parallel_state.get_tensor_model_parallel_rank() == 0
        square = torch.zeros((), dtype=torch.float64)
        for p in params:
            if getattr(p, "shared", False):
                continue
            if getattr(p, "tensor_model_parallel", False) or first_tp_rank:
                square += p.grad.detach().double().pow(2).sum().cpu()
        mp_group = parallel_state.get_model_parallel_group()
        if dist.get_world_size(mp_group) > 1:
            dist.all_reduce(square, group=mp_group)
        total = square.sqrt().float()
        coef = float(max_norm) / (float(total) + 1e-6)
        if coef < 1.0 and torch.isfinite(total):
            for p in params:
                p.grad.mul_(coef)
        return total
