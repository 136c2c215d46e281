"""``tool_agent``: generate, run the tools the model called, append their responses, generate again.

One sample's loop::

    prompt (chat template, with the tool schemas for templates that render them)
    -> assistant turn (engine ids, mask 1) -> tool calls parsed (``multi_turn.format``, hermes)
    -> no calls: done | calls: run them concurrently (at most ``max_parallel_calls``, each with a timeout)
    -> tool messages appended through the chat template's delta (mask 0) -> next assistant turn ...

It ends when a turn makes no call, at ``max_assistant_turns`` / ``max_user_turns`` (tool responses count as user
turns), or when the response budget (``rollout.response_length``) is spent. Token bookkeeping is
``AsyncRolloutRequest``'s: generated ids are kept verbatim, only the template's new pieces are tokenised.

What the model reads when a call goes wrong (each also counted in ``tool_error_counts``): malformed call JSON,
unknown tool, arguments that are not a JSON object, a tool that raises, a call past its timeout (the tool config's
``call_timeout``, default 60 s), calls beyond ``max_parallel_calls``. Tool responses longer than
``max_tool_response_length`` characters are cut on ``tool_response_truncate_side`` (these error texts are not).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register
from verl.experimental.agent_loop.tool_parser import ParsedCall, ToolParser
from verl.workers.rollout.schemas import AsyncRolloutRequest, AsyncRolloutRequestStateEnum, FinishReasonTypeEnum

__all__ = ["ToolAgentLoop", "truncate_tool_response"]

_S = AsyncRolloutRequestStateEnum
_MARK = "...(truncated)"


def truncate_tool_response(text: str, max_length: int, side: str) -> str:
    """``text`` cut to ``max_length`` characters (plus a marker): ``left`` keeps the start, ``right`` the end,
    ``middle`` both ends."""
    if len(text) <= max_length:
        return text
    if side == "left":
        return text[:max_length] + _MARK
    if side == "right":
        return _MARK + text[-max_length:]
    half = max_length // 2
    return text[:half] + _MARK + text[len(text) - (max_length - half) :]


@register("tool_agent")
class ToolAgentLoop(AgentLoopBase):
    """Tool calling (module docstring); takes ``tools`` (name -> ``BaseTool``) from the runner."""

    def __init__(self, trainer_config: Any, server_manager: Any, tokenizer: Any, processor: Any = None, **kwargs: Any):
        super().__init__(trainer_config, server_manager, tokenizer, processor, **kwargs)
        rollout = trainer_config.rollout
        mt = rollout.multi_turn
        self.tools = dict(kwargs.get("tools") or {})
        self.parser = ToolParser.get_tool_parser(mt.format, tokenizer)
        self.response_length = int(rollout.response_length)
        self.max_assistant_turns = mt.max_assistant_turns
        self.max_user_turns = mt.max_user_turns
        self.max_parallel_calls = int(mt.max_parallel_calls)
        self.max_tool_response_length = int(mt.max_tool_response_length)
        self.truncate_side = mt.tool_response_truncate_side
        self.sanity_check_mode = mt.tokenization_sanity_check_mode
        self.schemas = [tool.get_openai_tool_schema().model_dump(exclude_none=True) for tool in self.tools.values()]

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        request_id = kwargs["request_id"]
        messages = [dict(m) for m in kwargs.get("raw_prompt") if m] if kwargs.get("raw_prompt") is not None else None
        if messages:
            prompt_ids = self.apply_chat_template(messages, tools=self.schemas or None)
        else:
            prompt_ids, messages = list(kwargs["raw_prompt_ids"]), []
        req = AsyncRolloutRequest.from_messages(
            self.tokenizer,
            messages,
            request_id=request_id,
            prompt_ids=prompt_ids,
            max_response_len=self.response_length,
            tokenization_sanity_check_mode=self.sanity_check_mode,
        )
        tools_kwargs = dict(kwargs.get("tools_kwargs") or {})
        instances: dict[str, str] = {}
        calls = errors = 0
        gen_s = tool_s = 0.0
        tool_rewards: list[float] = []
        turn_cap = int(sampling_params.get("max_tokens") or self.response_length)  # per assistant turn
        try:
            for name, tool in self.tools.items():
                create_kwargs = dict((tools_kwargs.get(name) or {}).get("create_kwargs") or {})
                instances[name], _ = await tool.create(**create_kwargs)
            while True:
                req.transition(_S.RUNNING)
                start = time.perf_counter()
                out = await self.server_manager.generate(
                    request_id,
                    prompt_ids=req.input_ids,
                    sampling_params={**sampling_params, "max_tokens": min(turn_cap, req.remaining_budget)},
                )
                gen_s += time.perf_counter() - start
                req.add_assistant_tokens(out.token_ids, out.capture, tokenizer=self.tokenizer)
                if req.remaining_budget == 0:
                    req.finalize(FinishReasonTypeEnum.LENGTH)
                    break
                _, parsed = self.parser.extract_tool_calls(out.token_ids)
                at_limit = self.max_assistant_turns is not None and req.assistant_turns >= self.max_assistant_turns
                if not parsed or at_limit:
                    req.finalize(FinishReasonTypeEnum.STOP)
                    break
                req.transition(_S.TOOL_CALLING)
                start = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        self._call(c, instances, tools_kwargs) if i < self.max_parallel_calls else self._too_many()
                        for i, c in enumerate(parsed)
                    )
                )
                tool_s += time.perf_counter() - start
                calls += len(parsed)
                errors += sum(1 for _, failed, _ in results if failed)
                tool_rewards += [reward for _, _, reward in results]
                if self.max_user_turns is not None and req.user_turns >= self.max_user_turns:
                    req.finalize(FinishReasonTypeEnum.STOP)
                    break
                texts = [  # our own error texts are short and kept whole
                    t if failed else truncate_tool_response(t, self.max_tool_response_length, self.truncate_side)
                    for t, failed, _ in results
                ]
                req.add_tool_response_messages(self.tokenizer, texts)
                if req.remaining_budget == 0:
                    req.finalize(FinishReasonTypeEnum.LENGTH)
                    break
            for name, tool in self.tools.items():
                tool_rewards.append(float(await tool.calc_reward(instances[name])))
        finally:
            for name, instance_id in instances.items():
                await self.tools[name].release(instance_id)
        return AgentLoopOutput(
            prompt_ids=req.prompt_ids,
            response_ids=req.response_ids,
            response_mask=req.response_loss_mask,
            response_logprobs=None,
            num_turns=req.num_turns,
            metrics=AgentLoopMetrics(generate_sequences=gen_s, tool_calls=tool_s),
            extra_fields={
                "generation_logits": req.generation_logits,
                "tool_call_count": calls,
                "tool_error_count": errors,
                "reward_scores": {"tool_rewards": tool_rewards} if tool_rewards else {},
                "messages": req.messages,
            },
        )

    async def _too_many(self) -> tuple[str, bool, float]:
        return (
            f"error: only {self.max_parallel_calls} tool call(s) per turn are run (multi_turn.max_parallel_calls)",
            True,
            0.0,
        )

    async def _call(self, call: ParsedCall, instances: dict[str, str], tools_kwargs: dict) -> tuple[str, bool, float]:
        """``(text the model reads, whether it failed, step reward)`` of one call."""
        if call.error is not None:
            return f"error: {call.error}", True, 0.0
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: unknown tool {call.name!r}; available tools: {sorted(self.tools)}", True, 0.0
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError as err:
            return f"error: the arguments of {call.name} are not valid JSON ({err.msg})", True, 0.0
        if not isinstance(arguments, dict):
            return f"error: the arguments of {call.name} must be a JSON object", True, 0.0
        timeout = float(tool.config.get("call_timeout", 60))
        execute_kwargs = dict((tools_kwargs.get(call.name) or {}).get("execute_kwargs") or {})
        try:
            response, reward, metrics = await asyncio.wait_for(
                tool.execute(instances[call.name], arguments, **execute_kwargs), timeout=timeout
            )
        except asyncio.TimeoutError:
            return f"error: {call.name} did not answer within {timeout:g} s", True, 0.0
        except Exception as err:  # a tool's bug is the model's observation, not a crashed step
            return f"error: {call.name} failed: {type(err).__name__}: {err}", True, 0.0
        failed = bool((metrics or {}).get("error"))
        return (response.text or ""), failed, float(reward or 0.0)
