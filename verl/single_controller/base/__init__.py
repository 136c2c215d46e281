"""Backend-neutral single-controller pieces: the worker base class, worker groups, resource pools.

Importing this package does not import Ray; only :mod:`verl.single_controller.ray` does.
"""

from __future__ import annotations

from verl.single_controller.base.worker import Worker
from verl.single_controller.base.worker_group import ClassWithInitArgs, ResourcePool, WorkerGroup

__all__ = ["ClassWithInitArgs", "ResourcePool", "Worker", "WorkerGroup"]
