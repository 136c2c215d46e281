"""FSDP workers: the Ray-side adapters that own a model shard and call the single-process compute objects.

* :class:`ActorRolloutRefWorker` (roles ``actor``, ``rollout``, ``ref``, ``actor_rollout``, ``actor_rollout_ref``):
  an FSDP-sharded policy trained by ``DataParallelPPOActor``, a reference policy, and the rollout engine, driven
  through verl's hybrid-engine lifecycle around every generation (``_rollout_session``): wake the engine's weights,
  sync the actor's (only after an update or a checkpoint load; always before the first generation, so
  ``load_format=dummy`` never samples from random weights), wake the KV cache, generate, then ``sleep`` before
  training when ``rollout.free_cache_engine``. The hf rollout on an FSDP2 actor generates from the actor's own
  gathered weights (compute dtype, freed after generation); on FSDP1 it keeps an unsharded copy in the compute dtype,
  whose storage is released between generations under ``free_cache_engine``.
* :class:`CriticWorker` and :class:`RewardModelWorker` live in ``verl.workers.fsdp_value_workers`` and are
  exported here under verl's module path; the shared start-up, offload and base class in ``verl.workers.fsdp_base``.

Each method moves data, calls the compute object and wraps the result in a ``DataProto``; model/optimizer building
lives in ``verl.utils.hf_models`` and sharding in ``verl.utils.fsdp_utils``. Data arrives already chunked per rank
(``make_nd_compute_dataproto_dispatch_fn`` on meshes ``actor``/``rollout``/``critic``/``reward``; dp rank == rank,
or one dp rank per group of consecutive ranks with Ulysses sequence parallelism).

Each worker receives its typed config subtree (``ActorRolloutRefConfig``, ``CriticConfig``, ``RewardModelConfig``;
a ``DictConfig`` is converted once) and never writes it. Batch sizes in the config are global and counted in
prompts; each worker derives its per-rank share once (``verl.utils.batch_sizes``: ``ppo_mini_batch_size *
rollout.n // world_size``, deprecated global micro batches divided by the ranks) and hands it to the compute
objects as arguments. Facts the trainer decides (the run's length, bypass-mode rollout correction) arrive as
constructor arguments too.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import fsdp_utils
from verl.utils import hf_models as hf
from verl.utils.batch_sizes import actor_rank_batch_sizes
from verl.utils.config import as_config
from verl.utils.device import get_device_name
from verl.utils.import_utils import import_external_libs
from verl.workers.config import (
    ActorRolloutRefConfig,
    FSDPEngineConfig,
)
from verl.workers.config.actor import bypass_actor_view
from verl.workers.fsdp_base import (
    _build_sharded,
    _current_lr,
    _FSDPWorkerBase,
    _log_offload_on_cpu,
    _memory_metrics,
    _Offload,
)
from verl.workers.fsdp_value_workers import CriticWorker, RewardModelWorker

logger = logging.getLogger(__name__)

__all__ = ["ActorRolloutRefWorker", "AsyncActorRolloutRefWorker", "CriticWorker", "RewardModelWorker"]

_ROLES = ("actor", "rollout", "ref", "actor_rollout", "actor_rollout_ref")

# ------------------------------------------------------------------------------------------ actor / rollout / ref


class ActorRolloutRefWorker(_FSDPWorkerBase):
    """Policy training, reference log-probs and generation for one rank.

    Args:
        config: the ``actor_rollout_ref`` subtree (``ActorRolloutRefConfig``; a DictConfig is converted).
        role: ``actor`` | ``rollout`` | ``ref`` | ``actor_rollout`` | ``actor_rollout_ref``.
        total_training_steps: the run's length for the LR schedule (decided by the trainer); None reads
            ``actor.optim.total_training_steps``.
        rollout_correction: ``algorithm.rollout_correction`` when it runs in bypass mode: the actor then trains with
            the ``bypass_mode`` policy loss on that node.
    """

    def __init__(
        self,
        config: Any,
        role: str,
        total_training_steps: int | None = None,
        rollout_correction: Any = None,
        **kwargs: Any,
    ):
        super().__init__()
        if role not in _ROLES:
            raise ValueError(f"role={role!r} is not one of {list(_ROLES)}")
        self.role = role
        self._is_actor = role in ("actor", "actor_rollout", "actor_rollout_ref")
        self._is_rollout = role in ("rollout", "actor_rollout", "actor_rollout_ref")
        self._is_ref = role in ("ref", "actor_rollout_ref")
        config = as_config(config, ActorRolloutRefConfig)
        # fail before any process-group work
        self._batch = actor_rank_batch_sizes(config, role, self._data_parallel_size(config))
        self._total_training_steps = total_training_steps
        self._actor_view = bypass_actor_view(config.actor, rollout_correction)
        self._setup(config, ("actor", "rollout"), self._model_seed(config), config.nccl_timeout)
        self.actor = self.ref_policy = self.rollout = None
        self.actor_module_fsdp = self.ref_module_fsdp = self.rollout_module = None
        self.actor_optimizer = self.actor_lr_scheduler = self.checkpoint_manager = None
        self._rollout_dirty = True  # the first generation always syncs (engines may start from dummy weights)
        self._copy_shapes: dict[str, torch.Size] | None = None  # set while the hf copy's storage is released
        self._rollout_tp, self._rollout_tp_group = 1, None

    # ---------------------------------------------------------------- what a training back-end decides

    def _data_parallel_size(self, config: ActorRolloutRefConfig) -> int:
        """Ranks that each train on their own rows: every rank, or one per Ulysses sequence-parallel group."""
        # the actor's layout, which the reference shares; a reference-only worker has its own
        node, name = (config.ref, "ref") if self.role == "ref" else (config.actor, "actor")
        self._sp = self._check_sp_divides(
            node.ulysses_sequence_parallel_size, f"actor_rollout_ref.{name}.ulysses_sequence_parallel_size"
        )
        return self.world_size // self._sp

    def _mesh_sp(self, mesh_name: str) -> int:
        return self._sp if mesh_name == "actor" else 1  # generation ("rollout") stays one piece per rank

    @staticmethod
    def _model_seed(config: ActorRolloutRefConfig) -> int:
        return config.actor.fsdp_config.seed

    def _actor_offload(self, with_optimizer: bool = True):
        """The actor's parameters (and optimizer state) on the device for the block, back after (offload keys)."""
        return _Offload(
            self.actor_module_fsdp, self.actor_optimizer if with_optimizer else None, self.config.actor.fsdp_config
        )

    @contextlib.contextmanager
    def _actor_weights(self):
        """The actor's whole weights under Hugging Face names, for the rollout (gathered for the block); under LoRA
        the base weights with the adapters merged in."""
        with self._actor_offload(with_optimizer=False), fsdp_utils.full_params(self.actor_module_fsdp) as state:
            if self._lora:
                from verl.utils.lora import merged_state_dict

                state = merged_state_dict(state, self._lora_scalings)
            yield state

    @property
    def _lora(self) -> bool:
        """LoRA adapters on the actor (``model.lora_rank > 0``); the reference is then the actor without them."""
        return self.config.model.lora_rank > 0

    @contextlib.contextmanager
    def _reference_view(self):
        """The reference policy under LoRA: the actor's module with its adapters disabled, for the block."""
        from verl.utils.lora import adapters_disabled

        with self._actor_offload(with_optimizer=False), adapters_disabled(self.actor_module_fsdp):
            yield

    # ---------------------------------------------------------------- building

    def _load_tokenizer(self, local_path: str) -> None:
        from verl.utils.tokenizer import hf_processor, hf_tokenizer

        model_cfg = self.config.model
        remote = model_cfg.trust_remote_code
        tok_path = model_cfg.tokenizer_path or local_path
        if tok_path != local_path:
            tok_path = hf.resolve_model_path(tok_path, "actor_rollout_ref.model.tokenizer_path")
        self.tokenizer = hf_tokenizer(tok_path, trust_remote_code=remote)
        self.processor = hf_processor(tok_path, trust_remote_code=remote)
        if model_cfg.custom_chat_template:
            self.tokenizer.chat_template = model_cfg.custom_chat_template
        self.generation_config = hf.load_generation_config(local_path, remote)

    def _token_id_overrides(self) -> dict[str, int]:
        ids = {
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        return {k: v for k, v in ids.items() if v is not None}

    def _load_policy(self, local_path: str, fsdp_config: FSDPEngineConfig) -> torch.nn.Module:
        module = self._load_causal_lm(local_path, fsdp_config)
        if self._sp > 1:  # Ulysses attention inside the packed forward; plain sdpa for generation
            from verl.utils.ulysses import check_heads, enable_ulysses

            check_heads(module.config, self._sp, "actor_rollout_ref.actor.ulysses_sequence_parallel_size")
            enable_ulysses(module)
        return module

    def _load_causal_lm(self, local_path: str, fsdp_config: FSDPEngineConfig) -> torch.nn.Module:
        model_cfg = self.config.model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fsdp_config.seed)
            return hf.build_causal_lm(
                local_path,
                dtype=fsdp_config.model_dtype,
                override_config=model_cfg.override_config,
                trust_remote_code=model_cfg.trust_remote_code,
                extra_config=self._token_id_overrides(),
            )

    def _build_actor(self, local_path: str) -> None:
        from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
        from verl.workers.actor.dp_actor import DataParallelPPOActor

        actor_cfg = self._actor_view
        fsdp_config = actor_cfg.fsdp_config
        _log_offload_on_cpu(fsdp_config, "actor")
        module = self._load_policy(local_path, fsdp_config)
        if self._is_rollout and self._rollout_generates_from_module() and actor_cfg.strategy != "fsdp2":
            # FSDP1 cannot run forwards on gathered weights: an unsharded copy in the compute dtype
            self.rollout_module = self._frozen_copy(module, fsdp_utils.mixed_precision_dtypes(fsdp_config)[0])
        if self.config.model.enable_gradient_checkpointing:
            hf.enable_gradient_checkpointing(module)
        if self._lora:
            from verl.utils.lora import apply_lora, lora_scalings

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(fsdp_config.seed)  # the adapters' initialisation, the same on every rank
                module = apply_lora(module, self.config.model)
            self._lora_scalings = lora_scalings(module)
        self.actor_module_fsdp = _build_sharded(module, actor_cfg.strategy, fsdp_config, self._mesh(fsdp_config))
        if self._is_rollout and self._rollout_generates_from_module() and actor_cfg.strategy == "fsdp2":
            self.rollout_module = self.actor_module_fsdp  # generates from the actor's gathered shards
        trainable = [p for p in self.actor_module_fsdp.parameters() if p.requires_grad]
        self.actor_optimizer = hf.build_optimizer(trainable, actor_cfg.optim)
        self.actor_lr_scheduler = hf.build_lr_scheduler(
            self.actor_optimizer, actor_cfg.optim, self._total_training_steps
        )
        sp_group, dp_group = self._ulysses_groups(self._sp)
        self.actor = DataParallelPPOActor(
            actor_cfg,
            self.actor_module_fsdp,
            self.actor_optimizer,
            mini_batch_size=self._batch.mini,
            micro_batch_size=self._batch.micro,
            sp_group=sp_group,
            dp_group=dp_group,
        )
        self.checkpoint_manager = FSDPCheckpointManager(
            model=self.actor_module_fsdp,
            optimizer=self.actor_optimizer,
            lr_scheduler=self.actor_lr_scheduler,
            processing_class=self.processor if self.processor is not None else self.tokenizer,
            checkpoint_config=actor_cfg.checkpoint,
        )
        if fsdp_config.param_offload:
            fsdp_utils.offload_fsdp_model_to_cpu(self.actor_module_fsdp)
        if fsdp_config.optimizer_offload:
            fsdp_utils.offload_fsdp_optimizer(self.actor_optimizer)

    def _make_rollout_tp_group(self) -> Any:
        """vLLM with rollout TP > 1: the process group of this rank's engine (consecutive ranks); None otherwise."""
        rollout_cfg = self.config.rollout
        self._rollout_tp = rollout_cfg.tensor_model_parallel_size if rollout_cfg.name == "vllm" else 1
        if self._rollout_tp == 1:
            return None
        if self.world_size % self._rollout_tp:
            raise ValueError(
                f"actor_rollout_ref.rollout.tensor_model_parallel_size={self._rollout_tp} must divide the "
                f"{self.world_size} ranks"
            )
        groups = [
            dist.new_group(list(range(start, start + self._rollout_tp)))
            for start in range(0, self.world_size, self._rollout_tp)
        ]  # every rank creates every group, in the same order
        return groups[self.rank // self._rollout_tp]

    def _generate_in_tp_group(self, prompts: DataProto) -> DataProto:
        """The ranks of one sharded engine generate their prompts together (vLLM needs identical calls on every rank
        of a group); each keeps its own rows. Aborted rows are counted once per group."""
        parts: list[Any] = [None] * self._rollout_tp
        dist.all_gather_object(parts, prompts.to("cpu"), group=self._rollout_tp_group)
        whole = DataProto.concat(parts).to(get_device_name())
        whole.meta_info = dict(prompts.meta_info)
        output = self.rollout.generate_sequences(whole)
        local = self.rank % self._rollout_tp
        start = sum(len(p) for p in parts[:local])
        mine = output[start : start + len(prompts)]
        mine.meta_info = dict(output.meta_info)
        if local != 0 and "aborted_rows" in mine.meta_info:
            mine.meta_info["aborted_rows"] = 0
        return mine

    def _rollout_generates_from_module(self) -> bool:
        """The hf and spd rollouts run the policy module itself; vLLM/SGLang hold their own weights."""
        return self.config.rollout.name in ("hf", "spd")

    @staticmethod
    def _frozen_copy(module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """An unsharded inference copy for the hf rollout (made before FSDP takes over the original), in ``dtype``."""
        rollout_module = copy.deepcopy(module).eval()
        rollout_module.requires_grad_(False)
        if dtype is not None:
            rollout_module.to(dtype)
        if get_device_name() != "cpu":
            rollout_module.to(get_device_name())
        return rollout_module

    def _build_ref(self, local_path: str) -> None:
        from verl.workers.actor.dp_actor import DataParallelPPOActor

        if self._lora and self._is_actor:
            return  # the reference is the actor with its adapters disabled (compute_ref_log_prob): no second copy
        ref_cfg = self.config.ref
        fsdp_config = ref_cfg.fsdp_config
        module = self._load_policy(local_path, fsdp_config)
        module.requires_grad_(False)
        if fsdp_utils.replicate_frozen_model(module, ref_cfg.strategy, fsdp_config):
            # A small frozen model: a whole copy per rank, no all-gather per call (see replicate_frozen_model).
            self.ref_module_fsdp = module.to(get_device_name())
        else:
            self.ref_module_fsdp = _build_sharded(module, ref_cfg.strategy, fsdp_config, self._mesh(fsdp_config))
        # The reference policy only scores: its typed view carries the forward's settings, no PPO knobs.
        scoring = ref_cfg.scoring_actor_config(self.config.model.use_remove_padding)
        sp_group, dp_group = self._ulysses_groups(self._sp)
        self.ref_policy = DataParallelPPOActor(
            scoring, self.ref_module_fsdp, None, sp_group=sp_group, dp_group=dp_group
        )

    def _build_rollout(self, local_path: str) -> None:
        from verl.workers.rollout.base import get_rollout_class

        rollout_cfg = self.config.rollout
        from_module = self._rollout_generates_from_module()
        if from_module and self.rollout_module is None:  # role "rollout" alone: a copy from disk
            fsdp_config = self.config.actor.fsdp_config
            dtype = fsdp_utils.mixed_precision_dtypes(fsdp_config)[0]
            self.rollout_module = self._frozen_copy(self._load_policy(local_path, fsdp_config), dtype)
        engine_cls = get_rollout_class(rollout_cfg.name, rollout_cfg.mode)
        if rollout_cfg.name == "hf":
            self.rollout = engine_cls(self.rollout_module, rollout_cfg)
        else:
            # vllm/sglang start from the checkpoint directory (load_format, dummy by default) and take the actor's
            # weights before the first generation; seeding per engine keeps their samples apart (rollout.seed, verl
            # v0.9, else the actor's fsdp seed). The ranks of a tensor-parallel group share one engine and one seed.
            base = self._seed if rollout_cfg.seed is None else rollout_cfg.seed
            model = self.rollout_module if from_module else local_path
            self._rollout_tp_group = self._make_rollout_tp_group()
            seed = base + self.rank // self._rollout_tp
            self.rollout = engine_cls(model, rollout_cfg, model_config=self.config.model, seed=seed)
        self._interactions = {}
        if rollout_cfg.multi_turn.enable and rollout_cfg.multi_turn.interaction_config_path:
            from verl.interactions.utils.interaction_registry import initialize_interactions_from_config

            self._interactions = initialize_interactions_from_config(rollout_cfg.multi_turn.interaction_config_path)
        self._tools = {}
        if rollout_cfg.multi_turn.tool_config_path:
            from verl.tools.utils.tool_registry import initialize_tools_from_config, tools_by_name

            self._tools = tools_by_name(initialize_tools_from_config(rollout_cfg.multi_turn.tool_config_path))
        if rollout_cfg.agent.agent_loop_config_path:
            from verl.experimental.agent_loop.agent_loop import load_agent_loop_config

            load_agent_loop_config(rollout_cfg.agent.agent_loop_config_path)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def init_model(self) -> None:
        """Load the tokenizer and build the models this role needs."""
        import_external_libs(self.config.model.external_lib, "actor_rollout_ref.model.external_lib")
        local_path = hf.resolve_model_path(self.config.model.path, "actor_rollout_ref.model.path")
        self._load_tokenizer(local_path)
        if self._is_actor:
            self._build_actor(local_path)
        if self._is_ref:
            self._build_ref(local_path)
        if self._is_rollout:
            self._build_rollout(local_path)
        self._seed_rngs()

    # ---------------------------------------------------------------- compute

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def update_actor(self, data: DataProto) -> DataProto:
        """One PPO update on this rank's rows; returns ``meta_info["metrics"]`` (``actor/*``, ``perf/*``)."""
        if self.actor is None:
            raise RuntimeError(f"update_actor needs an actor role; this worker has role {self.role!r}")
        data = data.to(get_device_name())
        data.meta_info.setdefault("temperature", float(self.config.rollout.temperature))
        with self._actor_offload():
            start = time.perf_counter()
            metrics = dict(self.actor.update_policy(data))
            metrics["perf/update_actor_s"] = time.perf_counter() - start
            metrics["actor/lr"] = _current_lr(self.actor_lr_scheduler)
            self.actor_lr_scheduler.step()
        metrics.update(_memory_metrics())
        self._rollout_dirty = True
        if self.actor.on_policy_log_probs is not None:  # the trainer skipped compute_log_prob (on-policy)
            return DataProto.from_dict(tensors=self.actor.on_policy_log_probs, meta_info={"metrics": metrics}).to("cpu")
        return DataProto(meta_info={"metrics": metrics})

    def _log_prob_meta(self, data: DataProto, node: Any, micro_batch_size: int | None) -> None:
        data.meta_info["micro_batch_size"] = micro_batch_size
        data.meta_info["max_token_len"] = node.log_prob_max_token_len_per_gpu * self._sp  # a Ulysses group's budget
        data.meta_info["use_dynamic_bsz"] = node.log_prob_use_dynamic_bsz
        data.meta_info["temperature"] = float(self.config.rollout.temperature)

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: DataProto) -> DataProto:
        """``old_log_probs`` and ``entropys`` ``(bs, R)`` of the responses under the current policy."""
        if self.actor is None:
            raise RuntimeError(f"compute_log_prob needs an actor role; this worker has role {self.role!r}")
        data = data.to(get_device_name())
        if data.meta_info.get("is_lora"):  # verl's ref_in_actor: the reference's log-probs, adapters disabled
            return self._lora_reference_log_prob(data)
        self._log_prob_meta(data, self.config.rollout, self._batch.log_prob_micro)
        with self._actor_offload(with_optimizer=False):
            out = self.actor.compute_log_prob(data, calculate_entropy=True)
        tensors = {"old_log_probs": out["log_probs"], "entropys": out["entropys"]}
        if out.get("sum_pi_squared") is not None:  # actor.calculate_sum_pi_squared (optimal-token baselines)
            tensors["sum_pi_squared"] = out["sum_pi_squared"]
        return DataProto.from_dict(tensors=tensors, meta_info={"temperature": data.meta_info["temperature"]}).to("cpu")

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_ref_log_prob(self, data: DataProto) -> DataProto:
        """``ref_log_prob`` ``(bs, R)`` under the frozen reference policy."""
        if self._lora and self.actor is not None:
            return self._lora_reference_log_prob(data.to(get_device_name()))
        if self.ref_policy is None:
            raise RuntimeError(f"compute_ref_log_prob needs a ref role; this worker has role {self.role!r}")
        data = data.to(get_device_name())
        self._log_prob_meta(data, self.config.ref, self._batch.ref_micro)
        with _Offload(self.ref_module_fsdp, None, self.config.ref.fsdp_config):
            out = self.ref_policy.compute_log_prob(data, calculate_entropy=False)
        return DataProto.from_dict(tensors={"ref_log_prob": out["log_probs"]}).to("cpu")

    def _lora_reference_log_prob(self, data: DataProto) -> DataProto:
        """``ref_log_prob``: the responses' log-probs under the base model (the actor with its adapters disabled),
        with the reference's micro-batch settings."""
        self._log_prob_meta(data, self.config.ref, self._batch.ref_micro or self._batch.log_prob_micro)
        with self._reference_view():
            out = self.actor.compute_log_prob(data, calculate_entropy=False)
        return DataProto.from_dict(tensors={"ref_log_prob": out["log_probs"]}).to("cpu")

    # ---------------------------------------------------------------- the hybrid-engine lifecycle

    @contextlib.contextmanager
    def _rollout_session(self):
        """verl's hybrid-engine order around one generation: wake the weights, sync them if the actor changed, wake
        the KV cache, generate (the block), then release engine memory before training (``free_cache_engine``)."""
        from verl.workers.rollout.base import EngineRollout

        engine_rollout = isinstance(self.rollout, EngineRollout)
        generates_from_actor = self.rollout_module is not None and self.rollout_module is self.actor_module_fsdp
        with contextlib.ExitStack() as stack:
            if generates_from_actor:  # hf/spd on FSDP2: the actor's own weights, gathered for the block
                fsdp_config = self.config.actor.fsdp_config
                stack.enter_context(self._actor_offload(with_optimizer=False))
                stack.enter_context(
                    fsdp_utils.generation_weights(self.actor_module_fsdp, bool(fsdp_config.reshard_after_forward))
                )
                self._rollout_dirty = False
            else:
                if engine_rollout:
                    self.rollout.wake_up(["weights"])
                self._sync_rollout_weights()
                if engine_rollout:
                    self.rollout.wake_up(["kv_cache"])
            try:
                yield
            finally:
                if self.config.rollout.free_cache_engine:
                    self._release_rollout_memory(engine_rollout)

    def _release_rollout_memory(self, engine_rollout: bool) -> None:
        if self.rollout_module is not None and self.rollout_module is not self.actor_module_fsdp:
            if self.actor_module_fsdp is not None:  # the copy is refilled at the next sync
                self._copy_shapes = {name: p.shape for name, p in self.rollout_module.named_parameters()}
                for p in self.rollout_module.parameters():
                    p.data = p.data.new_empty(0)
                self._rollout_dirty = True
        elif engine_rollout:
            self.rollout.sleep()

    def _sync_rollout_weights(self) -> None:
        """Bring the rollout's weights up to the actor's if they changed (or were released)."""
        if not self._rollout_dirty or self.actor_module_fsdp is None:
            return
        with self._actor_weights() as state:
            if self.rollout_module is None:
                # Engines with their own copy of the weights (vllm, sglang): stream the actor's, bucketed.
                self.rollout.load_weights(iter(state.items()))
                self._rollout_dirty = False
                return
            if self._copy_shapes is not None:  # storage released after the last generation: allocate it again
                device = next(iter(state.values())).device
                for name, p in self.rollout_module.named_parameters():
                    p.data = torch.empty(self._copy_shapes[name], dtype=p.dtype, device=device)
                self._copy_shapes = None
            result = self.rollout_module.load_state_dict(state, strict=False)
        tied = {k for k, _ in self.rollout_module.named_parameters(remove_duplicate=False)} - {
            k for k, _ in self.rollout_module.named_parameters()
        }
        missing = [k for k in result.missing_keys if k not in tied]
        if result.unexpected_keys or missing:
            raise RuntimeError(f"rollout weight sync mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        self._rollout_dirty = False

    def _special_token_meta(self) -> dict[str, Any]:
        gen = self.generation_config
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        pad = getattr(gen, "pad_token_id", None) if gen is not None else None
        return {
            "eos_token_id": eos if eos is not None else self.tokenizer.eos_token_id,
            "pad_token_id": pad if pad is not None else self.tokenizer.pad_token_id,
        }

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="rollout"))
    def generate_sequences(self, prompts: DataProto) -> DataProto:
        """Generate responses for this rank's prompts with fresh policy weights (hf engine)."""
        if self.rollout is None:
            raise RuntimeError(f"generate_sequences needs a rollout role; this worker has role {self.role!r}")
        prompts = prompts.to(get_device_name())
        prompts.meta_info.update(self._special_token_meta())
        start = time.perf_counter()
        with self._rollout_session():
            if self._uses_agent_loop(prompts):
                output = self._generate_agent_loop(prompts)
            elif self.config.rollout.multi_turn.enable:
                output = self._generate_multiturn(prompts)
            elif self._rollout_tp_group is not None:
                output = self._generate_in_tp_group(prompts)
            else:
                output = self.rollout.generate_sequences(prompts)
        output.meta_info["timing"] = _gather_timing(time.perf_counter() - start)
        for key in ("aborted_rows", "agent_engine_calls"):  # per-rank counts: summed so every rank's meta agrees
            if key in output.meta_info:
                output.meta_info[key] = _sum_over_ranks(int(output.meta_info[key]))
        return output.to("cpu")

    def _turn_capture_spec(self, prompts: DataProto) -> Any:
        """The capture of every assistant turn: the rollout's, else log-probs when the batch wants them."""
        from verl.workers.rollout.logit_capture import CaptureSpec

        rollout_cfg = self.rollout.config  # typed RolloutConfig
        spec = self.rollout.capture_spec
        want_log_probs = bool(prompts.meta_info.get("calculate_log_probs", rollout_cfg.calculate_log_probs))
        if spec is None and want_log_probs:
            spec = CaptureSpec(mode="logprob", raw=rollout_cfg.logprobs_mode == "raw_logprobs")
        return spec

    def _generate_multiturn(self, prompts: DataProto) -> DataProto:
        """Multi-turn rollouts: the engine generates each assistant turn, the interactions answer in between."""
        from verl.workers.rollout.multiturn import generate_multiturn

        spec = self._turn_capture_spec(prompts)
        return generate_multiturn(
            prompts, self.rollout.engine, self.tokenizer, self.rollout.config, self._interactions, spec
        )

    def _default_agent(self) -> str:
        """``rollout.agent.default_agent_loop``; with tools configured, ``single_turn_agent`` means ``tool_agent``
        (a row can still ask for ``single_turn_agent`` in its ``agent_name``)."""
        name = self.config.rollout.agent.default_agent_loop
        return "tool_agent" if self._tools and name == "single_turn_agent" else name

    def _uses_agent_loop(self, prompts: DataProto) -> bool:
        if self._default_agent() != "single_turn_agent":
            return True
        names = prompts.non_tensor_batch.get("agent_name")
        return names is not None and any(n and n != "single_turn_agent" for n in names)

    def _generate_agent_loop(self, prompts: DataProto) -> DataProto:
        """Agent-loop rollouts (``verl.experimental.agent_loop``): one coroutine per row, by its ``agent_name``."""
        from verl.experimental.agent_loop.agent_loop import run_agent_loops
        from verl.workers.rollout.multiturn import meta_sampling, turn_sampling

        rollout_cfg = self.rollout.config
        spec = self._turn_capture_spec(prompts)
        sampling = {key: getattr(rollout_cfg, key) for key in ("do_sample", "temperature", "top_p", "top_k")}
        sampling.update(meta_sampling(prompts.meta_info, rollout_cfg))
        params = turn_sampling(sampling, rollout_cfg.response_length, self.rollout.engine, spec)
        return run_agent_loops(
            prompts,
            self.rollout.engine,
            self.tokenizer,
            self.config,
            params,
            self._default_agent(),
            spec,
            tools=self._tools,
        )

    # ---------------------------------------------------------------- checkpoints

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(
        self, local_path: str, hdfs_path: str | None = None, global_step: int = 0, max_ckpt_to_keep: int | None = None
    ) -> None:
        """Save the actor's shards, optimizer, scheduler and RNG (see ``FSDPCheckpointManager``)."""
        if not self._has_checkpoint_manager(self.checkpoint_manager, f"save_checkpoint(role={self.role})"):
            return
        with self._actor_offload():
            self.checkpoint_manager.save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path: str, hdfs_path: str | None = None, del_local_after_load: bool = False):
        """Restore the actor from ``local_path``; the rollout copy is refreshed before the next generation."""
        if not self._has_checkpoint_manager(self.checkpoint_manager, f"load_checkpoint(role={self.role})"):
            return
        with self._actor_offload():
            self.checkpoint_manager.load_checkpoint(local_path, hdfs_path, del_local_after_load)
        self._rollout_dirty = True


def _sum_over_ranks(value: int) -> int:
    total = torch.tensor([value], dtype=torch.int64)
    if dist.is_initialized():
        dist.all_reduce(total)
    return int(total.item())


def _gather_timing(elapsed: float) -> dict[str, float]:
    """Generation timing identical on every rank (max/min over ranks), so collected meta_info agrees."""
    values = torch.tensor([elapsed, -elapsed], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    t_max, t_min = float(values[0]), -float(values[1])
    return {
        "generate_sequences": t_max,
        "generation_timing/max": t_max,
        "generation_timing/min": t_min,
        "generation_timing/topk_ratio": t_min / t_max if t_max > 0 else 1.0,
    }


class AsyncActorRolloutRefWorker(ActorRolloutRefWorker):
    """Same behaviour as :class:`ActorRolloutRefWorker`; the async server path uses ``update_weights``."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def update_weights(self, global_steps: int | None = None) -> None:
        """Push the current actor weights into the rollout now (instead of at the next generation)."""
        self._rollout_dirty = True
        if self.rollout_module is not None and self.rollout_module is self.actor_module_fsdp:
            return  # generates from the actor's own weights: nothing to push
        self._sync_rollout_weights()
