"""Save and resume FSDP1/FSDP2 training state, one file per rank, in verl's directory layout.

A checkpoint directory (e.g. ``global_step_10/actor``) holds::

    model_world_size_{W}_rank_{R}.pt        this rank's parameter shards
    optim_world_size_{W}_rank_{R}.pt        this rank's optimizer state shards
    extra_state_world_size_{W}_rank_{R}.pt  lr scheduler state + RNG states
    fsdp_config.json                        {"FSDP_version": 1|2, "world_size": W}
    huggingface/                            config, generation config, tokenizer; full safetensors weights
                                            when ``hf_model`` is in ``checkpoint.save_contents``

Shard files store plain local tensors (``{"state": {fqn: tensor}, "layout": {fqn: {global_shape, global_offset}}}``)
rather than pickled DTensors/ShardedTensors, so loading never depends on unpickling a device mesh; on load they
are copied into the shards of the live model, which must use the same world size. The layout lets an offline tool
stitch the shards back together. Every file is written under a temporary name and renamed, so a kill mid-save
never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager
from verl.utils.fsdp_utils import get_full_state_dict, is_fsdp1_module, local_shard, shard_layout, unwrap_module

logger = logging.getLogger(__name__)

__all__ = ["FSDPCheckpointManager", "atomic_torch_save"]

_FORMAT = "verl-clean/local-shards-v1"


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` via a temporary file + rename (atomic on POSIX filesystems)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sharded_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=False)


class FSDPCheckpointManager(BaseCheckpointManager):
    """Checkpoint manager for a model wrapped with FSDP1 or FSDP2 (plain modules work too, for tests).

    Args:
        model: the wrapped model.
        optimizer: its optimizer (None for inference-only models).
        lr_scheduler: its LR scheduler, saved in the extra state.
        processing_class: tokenizer or processor, saved under ``huggingface/``.
        checkpoint_config: ``*.checkpoint`` node (``save_contents``/``load_contents`` subsets of
            ``model, optimizer, extra, hf_model``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        processing_class: Any = None,
        checkpoint_config: Any = None,
        **kwargs: Any,
    ):
        super().__init__(
            model,
            optimizer,
            lr_scheduler=lr_scheduler,
            processing_class=processing_class,
            checkpoint_config=checkpoint_config,
        )

    # ------------------------------------------------------------------ paths

    @staticmethod
    def _file(local_path: str, kind: str, rank: int, world: int) -> str:
        return os.path.join(local_path, f"{kind}_world_size_{world}_rank_{rank}.pt")

    # ------------------------------------------------------------------ save

    def save_checkpoint(
        self, local_path: str, hdfs_path: str | None = None, global_step: int = 0, max_ckpt_to_keep: int | None = None
    ) -> None:
        """Write this rank's shards (and, on rank 0, the shared files) under ``local_path``.

        Args:
            local_path: checkpoint directory (created if missing).
            hdfs_path: optional second local directory to mirror the checkpoint into (remote URLs are refused).
            global_step: recorded for rotation bookkeeping.
            max_ckpt_to_keep: keep at most this many checkpoints saved by this manager (oldest removed first).
        """
        if local_path is None:
            raise ValueError("save_checkpoint needs a local_path")
        rank, world = _rank_world()
        self.previous_global_step = global_step
        if rank == 0:
            self.ensure_checkpoint_capacity(max_ckpt_to_keep)
        local_path = os.path.abspath(os.path.expanduser(local_path))
        os.makedirs(local_path, exist_ok=True)
        _barrier()
        if self.should_save_model:
            atomic_torch_save(self._model_shards(), self._file(local_path, "model", rank, world))
        if self.should_save_optimizer and self.optimizer is not None:
            atomic_torch_save(self._optimizer_shards(), self._file(local_path, "optim", rank, world))
        if self.should_save_extra:
            extra = {
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "rng": self.get_rng_state(),
            }
            atomic_torch_save(extra, self._file(local_path, "extra_state", rank, world))
        if rank == 0:
            self._save_shared_files(local_path, world)
        full_state = None
        if is_lora_model(self.model):  # the adapters on their own, loadable with PeftModel.from_pretrained
            from verl.utils.lora import save_adapter

            full_state = get_full_state_dict(self.model, cpu_offload=True)
            if rank == 0:
                save_adapter(self.model, full_state, os.path.join(local_path, "lora_adapter"))
        if self.should_save_hf_model:
            self._save_hf_weights(local_path, full_state)
        _barrier()
        if rank == 0:
            self.register_checkpoint(local_path, max_ckpt_to_keep)
            if hdfs_path:
                _mirror(local_path, hdfs_path)
        _barrier()

    def _model_shards(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.model, options=_sharded_options())
        return {
            "format": _FORMAT,
            "state": {k: local_shard(v).detach().cpu().clone() for k, v in state.items()},
            "layout": {k: shard_layout(v) for k, v in state.items()},
        }

    def _optimizer_shards(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        osd = get_optimizer_state_dict(self.model, self.optimizer, options=_sharded_options())
        state = {
            fqn: {k: local_shard(v).detach().cpu().clone() if torch.is_tensor(v) else v for k, v in entry.items()}
            for fqn, entry in osd["state"].items()
        }
        return {"format": _FORMAT, "state": state, "param_groups": osd["param_groups"]}

    def _save_shared_files(self, local_path: str, world: int) -> None:
        meta = {"FSDP_version": 1 if is_fsdp1_module(self.model) else 2, "world_size": world}
        _atomic_write_text(json.dumps(meta, indent=2), os.path.join(local_path, "fsdp_config.json"))
        hf_dir = os.path.join(local_path, "huggingface")
        tmp = f"{hf_dir}.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        inner = _hf_module(self.model)
        if getattr(inner, "config", None) is not None:
            inner.config.save_pretrained(tmp)
        generation_config = getattr(inner, "generation_config", None)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(tmp)
        if os.path.isdir(hf_dir):
            # Keep weights written by an earlier save of the same step; replace everything else.
            for name in os.listdir(hf_dir):
                if not os.path.exists(os.path.join(tmp, name)):
                    shutil.move(os.path.join(hf_dir, name), os.path.join(tmp, name))
            shutil.rmtree(hf_dir)
        os.replace(tmp, hf_dir)

    def _save_hf_weights(self, local_path: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Gather a full state dict to rank 0 and write safetensors loadable with ``from_pretrained`` (under LoRA the
        base model with the adapters merged in)."""
        if state is None:
            state = get_full_state_dict(self.model, cpu_offload=True)
        rank, _ = _rank_world()
        if rank != 0:
            return
        inner = _hf_module(self.model)
        if is_lora_model(self.model):
            from verl.utils.lora import lora_scalings, merged_state_dict

            state = merged_state_dict(state, lora_scalings(self.model))
        cls = _hf_class(inner)
        with torch.device("meta"):
            export = cls._from_config(inner.config)
        export.load_state_dict(state, strict=False, assign=True)
        export.tie_weights()
        hf_dir = os.path.join(local_path, "huggingface")
        tmp = f"{hf_dir}.weights.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        os.makedirs(hf_dir, exist_ok=True)
        for name in os.listdir(tmp):
            if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                os.replace(os.path.join(tmp, name), os.path.join(hf_dir, name))
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved Hugging Face weights to %s", hf_dir)

    # ------------------------------------------------------------------ load

    def load_checkpoint(self, local_path: str | None, hdfs_path: str | None = None, del_local_after_load: bool = False):
        """Restore model shards, optimizer state, LR scheduler and RNG from ``local_path``.

        Raises:
            FileNotFoundError: a requested file is missing, e.g. the checkpoint was written with another world size.
        """
        if local_path is None:
            if hdfs_path is None:
                return
            local_path = hdfs_path
        local_path = os.path.abspath(os.path.expanduser(local_path))
        rank, world = _rank_world()
        self._check_world_size(local_path, world)
        if self.should_load_model:
            self._load_model_shards(torch.load(self._require(local_path, "model", rank, world), weights_only=False))
        if self.should_load_optimizer and self.optimizer is not None:
            blob = torch.load(self._require(local_path, "optim", rank, world), weights_only=False)
            self._load_optimizer_shards(blob)
        if self.should_load_extra:
            extra = torch.load(self._require(local_path, "extra_state", rank, world), weights_only=False)
            if self.lr_scheduler is not None and extra.get("lr_scheduler") is not None:
                self.lr_scheduler.load_state_dict(extra["lr_scheduler"])
            if extra.get("rng") is not None:
                self.load_rng_state(extra["rng"])
        _barrier()
        if del_local_after_load and rank == 0:
            shutil.rmtree(local_path, ignore_errors=True)
        _barrier()

    def _require(self, local_path: str, kind: str, rank: int, world: int) -> str:
        path = self._file(local_path, kind, rank, world)
        if not os.path.exists(path):
            found = sorted(f for f in os.listdir(local_path) if f.startswith(kind)) if os.path.isdir(local_path) else []
            raise FileNotFoundError(
                f"checkpoint file {path} not found (this job has world size {world}); files present: {found or 'none'}"
            )
        return path

    @staticmethod
    def _check_world_size(local_path: str, world: int) -> None:
        meta_path = os.path.join(local_path, "fsdp_config.json")
        if not os.path.exists(meta_path):
            return
        with open(meta_path) as f:
            saved = json.load(f).get("world_size")
        if saved is not None and int(saved) != world:
            raise ValueError(
                f"checkpoint {local_path} was saved with world size {saved} but this job runs {world} ranks; "
                "sharded FSDP checkpoints can only be resumed with the same number of ranks "
                "(export huggingface/ weights with checkpoint.save_contents including hf_model to change it)"
            )

    def _load_model_shards(self, blob: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

        saved = _unwrap_blob(blob)
        current = get_model_state_dict(self.model, options=_sharded_options())
        missing = sorted(set(current) - set(saved))
        if missing:
            raise KeyError(f"checkpoint lacks model keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        with torch.no_grad():
            for key, value in current.items():
                _copy_into(local_shard(value), saved[key], key)
        set_model_state_dict(self.model, current, options=_sharded_options())

    def _load_optimizer_shards(self, blob: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        # Materialises empty state on a fresh optimizer, giving the sharded layout to copy into.
        current = get_optimizer_state_dict(self.model, self.optimizer, options=_sharded_options())
        saved_state = blob["state"]
        with torch.no_grad():
            for fqn, entry in current["state"].items():
                if fqn not in saved_state:
                    raise KeyError(f"checkpoint lacks optimizer state for {fqn}")
                for key, value in entry.items():
                    if torch.is_tensor(value):
                        _copy_into(local_shard(value), saved_state[fqn][key], f"{fqn}.{key}")
                    else:
                        entry[key] = saved_state[fqn][key]
        current["param_groups"] = blob["param_groups"]
        set_optimizer_state_dict(self.model, self.optimizer, current, options=_sharded_options())


def _unwrap_blob(blob: dict[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(blob, dict) and blob.get("format") == _FORMAT:
        return blob["state"]
    # A plain state dict (e.g. written by another tool for world size 1) is accepted as is.
    return {k: local_shard(v) for k, v in blob.items()}


def _copy_into(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise ValueError(
            f"shard shape mismatch for {name}: checkpoint {tuple(source.shape)} vs model {tuple(target.shape)}"
        )
    target.copy_(source)


def is_lora_model(model: nn.Module) -> bool:
    """A peft (LoRA) model inside the wrappers; False when peft is not even imported (no LoRA then)."""
    import sys

    if "peft" not in sys.modules:
        return False
    from verl.utils.lora import is_lora_model as check

    return check(model)


def _hf_module(model: nn.Module) -> nn.Module:
    """The Hugging Face ``PreTrainedModel`` inside FSDP1 wrappers, a peft model or our reward-model wrapper."""
    inner = unwrap_module(model)
    if is_lora_model(model):  # LoRA: the base model (the export merges the adapters into it)
        return inner.get_base_model()
    if not hasattr(inner, "save_pretrained") and isinstance(getattr(inner, "model", None), nn.Module):
        inner = inner.model
    return inner


def _hf_class(module: nn.Module) -> type:
    """The original HF class of a module (FSDP2 swaps in a subclass named ``FSDP<cls>``)."""
    from torch.distributed.fsdp import FSDPModule

    for cls in type(module).__mro__:
        if cls is not FSDPModule and not issubclass(cls, FSDPModule) and hasattr(cls, "_from_config"):
            return cls
    raise TypeError(f"{type(module).__name__} is not a Hugging Face PreTrainedModel; cannot export hf weights")


def _mirror(local_path: str, target: str) -> None:
    from verl.utils.fs import local_path as to_local

    dest = to_local(target)
    shutil.copytree(local_path, dest, dirs_exist_ok=True)
