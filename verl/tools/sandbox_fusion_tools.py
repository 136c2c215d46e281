"""``SandboxFusionTool``: a code interpreter (ReTool style) that runs the model's code in SandboxFusion.

Config: ``sandbox_fusion_url`` (a SandboxFusion server's ``/run_code`` or base URL; null or absent starts the
embedded sandbox, ``python -m verl.utils.sandbox``), ``default_timeout`` (run seconds, 30), ``default_language``
("python"), ``memory_limit_mb`` (1024), ``max_output_chars`` (2000). Argument: ``code``.

The model reads the program's stdout, then its stderr when there is any; a program that fails, times out or
cannot reach the sandbox yields a text saying so (``metrics["error"]`` names the kind) and the rollout goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

__all__ = ["SandboxFusionTool"]


def _default_memory_limit_mb() -> int:
    """The reward's sandbox default (``reward_model.sandbox_fusion.memory_limit_mb``): one number for both uses."""
    from verl.workers.config.reward_model import SandboxFusionConfig

    return int(SandboxFusionConfig.memory_limit_mb)


class SandboxFusionTool(BaseTool):
    """Run code in a sandbox (module docstring)."""

    def __init__(self, config: dict[str, Any], tool_schema: OpenAIFunctionToolSchema | None):
        super().__init__(config, tool_schema)
        self.url = self.config.get("sandbox_fusion_url")
        self.timeout = float(self.config.get("default_timeout", 30))
        self.language = str(self.config.get("default_language", "python"))
        self.memory_limit_mb = int(self.config.get("memory_limit_mb") or _default_memory_limit_mb())
        self.max_output_chars = int(self.config.get("max_output_chars", 2000))

    @classmethod
    def default_schema(cls) -> OpenAIFunctionToolSchema:
        return OpenAIFunctionToolSchema.model_validate(
            {
                "type": "function",
                "function": {
                    "name": "code_interpreter",
                    "description": "Runs a Python program and returns what it prints.",
                    "parameters": {
                        "type": "object",
                        "properties": {"code": {"type": "string", "description": "The program to run."}},
                        "required": ["code"],
                    },
                },
            }
        )

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict]:
        from verl.utils.reward_score.sandbox_fusion.utils import call_sandbox_api, resolve_sandbox_url

        code = parameters.get("code")
        if not isinstance(code, str) or not code.strip():
            return (
                ToolResponse(text="code_interpreter error: pass code, a non-empty string"),
                0.0,
                {"error": "bad_arguments"},
            )
        try:
            url = resolve_sandbox_url(self.url)
        except RuntimeError as err:
            return ToolResponse(text=f"code_interpreter error: {err}"), 0.0, {"error": "unreachable"}
        response, error = await asyncio.to_thread(
            call_sandbox_api, url, code, None, self.timeout, self.timeout, self.memory_limit_mb, self.language
        )
        if error is not None:
            return ToolResponse(text=f"code_interpreter error: {error}"), 0.0, {"error": "unreachable"}
        run = (response or {}).get("run_result") or {}
        status = str(run.get("status", response.get("status", "")))
        stdout, stderr = str(run.get("stdout") or ""), str(run.get("stderr") or "")
        text = stdout + (f"\nstderr:\n{stderr}" if stderr else "")
        metrics: dict[str, Any] = {"status": status}
        if status == "TimeLimitExceeded":
            text, metrics["error"] = f"code_interpreter: the program ran past {self.timeout:g} s\n{text}", "timeout"
        elif run.get("return_code") not in (0, None):
            metrics["error"] = "program_failed"
        if len(text) > self.max_output_chars:
            text = text[: self.max_output_chars] + "\n... (output cut)"
        return ToolResponse(text=text or "(no output)"), 0.0, metrics
