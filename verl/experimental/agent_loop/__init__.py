"""verl's agent loop (``agent_name`` per sample; ``single_turn_agent``, ``tool_agent``, ``openai_agent``, user loops).

Importing the package registers the built-in loops.
"""

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
from verl.experimental.agent_loop.openai_agent_loop import OpenAIAgentLoop
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop

__all__ = [
    "AgentLoopBase",
    "AgentLoopMetrics",
    "AgentLoopOutput",
    "AsyncLLMServerManager",
    "OpenAIAgentLoop",
    "SingleTurnAgentLoop",
    "TokenOutput",
    "ToolAgentLoop",
    "get_agent_loop_class",
    "register",
    "run_agent_loops",
]
