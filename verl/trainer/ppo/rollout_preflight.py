"""Rollout checks that need more than the config (the engine's package, the interaction YAML, the data, the model's
vocabulary), run by ``main_ppo`` after the datasets are built and before Ray starts.

Each one turns what would otherwise fail minutes later, inside a worker and after the first generation, into a
``ValueError`` that names the key or file and says what to do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_rollout_setup"]


def check_rollout_setup(config: Any, train_dataset: Any = None, vocab_size: int | None = None) -> None:
    """Engine importable, interactions loadable and named by the data, full-logit capture within its budget.

    Args:
        config: the whole trainer config (the typed tree).
        train_dataset: the training dataset (its rows' ``interaction_kwargs.name`` are checked), or None.
        vocab_size: the policy's vocabulary size (for the full-logit budget), or None to skip that check.

    Raises:
        ValueError: naming the key, file or data row at fault.
    """
    rollout = config.actor_rollout_ref.rollout
    _check_engine(rollout)
    multi_turn = rollout.multi_turn
    if multi_turn.enable and not multi_turn.tool_config_path:
        if not config.data.return_raw_chat:
            raise ValueError(
                "actor_rollout_ref.rollout.multi_turn.enable=True needs each sample's chat messages for the "
                "interactions: set data.return_raw_chat=True"
            )
        _check_interactions(multi_turn, train_dataset)
    _check_agent_loop(config, train_dataset)
    capture = rollout.logit_capture
    if capture.enable and capture.mode == "full" and str(rollout.name).startswith("sglang"):
        raise ValueError(
            f"actor_rollout_ref.rollout.logit_capture.mode=full with rollout.name={rollout.name}: SGLang returns "
            "log-probabilities, never logits; use logit_capture.mode=topk with k=<vocabulary size> for the whole "
            "log-distribution, or rollout.name=vllm / hf for logits"
        )
    if capture.enable and vocab_size is not None:
        _check_capture_budget(config, capture, vocab_size)


def _check_engine(rollout: Any) -> None:
    from verl.workers.rollout.base import get_rollout_class

    name, mode = rollout.name, rollout.mode
    try:
        get_rollout_class(name, mode)
    except ImportError as exc:
        raise ValueError(f"actor_rollout_ref.rollout.name={name} (mode {mode}) cannot be used here: {exc}") from exc


def _check_interactions(multi_turn: Any, train_dataset: Any) -> None:
    from pathlib import Path

    from verl.interactions.utils.interaction_registry import initialize_interactions_from_config

    path = multi_turn.interaction_config_path
    key = "actor_rollout_ref.rollout.multi_turn.interaction_config_path"
    if not path:
        raise ValueError(f"actor_rollout_ref.rollout.multi_turn.enable=True needs {key} (a YAML of interactions)")
    if not Path(path).is_file():
        raise ValueError(f"{key}={path} does not exist")
    names = set(initialize_interactions_from_config(path))
    rows = getattr(train_dataset, "rows", None) or []
    for index, row in enumerate(rows):
        kwargs = ((row.get("extra_info") or {}).get("interaction_kwargs")) or {}
        name = kwargs.get("name")
        if name is None and len(names) == 1:
            continue  # a single interaction serves every sample
        if name not in names:
            source = getattr(train_dataset, "row_files", [None] * len(rows))[index]
            raise ValueError(
                f"training row {index} of {source} asks for interaction {name!r} (extra_info.interaction_kwargs.name), "
                f"but {path} defines {sorted(names)}"
            )


def _check_capture_budget(config: Any, capture: Any, vocab_size: int) -> None:
    from verl.workers.rollout.logit_capture import CaptureSpec, check_capture_budget

    spec = CaptureSpec.from_config(capture)
    if spec is None:
        return
    trainer = config.trainer
    ranks = max(trainer.n_gpus_per_node * trainer.nnodes, 1)
    rows = config.data.train_batch_size * config.actor_rollout_ref.rollout.n
    per_rank = -(-rows // ranks)  # each rank generates its share of the batch at once
    check_capture_budget(spec, per_rank, config.actor_rollout_ref.rollout.response_length, vocab_size)


def _check_agent_loop(config: Any, train_dataset: Any) -> None:
    """Tools loadable, agent loops registered for the default and every row's ``agent_name``."""
    rollout = config.actor_rollout_ref.rollout
    mt, agent = rollout.multi_turn, rollout.agent
    tools_key = "actor_rollout_ref.rollout.multi_turn.tool_config_path"
    rows = getattr(train_dataset, "rows", None) or []
    row_agents = {row.get("agent_name") for row in rows if isinstance(row, dict) and row.get("agent_name")}
    uses_loop = (
        bool(mt.tool_config_path)
        or agent.default_agent_loop != "single_turn_agent"
        or bool(agent.agent_loop_config_path)
        or bool(row_agents - {"single_turn_agent"})
    )
    if not uses_loop:
        return
    if mt.tool_config_path:
        from verl.tools.utils.tool_registry import initialize_tools_from_config

        if mt.enable and mt.interaction_config_path:
            raise ValueError(
                f"{tools_key} together with multi_turn.interaction_config_path: tools and interactions in one rollout "
                "are not implemented together; use one of them"
            )
        if not config.data.return_raw_chat:
            raise ValueError(
                f"{tools_key} needs each sample's chat messages for the tool turns: set data.return_raw_chat=True"
            )
        try:
            initialize_tools_from_config(mt.tool_config_path)
        except (OSError, ValueError, ImportError, TypeError) as err:
            raise ValueError(f"{tools_key}={mt.tool_config_path}: {err}") from err
    if rollout.name != "hf" and int(rollout.tensor_model_parallel_size) > 1:
        raise ValueError(
            "agent-loop rollouts (tools, rollout.agent.*, agent_name) run on each rank's own engine: set "
            f"actor_rollout_ref.rollout.tensor_model_parallel_size=1 (got {rollout.tensor_model_parallel_size})"
        )
    from verl.experimental.agent_loop.agent_loop import get_agent_loop_class, load_agent_loop_config

    load_agent_loop_config(agent.agent_loop_config_path)
    for name in {agent.default_agent_loop} | row_agents:
        get_agent_loop_class(name)
