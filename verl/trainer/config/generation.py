"""The typed tree of ``python -m verl.trainer.main_generation_server``: ppo_trainer's keys, ``data.output_path``
and the ``generation`` block (``generation_server.yaml`` is generated from it as an overlay of ppo_trainer.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from verl.base_config import BaseConfig
from verl.trainer.config.ppo_trainer import PPOTrainerConfig
from verl.utils.config_keys import key
from verl.utils.dataset.config import DataConfig

__all__ = ["GenerationConfig", "GenerationDataConfig", "GenerationServerConfig"]


@dataclass
class GenerationDataConfig(DataConfig):
    """``data`` of the generation server: the training node plus where the generations are written."""

    output_path: str | None = None
    """Where the input rows plus `responses` (n strings per row) and the status columns are written (required)."""


@dataclass
class GenerationConfig(BaseConfig):
    """``generation``: how the rows are fanned out to the replicas and retried."""

    _emit_target = False
    _path = "generation"

    max_concurrency: int = 32
    """Requests in flight over all replicas together (one request per prompt row asks for all n responses)."""
    max_attempts: int = 3
    """Tries per row (connection errors, timeouts, HTTP 408/429/5xx) before the row is recorded as failed."""
    retry_backoff_s: float = 1.0
    """Seconds before the second try; doubles for each further one (capped at 30 s)."""
    request_timeout_s: float = 600.0
    """Seconds one request may take."""
    seed: int | None = None
    """Per-row seed = seed + row index (null: the server's own randomness)."""
    resume: bool = True
    """Continue from <data.output_path>.progress.jsonl when it exists (finished rows are never requested again)."""
    retry_failed: bool = True
    """On resume, rows recorded as failed are requested again."""
    server_addresses: Any = None
    """Existing OpenAI-compatible servers ("host:port" or URLs) to use instead of starting replicas (no Ray)."""
    api_key: str | None = None
    """Bearer token sent to the servers (and given to the replicas it starts)."""
    run_eval: bool = False
    """Score the responses afterwards with verl.trainer.main_eval (SandboxFusion or the embedded sandbox)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_concurrency", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"generation.{name}={getattr(self, name)} must be >= 1")


@dataclass
class GenerationServerConfig(PPOTrainerConfig):
    """The whole config of ``main_generation_server`` (``generation_server.yaml``)."""

    # What generation_server.yaml sets on top of ppo_trainer.yaml, with the reason written above each key.
    ROLLOUT_OVERLAY: ClassVar[dict[str, tuple[Any, str]]] = {
        "name": ("hf", "The engine of the standalone replicas: hf (CPU or GPU), vllm, sglang"),
        "load_format": (
            "auto",
            "Standalone servers load the real weights. `dummy` (random weights, verl's hybrid-engine default) is "
            "refused here: no trainer would ever overwrite them",
        ),
    }

    data: GenerationDataConfig = key(factory=GenerationDataConfig)
    """Dataset: the prompts to answer and where the answers go."""
    generation: GenerationConfig = key(factory=GenerationConfig)
    """Fan-out, retries and resume of the generation requests."""
