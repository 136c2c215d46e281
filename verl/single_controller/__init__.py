"""Single controller: one driver process steering groups of distributed workers.

``verl.single_controller.base`` holds the backend-neutral parts (``Worker``, ``@register``, ``WorkerGroup``);
``verl.single_controller.ray`` runs worker groups as Ray actors and is the only part that imports Ray.
"""

from __future__ import annotations

from verl.single_controller import base
from verl.single_controller.base import ClassWithInitArgs, ResourcePool, Worker, WorkerGroup

__all__ = ["ClassWithInitArgs", "ResourcePool", "Worker", "WorkerGroup", "base"]
