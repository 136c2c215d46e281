"""verl's agent loop (``agent_name`` per sample; ``single_turn_agent``, ``tool_agent``, user loops)."""

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopMetrics,
    AgentLoopOutput,
    AsyncLLMServerManager,
    TokenOutput,
    get_agent_loop_class,
    register,
    run_agent_loops,
)

__all__ = [
    "AgentLoopBase",
    "AgentLoopMetrics",
    "AgentLoopOutput",
    "AsyncLLMServerManager",
    "TokenOutput",
    "get_agent_loop_class",
    "register",
    "run_agent_loops",
]
