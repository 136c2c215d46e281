"""Checkpoints of the Megatron workers: each rank's tensor-parallel slice, its optimizer and RNG, and an HF export.

Layout under ``global_step_N/actor/`` (as the FSDP manager's, so the trainer's tracker and rotation work alike):

* ``model_world_size_W_rank_R.pt``, ``optim_world_size_W_rank_R.pt``, ``extra_state_world_size_W_rank_R.pt``: rank
  R's parameters (its slice), optimizer state, LR scheduler and RNG;
* ``megatron_config.json``: the world size and layout the slices belong to (a resume with another layout is refused);
* ``huggingface/``: the config and tokenizer, and with ``hf_model`` in ``save_contents`` the whole model as
  safetensors, gathered from the slices and converted (``from_pretrained`` loads it).

This module imports no megatron code: the worker hands it the functions that gather and convert.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from verl.utils.checkpoint.fsdp_checkpoint_manager import (
    FSDPCheckpointManager,
    _atomic_write_text,
    _barrier,
    _mirror,
    _rank_world,
    atomic_torch_save,
)

__all__ = ["MegatronCheckpointManager"]

logger = logging.getLogger(__name__)


class MegatronCheckpointManager(FSDPCheckpointManager):
    """Save and restore a tensor-parallel model trained by the Megatron workers (the FSDP manager's file names,
    rotation and missing-file messages; its own save and load of each rank's slice).

    Args:
        model: this rank's module (``MegatronCausalLM``); its ``config`` is the HF config.
        optimizer, lr_scheduler, processing_class, checkpoint_config: as for ``FSDPCheckpointManager``.
        layout: the parallel sizes (``{"tp": 2, "pp": 1, "dp": 1}``), recorded and checked at load.
        hf_state_dict: gathers the whole model under HF names (every rank calls it; rank 0 gets the tensors).
        hf_model_class: the transformers auto class the export is saved as (``AutoModelForCausalLM`` for a policy,
            ``AutoModelForTokenClassification`` for a value model).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        processing_class: Any = None,
        checkpoint_config: Any = None,
        layout: dict[str, int] | None = None,
        hf_state_dict: Callable[[], dict[str, torch.Tensor]] | None = None,
        hf_model_class: str = "AutoModelForCausalLM",
        **kwargs: Any,
    ):
        super().__init__(
            model,
            optimizer,
            lr_scheduler=lr_scheduler,
            processing_class=processing_class,
            checkpoint_config=checkpoint_config,
        )
        self.layout = dict(layout or {})
        self.hf_state_dict = hf_state_dict
        self.hf_model_class = hf_model_class

    # ------------------------------------------------------------------ save
    def save_checkpoint(
        self, local_path: str, hdfs_path: str | None = None, global_step: int = 0, max_ckpt_to_keep: int | None = None
    ) -> None:
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
            state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items() if torch.is_tensor(v)}
            atomic_torch_save({"state": state}, self._file(local_path, "model", rank, world))
        if self.should_save_optimizer and self.optimizer is not None:
            atomic_torch_save(self.optimizer.state_dict(), self._file(local_path, "optim", rank, world))
        if self.should_save_extra:
            extra = {
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
                "rng": self.get_rng_state(),
            }
            atomic_torch_save(extra, self._file(local_path, "extra_state", rank, world))
        if rank == 0:
            meta = {"world_size": world, **self.layout}
            _atomic_write_text(json.dumps(meta, indent=2), os.path.join(local_path, "megatron_config.json"))
            self._save_hf_files(local_path)
        if self.should_save_hf_model:
            self._save_hf_weights(local_path, rank)
        _barrier()
        if rank == 0:
            self.register_checkpoint(local_path, max_ckpt_to_keep)
            if hdfs_path:
                _mirror(local_path, hdfs_path)
        _barrier()

    def _save_hf_files(self, local_path: str) -> None:
        hf_dir = os.path.join(local_path, "huggingface")
        os.makedirs(hf_dir, exist_ok=True)
        config = getattr(self.model, "config", None)
        if config is not None:
            config.save_pretrained(hf_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(hf_dir)

    def _save_hf_weights(self, local_path: str, rank: int) -> None:
        if self.hf_state_dict is None:
            raise ValueError("save_contents has hf_model, but this manager was given no way to gather HF weights")
        state = self.hf_state_dict()  # every rank takes part in the gather
        if rank != 0:
            return
        import transformers

        config = self.model.config
        with torch.device("meta"):
            export = getattr(transformers, self.hf_model_class).from_config(config)
        hf_dir = os.path.join(local_path, "huggingface")
        tmp = f"{hf_dir}.weights.tmp.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        export.save_pretrained(tmp, state_dict={k: v.detach().cpu().contiguous() for k, v in state.items()})
        for name in os.listdir(tmp):
            if name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
                os.replace(os.path.join(tmp, name), os.path.join(hf_dir, name))
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved Hugging Face weights to %s", hf_dir)

    # ------------------------------------------------------------------ load
    def load_checkpoint(self, local_path: str | None, hdfs_path: str | None = None, del_local_after_load: bool = False):
        if local_path is None:
            if hdfs_path is None:
                return
            local_path = hdfs_path
        local_path = os.path.abspath(os.path.expanduser(local_path))
        rank, world = _rank_world()
        meta_path = os.path.join(local_path, "megatron_config.json")
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            want = {"world_size": world, **self.layout}
            if {k: meta.get(k) for k in want} != want:
                raise ValueError(f"checkpoint {local_path} was saved with layout {meta}; this job runs {want}")
        if self.should_load_model:
            blob = torch.load(self._require(local_path, "model", rank, world), weights_only=False)
            missing, unexpected = self.model.load_state_dict(blob["state"], strict=False)
            missing = [m for m in missing if not m.endswith("_extra_state")]
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {local_path}: missing {missing}, unexpected {unexpected}")
        if self.should_load_optimizer and self.optimizer is not None:
            self.optimizer.load_state_dict(
                torch.load(self._require(local_path, "optim", rank, world), weights_only=False)
            )
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
