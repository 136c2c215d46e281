"""Megatron-core workers: ``actor_rollout_ref.actor.strategy=megatron`` (``--config-name ppo_megatron_trainer``).

The actor and the reference policy are megatron-core ``GPTModel`` s split over ``megatron.tensor_model_parallel_size``
consecutive ranks, built from the HF checkpoint by ``verl.models.mcore``. Everything else is the FSDP worker's: the
registered methods and their outputs, the PPO maths (``DataParallelPPOActor`` runs on the model through
``MegatronCausalLM``, which has the HF forward), the rollout engines and their lifecycle, metrics. What differs:

* ``parallel_state`` is initialised once per worker; the actor's data-parallel size is ``world / tp`` and the ranks of
  one tensor-parallel group receive the same rows (the trainer's dispatch collects tensor-parallel rank 0's output);
  generation is per rank (each rank's rollout holds whole weights);
* gradients are averaged over data-parallel ranks and their norm taken over the model-parallel group
  (``MegatronCausalLM.clip_grad_norm_``); the optimizer is a torch optimizer (``actor.optim``) on each rank's slice;
* the rollout receives the actor's weights gathered from the slices and converted back to HF names (bucketed by the
  engine like every sync);
* forwards run on padded micro-batches (megatron-core packs sequences only with its THD kernels, absent on CPU);
  ``megatron.dtype`` is the compute dtype under autocast, the weights and optimizer state staying in float32;
* checkpoints hold each rank's slice (``MegatronCheckpointManager``) and export HF weights.

``CriticWorker`` trains the value model the same way: the backbone from ``critic.model.path`` split over the
ranks, and a one-output value head whole on every rank (initialised as the FSDP critic's head). The actor and the
critic share megatron-core's process groups (they are colocated in one process per rank), so their tensor-parallel
sizes must agree (checked before Ray).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import torch

from verl.single_controller.base.decorator import Dispatch, register
from verl.utils import hf_models as hf
from verl.utils.device import get_device_name
from verl.workers import fsdp_base, fsdp_workers
from verl.workers.config import FSDPActorConfig

__all__ = ["ActorRolloutRefWorker", "AsyncActorRolloutRefWorker", "CriticWorker"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_DTYPES.update({"float16": torch.float16, "fp16": torch.float16})


def dp_actor_view(actor_cfg: Any) -> FSDPActorConfig:
    """The PPO actor's settings of a ``McoreActorConfig`` as the config ``DataParallelPPOActor`` reads (the same
    values; padded micro-batches, see the module docstring)."""
    names = {f.name for f in dataclasses.fields(FSDPActorConfig)} - {"strategy", "fsdp_config", "use_remove_padding"}
    values = {f.name: getattr(actor_cfg, f.name) for f in dataclasses.fields(actor_cfg) if f.name in names}
    return FSDPActorConfig(**values, use_remove_padding=False)


def _is_collect_rank() -> bool:
    """The rank whose output stands for its model-parallel group: tensor-parallel rank 0 of the last stage."""
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.is_pipeline_last_stage()


class ActorRolloutRefWorker(fsdp_workers.ActorRolloutRefWorker):
    """verl's ``megatron_workers.ActorRolloutRefWorker``: the FSDP worker's methods on megatron-core models."""

    # ---------------------------------------------------------------- layout

    def _layout(self, config: Any = None) -> Any:
        return (config or self.config).actor.megatron

    def _data_parallel_size(self, config: Any) -> int:
        layout = self._layout(config)
        model_parallel = (
            layout.tensor_model_parallel_size * layout.pipeline_model_parallel_size * layout.context_parallel_size
        )
        if self.world_size % model_parallel:
            raise ValueError(
                f"actor_rollout_ref.actor.megatron: tp * pp * cp = {model_parallel} must divide the {self.world_size} "
                "ranks (trainer.n_gpus_per_node * trainer.nnodes)"
            )
        return self.world_size // model_parallel

    @staticmethod
    def _model_seed(config: Any) -> int:
        return config.actor.megatron.seed

    def _setup(self, config: Any, meshes: tuple[str, ...], seed: int, timeout_s: int) -> None:
        from verl.models.mcore.parallel import initialize_model_parallel

        self.config = config
        self._seed = seed
        fsdp_base._init_distributed(self, timeout_s)
        layout = self._layout(config)
        initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor_model_parallel_size,
            pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
            context_parallel_size=layout.context_parallel_size,
            expert_model_parallel_size=layout.expert_model_parallel_size,
            seed=seed,
        )
        from megatron.core import parallel_state

        self._tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self._dp_rank = parallel_state.get_data_parallel_rank()
        # the actor: one copy of the rows per model-parallel group (tensor and pipeline ranks share them), collected
        # from the first tensor-parallel rank of the last pipeline stage (every stage returns the last one's results)
        self._register_dispatch_collect_info("actor", dp_rank=self._dp_rank, is_collect=_is_collect_rank())
        # generation: each rank's rollout holds whole weights and generates its own rows
        self._register_dispatch_collect_info("rollout", dp_rank=self.rank, is_collect=True)

    def _compute_dtype(self) -> torch.dtype:
        return _DTYPES[str(self._layout().dtype)]

    # ---------------------------------------------------------------- the back-end's hooks

    def _actor_offload(self, with_optimizer: bool = True):
        return contextlib.nullcontext()  # megatron.*_offload are refused before Ray (not implemented)

    def _hf_weights(self, module: Any) -> dict[str, torch.Tensor]:
        """The whole model under HF names, gathered from the tensor-parallel slices (on every rank of the group)."""
        from megatron.core import parallel_state

        from verl.models.mcore import mcore_to_hf_state_dict
        from verl.models.mcore.weight_converter import gather_pp_state_dict, gather_tp_state_dict

        with torch.no_grad():
            merged = gather_tp_state_dict(module.gpt.state_dict(), parallel_state.get_tensor_model_parallel_group())
            merged = gather_pp_state_dict(merged, module.config)
            state = mcore_to_hf_state_dict(merged, module.config)
        if getattr(module.config, "tie_word_embeddings", False):
            # as an HF model's own state dict: the tied head under its name too. vLLM's weight reload finishes a
            # module only once every one of its weights has arrived, the tied lm_head included.
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        return state

    @contextlib.contextmanager
    def _actor_weights(self):
        yield self._hf_weights(self.actor_module_fsdp)

    # ---------------------------------------------------------------- building

    def _load_hf(self, local_path: str) -> torch.nn.Module:
        model_cfg = self.config.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            return hf.build_causal_lm(
                local_path,
                dtype=torch.float32,
                override_config=model_cfg.override_config,
                trust_remote_code=model_cfg.trust_remote_code,
                extra_config=self._token_id_overrides(),
            )

    def _megatron_module(self, hf_model: torch.nn.Module, load_weights: bool = True) -> torch.nn.Module:
        """This rank's tensor-parallel slice of ``hf_model`` as a megatron-core model behind the HF forward."""
        from megatron.core import parallel_state

        from verl.models.mcore import hf_to_mcore_config, hf_to_mcore_state_dict
        from verl.models.mcore.model import MegatronCausalLM, build_gpt_model

        layout = self._layout()
        tp, pp = layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size
        overrides = dict(layout.override_transformer_config)
        if self.config.model.enable_gradient_checkpointing:
            overrides.setdefault("recompute_granularity", "full")
            overrides.setdefault("recompute_method", "uniform")
            overrides.setdefault("recompute_num_layers", 1)
        overrides.setdefault("pipeline_dtype", torch.float32)  # what stages send each other (stage_forward)
        tf_config = hf_to_mcore_config(
            hf_model.config, torch.float32, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, **overrides
        )
        stage = parallel_state.get_pipeline_model_parallel_rank()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            gpt = build_gpt_model(
                hf_model.config,
                tf_config,
                pre_process=parallel_state.is_pipeline_first_stage(),
                post_process=parallel_state.is_pipeline_last_stage(),
            )
        if load_weights:
            rank = parallel_state.get_tensor_model_parallel_rank()
            shard = hf_to_mcore_state_dict(
                hf_model.state_dict(), hf_model.config, tp_rank=rank, tp_size=tp, pp_rank=stage, pp_size=pp
            )
            missing, unexpected = gpt.load_state_dict(shard, strict=False)
            missing = [m for m in missing if not m.endswith("_extra_state")]
            if missing or unexpected:
                raise RuntimeError(f"megatron model load: missing {missing}, unexpected {unexpected}")
        module = MegatronCausalLM(gpt, hf_model.config, compute_dtype=self._compute_dtype())
        return module.to(get_device_name())

    def _build_actor(self, local_path: str) -> None:
        from megatron.core import parallel_state

        from verl.utils.checkpoint.megatron_checkpoint_manager import MegatronCheckpointManager
        from verl.workers.actor.megatron_actor import MegatronPPOActor

        actor_cfg = self._actor_view
        hf_model = self._load_hf(local_path)
        if self._is_rollout and self._rollout_generates_from_module():
            # the hf engine generates from whole weights: a copy, refilled from the slices at every sync
            self.rollout_module = self._frozen_copy(hf_model, self._compute_dtype())
        self.actor_module_fsdp = self._megatron_module(hf_model, load_weights=actor_cfg.load_weight)
        del hf_model
        self.actor_optimizer = hf.build_optimizer(self.actor_module_fsdp.parameters(), actor_cfg.optim)
        self.actor_lr_scheduler = hf.build_lr_scheduler(
            self.actor_optimizer, actor_cfg.optim, self._total_training_steps
        )
        self.actor = MegatronPPOActor(
            dp_actor_view(actor_cfg),
            self.actor_module_fsdp,
            self.actor_optimizer,
            mini_batch_size=self._batch.mini,
            micro_batch_size=self._batch.micro,
        )
        layout = {
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "pp": parallel_state.get_pipeline_model_parallel_world_size(),
            "dp": parallel_state.get_data_parallel_world_size(),
        }
        self.checkpoint_manager = MegatronCheckpointManager(
            model=self.actor_module_fsdp,
            optimizer=self.actor_optimizer,
            lr_scheduler=self.actor_lr_scheduler,
            processing_class=self.processor if self.processor is not None else self.tokenizer,
            checkpoint_config=actor_cfg.checkpoint,
            layout=layout,
            hf_state_dict=lambda: self._hf_weights(self.actor_module_fsdp),
        )

    def _build_ref(self, local_path: str) -> None:
        from verl.workers.actor.megatron_actor import MegatronPPOActor

        module = self._megatron_module(self._load_hf(local_path))
        module.requires_grad_(False)
        self.ref_module_fsdp = module
        # the reference's forward settings, as the FSDP reference reads them (padded micro-batches, see above)
        scoring = dataclasses.replace(self.config.ref, strategy="fsdp").scoring_actor_config(False)
        self.ref_policy = MegatronPPOActor(scoring, module, None)

    def _build_rollout(self, local_path: str) -> None:
        if self._rollout_generates_from_module() and self.rollout_module is None:
            raise ValueError("with the Megatron workers the rollout runs in the actor's worker (role actor_rollout*)")
        super()._build_rollout(local_path)


class AsyncActorRolloutRefWorker(ActorRolloutRefWorker, fsdp_workers.AsyncActorRolloutRefWorker):
    """The async-mode face of the Megatron worker (``rollout.mode=async``), as the FSDP one."""


def hf_value_state_dict(module: Any) -> dict[str, torch.Tensor]:
    """A Megatron value model (``MegatronCausalLM`` with a ``ValueHead``) under the names of an HF
    ``*ForTokenClassification`` model with one label (``score`` is the head), gathered from every slice and stage."""
    from megatron.core import parallel_state

    from verl.models.mcore import mcore_to_hf_state_dict
    from verl.models.mcore.weight_converter import gather_pp_state_dict, gather_tp_state_dict

    with torch.no_grad():
        merged = gather_tp_state_dict(module.gpt.state_dict(), parallel_state.get_tensor_model_parallel_group())
        merged = gather_pp_state_dict(merged, module.config)
        head = {name: merged.pop(name) for name in list(merged) if name.startswith("output_layer.linear.")}
        state = mcore_to_hf_state_dict(merged, module.config)
    state.update({name.replace("output_layer.linear.", "score.", 1): t for name, t in head.items()})
    return state


def dp_critic_view(critic_cfg: Any) -> Any:
    """The critic's settings of a ``McoreCriticConfig`` as ``DataParallelPPOCritic`` reads them (padded forward)."""
    from verl.workers.config import FSDPCriticConfig

    names = {f.name for f in dataclasses.fields(FSDPCriticConfig)} - {"strategy", "ulysses_sequence_parallel_size"}
    values = {f.name: getattr(critic_cfg, f.name) for f in dataclasses.fields(critic_cfg) if f.name in names}
    values["model"] = dataclasses.replace(critic_cfg.model, use_remove_padding=False)
    return FSDPCriticConfig(**values)


class CriticWorker(fsdp_workers.CriticWorker):
    """verl's ``megatron_workers.CriticWorker``: the FSDP critic's methods on a megatron-core value model."""

    def __init__(self, config: Any, total_training_steps: int | None = None, **kwargs: Any):
        from verl.utils.batch_sizes import critic_rank_batch_sizes
        from verl.utils.config import as_config
        from verl.workers.config import McoreCriticConfig

        fsdp_base._FSDPWorkerBase.__init__(self)
        config = as_config(config, McoreCriticConfig)
        layout = config.megatron
        model_parallel = layout.tensor_model_parallel_size * layout.pipeline_model_parallel_size
        self._batch = critic_rank_batch_sizes(config, self.world_size // model_parallel)
        self._total_training_steps = total_training_steps
        self.config = config
        self._seed = layout.seed
        fsdp_base._init_distributed(self, config.nccl_timeout)
        from verl.models.mcore.parallel import initialize_model_parallel

        initialize_model_parallel(
            tensor_model_parallel_size=layout.tensor_model_parallel_size,
            pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
            context_parallel_size=layout.context_parallel_size,
            expert_model_parallel_size=layout.expert_model_parallel_size,
            seed=layout.seed,
        )
        from megatron.core import parallel_state

        if self.world_size % (model_parallel * layout.context_parallel_size):
            raise ValueError(f"critic.megatron: tp * pp * cp must divide the {self.world_size} ranks")
        self._register_dispatch_collect_info(
            "critic", dp_rank=parallel_state.get_data_parallel_rank(), is_collect=_is_collect_rank()
        )
        self.critic = self.critic_module_fsdp = self.critic_optimizer = None
        self.critic_lr_scheduler = self.checkpoint_manager = None

    def _hf_value_weights(self) -> dict[str, torch.Tensor]:
        return hf_value_state_dict(self.critic_module_fsdp)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        """Build the value model (backbone from ``critic.model.path``, fresh value head), optimizer, scheduler."""
        from megatron.core import parallel_state

        from verl.models.mcore import hf_to_mcore_config, hf_to_mcore_state_dict
        from verl.models.mcore.model import MegatronCausalLM, build_gpt_model
        from verl.utils.checkpoint.megatron_checkpoint_manager import MegatronCheckpointManager
        from verl.utils.import_utils import import_external_libs
        from verl.utils.tokenizer import hf_tokenizer
        from verl.workers.critic.megatron_critic import MegatronPPOCritic

        cfg, model_cfg, layout = self.config, self.config.model, self.config.megatron
        import_external_libs(model_cfg.external_lib, "critic.model.external_lib")
        local_path = hf.resolve_model_path(model_cfg.path, "critic.model.path")
        tok_path = model_cfg.tokenizer_path or local_path
        if tok_path != local_path:
            tok_path = hf.resolve_model_path(tok_path, "critic.model.tokenizer_path")
        self.tokenizer = hf_tokenizer(tok_path, trust_remote_code=model_cfg.trust_remote_code)
        # the HF value model gives the backbone and the head's initialisation (the FSDP critic's, same seed)
        value_model = hf.build_value_model(
            local_path,
            dtype=torch.float32,
            override_config=model_cfg.override_config,
            trust_remote_code=model_cfg.trust_remote_code,
            seed=layout.seed,
        )
        hf_config, tp = value_model.config, layout.tensor_model_parallel_size
        overrides = dict(layout.override_transformer_config)
        if model_cfg.enable_gradient_checkpointing:
            overrides.setdefault("recompute_granularity", "full")
            overrides.setdefault("recompute_method", "uniform")
            overrides.setdefault("recompute_num_layers", 1)
        pp = layout.pipeline_model_parallel_size
        overrides.setdefault("pipeline_dtype", torch.float32)  # what stages send each other (stage_forward)
        tf_config = hf_to_mcore_config(
            hf_config, torch.float32, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, **overrides
        )
        first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(layout.seed)
            gpt = build_gpt_model(hf_config, tf_config, pre_process=first, post_process=last, value_head=True)
        hf_sd = value_model.state_dict()
        head = {k: v for k, v in hf_sd.items() if k.startswith("score.")}
        rank = parallel_state.get_tensor_model_parallel_rank()
        if cfg.load_weight:  # false: megatron's initialisation for the backbone (the head as the FSDP critic's)
            backbone = {k: v for k, v in hf_sd.items() if k not in head}
            shard = hf_to_mcore_state_dict(
                backbone,
                hf_config,
                tp_rank=rank,
                tp_size=tp,
                output_layer=False,
                pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
                pp_size=pp,
            )
        else:
            shard = {}
        if last:
            shard.update({k.replace("score.", "output_layer.linear.", 1): v for k, v in head.items()})
        missing, unexpected = gpt.load_state_dict(shard, strict=False)
        missing = [m for m in missing if not m.endswith("_extra_state")]
        if unexpected or (missing and cfg.load_weight):
            raise RuntimeError(f"megatron value model load: missing {missing}, unexpected {unexpected}")
        del value_model, hf_sd
        compute = _DTYPES[str(layout.dtype)]
        self.critic_module_fsdp = MegatronCausalLM(gpt, hf_config, compute_dtype=compute).to(get_device_name())
        self.critic_optimizer = hf.build_optimizer(self.critic_module_fsdp.parameters(), cfg.optim)
        self.critic_lr_scheduler = hf.build_lr_scheduler(self.critic_optimizer, cfg.optim, self._total_training_steps)
        self.critic = MegatronPPOCritic(
            dp_critic_view(cfg),
            self.critic_module_fsdp,
            self.critic_optimizer,
            mini_batch_size=self._batch.mini,
            micro_batch_size=self._batch.micro,
        )
        self.checkpoint_manager = MegatronCheckpointManager(
            model=self.critic_module_fsdp,
            optimizer=self.critic_optimizer,
            lr_scheduler=self.critic_lr_scheduler,
            processing_class=self.tokenizer,
            checkpoint_config=cfg.checkpoint,
            layout={"tp": tp, "pp": pp, "dp": parallel_state.get_data_parallel_world_size()},
            hf_state_dict=self._hf_value_weights,
            hf_model_class="AutoModelForTokenClassification",
        )
        self._offload = contextlib.nullcontext()  # megatron.*_offload are refused before Ray (not implemented)
        self._seed_rngs()
