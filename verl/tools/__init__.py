"""Tools a policy may call during a multi-turn rollout (verl's ``verl.tools``).

A tool is a :class:`~verl.tools.base_tool.BaseTool` with an OpenAI function schema; tools are listed in a YAML file
(``actor_rollout_ref.rollout.multi_turn.tool_config_path``) and built by
:func:`verl.tools.utils.tool_registry.initialize_tools_from_config`. The ``tool_agent`` loop
(``verl.experimental.agent_loop``) parses the model's calls, runs them and appends their responses (loss mask 0).

Built in: :class:`~verl.tools.search_tool.SearchTool` (a retrieval service, e.g. ``python -m
verl.tools.retrieval_server``) and :class:`~verl.tools.sandbox_fusion_tools.SandboxFusionTool` (runs code in
SandboxFusion or the embedded sandbox).
"""
