"""Any agent written against the OpenAI client is a rollout: ``OpenAIAgentLoop`` and its session server.

During rollout the policy is served behind an OpenAI-compatible endpoint, one URL per sample
(``http://127.0.0.1:PORT/sessions/<id>/v1``). The agent is a plain function that receives an ``openai`` client
pointed at its session, and the sample's fields; it calls ``client.chat.completions.create(...)`` as it would
against any server (``tools=`` included: hermes tool calls come back as ``message.tool_calls``), runs its tools
itself, and sends their results back as ``tool`` messages::

    async def solve(client: openai.AsyncOpenAI, raw_prompt, **sample) -> float | None:
        messages = list(raw_prompt)
        reply = await client.chat.completions.create(model="policy", messages=messages, tools=[SEARCH])
        ...

(a plain ``def`` gets a synchronous ``openai.OpenAI`` client and runs on a thread). Register it in the agent-loop
YAML (``actor_rollout_ref.rollout.agent.agent_loop_config_path``)::

    - name: my_agent
      _target_: verl.experimental.agent_loop.openai_agent_loop.OpenAIAgentLoop
      agent_fn: my_package.agents.solve          # or path/to/file.py:solve
      agent_kwargs: {retrieval_url: http://127.0.0.1:8001/retrieve}   # optional, passed to every call

and name it in the data (``agent_name``) or in ``rollout.agent.default_agent_loop``.

The server records the exact token ids and log-probs of every turn, keyed by session, so the agent writes no
tokenisation code and the trajectory trains with correct masks. Sampling follows the rollout's settings (validation's
``val_kwargs`` when validating) unless the agent passes its own ``temperature`` / ``top_p`` / ``top_k``. Each
request's messages must extend the previous request's (its own earlier messages, the assistant reply it received, then new tool / user messages). The reply is
taken as the ids the engine generated, never re-tokenised from what the client echoes back; only the new messages
are rendered, through the chat template's delta (``AsyncRolloutRequest``), with loss mask 0. An agent that rewrites
history starts a new segment: the sample trains on its last segment (``session_restarts`` counts them).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register
from verl.experimental.agent_loop.tool_parser import ToolParser
from verl.workers.rollout.openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    OpenAIError,
    TokenLogprob,
    TokenText,
    Usage,
)
from verl.workers.rollout.schemas import AsyncRolloutRequest, AsyncRolloutRequestStateEnum, FinishReasonTypeEnum

__all__ = ["OpenAIAgentLoop", "SessionServer", "load_agent_fn"]

_S = AsyncRolloutRequestStateEnum


def load_agent_fn(spec: str) -> Callable[..., Any]:
    """``package.module.function`` or ``path/to/file.py:function``."""
    if ":" in spec:
        path, _, name = spec.rpartition(":")
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"agent_fn {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(f"verl_agent_{file.stem}", file)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module_name, _, name = spec.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ImportError(f"agent_fn {spec!r}: cannot import {module_name!r}: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"agent_fn {spec!r}: no function {name!r}")
    return fn


class _Session:
    """One sample's conversation as the server sees it."""

    def __init__(self, session_id: str):
        self.id = session_id
        self.request: AsyncRolloutRequest | None = None
        self.restarts = 0
        self.calls = 0
        self.generate_s = 0.0


def _same_message(ours: dict, theirs: dict) -> bool:
    if ours.get("role") != theirs.get("role"):
        return False
    if ours["role"] == "assistant":  # the reply is ours: trusted by position, whatever the client echoes
        return True
    return (ours.get("content") or "") == (theirs.get("content") or "")


class SessionServer:
    """The per-session OpenAI endpoint over the rollout's ``AsyncLLMServerManager`` (module docstring).

    Runs in the agent loop's own event loop (``await start()`` / ``await stop()``), so engine calls from every
    session are batched together.
    """

    def __init__(
        self,
        server_manager: Any,
        tokenizer: Any,
        response_length: int,
        sanity_check_mode: str = "strict",
        tool_format: str = "hermes",
    ):
        self.manager = server_manager
        self.tokenizer = tokenizer
        self.response_length = int(response_length)
        self.sanity_check_mode = sanity_check_mode
        self.parser = ToolParser.get_tool_parser(tool_format, tokenizer)
        self.tokens = TokenText(tokenizer)
        self.sessions: dict[str, _Session] = {}
        self.address = ""
        self._server: Any = None
        self._task: asyncio.Task | None = None

    def open_session(self, request_id: str | None = None) -> str:
        """A new session for the sample ``request_id`` (its batch row keeps the seeds of its turns apart)."""
        session_id = uuid.uuid4().hex[:16]
        self.sessions[session_id] = _Session(session_id)
        if request_id is not None and request_id in self.manager.rows:
            self.manager.rows[session_id] = self.manager.rows[request_id]
        return session_id

    def base_url(self, session_id: str) -> str:
        return f"{self.address}/sessions/{session_id}/v1"

    # ------------------------------------------------------------------ app
    def create_app(self) -> Any:
        from fastapi import FastAPI
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse

        app = FastAPI(title="verl agent-loop sessions")

        @app.exception_handler(OpenAIError)
        async def _openai_error(_request: Any, exc: OpenAIError) -> JSONResponse:
            return JSONResponse(exc.body(), status_code=exc.status)

        @app.exception_handler(RequestValidationError)
        async def _invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
            return JSONResponse(OpenAIError(400, f"invalid request: {exc.errors()[:3]}").body(), status_code=400)

        @app.get("/sessions/{session_id}/v1/models")
        async def models(session_id: str) -> dict:
            return {"object": "list", "data": [{"id": "policy", "object": "model", "owned_by": "verl"}]}

        @app.post("/sessions/{session_id}/v1/chat/completions")
        async def chat(session_id: str, req: ChatCompletionRequest) -> JSONResponse:
            return JSONResponse((await self.chat(session_id, req)).model_dump(exclude_none=True))

        return app

    async def start(self) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.create_app(), log_level="warning", access_log=False))
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the startup error
            await asyncio.sleep(0.005)
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            await self._task
            self._server = None

    # ------------------------------------------------------------------ one chat completion
    def _messages(self, req: ChatCompletionRequest) -> list[dict]:
        out = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
            out.append({**m.model_dump(exclude_none=True), "content": content or ""})
        return out

    def _follow(self, session: _Session, messages: list[dict], tools: list[dict] | None) -> AsyncRolloutRequest:
        """The session's request with ``messages`` appended, or a new one when they do not extend it."""
        req = session.request
        if req is not None:
            prior = req.messages
            extends = len(messages) > len(prior) and prior[-1]["role"] == "assistant"
            extends = extends and all(_same_message(a, b) for a, b in zip(prior, messages))
            new = messages[len(prior) :]
            if extends and new and all(m["role"] in ("tool", "user") for m in new):
                req.transition(_S.TOOL_CALLING if new[0]["role"] == "tool" else _S.INTERACTING)
                clean = [{"role": m["role"], "content": m["content"]} for m in new]
                req._append_messages(self.tokenizer, clean, "new messages")
                return req
            session.restarts += 1
        extra = {"tools": tools} if tools else {}
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
        prompt_ids = self.tokenizer.encode(text, add_special_tokens=False)
        request = AsyncRolloutRequest.from_messages(
            self.tokenizer,
            [{"role": m["role"], "content": m["content"]} for m in messages],
            request_id=session.id,
            prompt_ids=prompt_ids,
            max_response_len=self.response_length,
            tokenization_sanity_check_mode=self.sanity_check_mode if not tools else "disable",
        )
        session.request = request
        return request

    async def chat(self, session_id: str, req: ChatCompletionRequest) -> ChatCompletion:
        session = self.sessions.get(session_id)
        if session is None:
            raise OpenAIError(404, f"unknown session {session_id!r}", "url")
        if req.n != 1 or req.stream:
            raise OpenAIError(400, "agent sessions take n=1 and stream=false (one trajectory per sample)", "n")
        try:
            request = self._follow(session, self._messages(req), req.tools)
        except ValueError as err:
            raise OpenAIError(400, str(err), "messages") from err
        budget = request.remaining_budget
        asked = req.max_completion_tokens or req.max_tokens or budget
        if budget == 0:
            if not request.is_finished:
                request.finalize(FinishReasonTypeEnum.LENGTH)
            return self._response([], None, "length", request, req)
        request.transition(_S.RUNNING)
        # the rollout's sampling (validation's when validating) unless the agent sets its own
        sampling: dict[str, Any] = {"max_tokens": min(asked, budget)}
        sampling.update({k: getattr(req, k) for k in ("temperature", "top_p", "top_k") if k in req.model_fields_set})
        if self.manager.base_params.capture is None:  # the session records log-probs whatever the rollout keeps
            from verl.workers.rollout.logit_capture import CaptureSpec

            sampling["capture"] = CaptureSpec(mode="logprob")
        start = time.perf_counter()
        out = await self.manager.generate(session_id, prompt_ids=request.input_ids, sampling_params=sampling)
        session.generate_s += time.perf_counter() - start
        session.calls += 1
        request.add_assistant_tokens(out.token_ids, out.capture, tokenizer=self.tokenizer)
        return self._response(out.token_ids, out.log_probs, out.stop_reason, request, req)

    def _response(
        self,
        ids: list[int],
        log_probs: list[float] | None,
        stop_reason: str,
        request: AsyncRolloutRequest,
        req: ChatCompletionRequest,
    ) -> ChatCompletion:
        eos = set(getattr(self.manager.engine, "eos_token_ids", ()) or ())
        body = ids[:-1] if ids and ids[-1] in eos else ids
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        tool_calls = None
        finish = "length" if stop_reason == "length" else "stop"
        if req.tools:
            content, parsed = self.parser.extract_from_text(text)
            good = [c for c in parsed if c.error is None]
            if good:
                text = content.strip()
                tool_calls = [
                    {
                        "id": f"call_{uuid.uuid4().hex[:12]}",
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in good
                ]
                finish = "tool_calls"
        lps = None
        if req.logprobs and log_probs is not None:
            lps = ChoiceLogprobs(
                content=[
                    TokenLogprob(token=self.tokens.text(t), logprob=lp, bytes=self.tokens.bytes(t), top_logprobs=[])
                    for t, lp in zip(ids, log_probs)
                ]
            )
        message = AssistantMessage(content=text, tool_calls=tool_calls)
        usage = Usage(
            prompt_tokens=len(request.input_ids) - len(ids),
            completion_tokens=len(ids),
            total_tokens=len(request.input_ids),
        )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=req.model or "policy",
            choices=[ChatChoice(index=0, message=message, logprobs=lps, finish_reason=finish)],
            usage=usage,
        )


@register("openai_agent")
class OpenAIAgentLoop(AgentLoopBase):
    """Runs ``agent_fn`` (module docstring) once per sample against its own session.

    Args (from the agent-loop YAML entry or the constructor): ``agent_fn`` (dotted path or ``file.py:function``)
    and ``agent_kwargs`` (a mapping passed to every call of the agent, e.g. a service URL). The runner passes
    ``session_server``.
    """

    needs_session_server = True

    @classmethod
    def create_session_server(cls, server_manager: Any, tokenizer: Any, trainer_config: Any) -> SessionServer:
        mt = trainer_config.rollout.multi_turn
        return SessionServer(
            server_manager,
            tokenizer,
            trainer_config.rollout.response_length,
            mt.tokenization_sanity_check_mode,
            mt.format,
        )

    @classmethod
    def check_entry(cls, entry: dict[str, Any]) -> None:
        """Refuse, before any rollout, an agent-loop YAML entry whose ``agent_fn`` is missing or cannot load."""
        if not entry.get("agent_fn"):
            raise ValueError(
                f"agent loop {entry.get('name')!r}: OpenAIAgentLoop needs agent_fn (module.function or file.py:function)"
            )
        load_agent_fn(str(entry["agent_fn"]))

    def __init__(self, trainer_config: Any, server_manager: Any, tokenizer: Any, processor: Any = None, **kwargs: Any):
        super().__init__(trainer_config, server_manager, tokenizer, processor, **kwargs)
        spec = kwargs.get("agent_fn")
        if not spec:
            raise ValueError(
                "OpenAIAgentLoop needs agent_fn (a dotted path or file.py:function) in its agent_loop_config_path entry"
            )
        self.agent_fn = load_agent_fn(spec) if isinstance(spec, str) else spec
        self.agent_kwargs = dict(kwargs.get("agent_kwargs") or {})
        self.server: SessionServer = kwargs["session_server"]

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        import openai

        session_id = self.server.open_session(kwargs.get("request_id"))
        session = self.server.sessions[session_id]
        fields = {k: v for k, v in kwargs.items() if k not in ("request_id",)}
        fields.update(self.agent_kwargs)
        if "raw_prompt" in fields and fields["raw_prompt"] is not None:
            fields["raw_prompt"] = [dict(m) for m in fields["raw_prompt"]]
        start = time.perf_counter()
        if inspect.iscoroutinefunction(self.agent_fn):
            client = openai.AsyncOpenAI(base_url=self.server.base_url(session_id), api_key="verl", max_retries=0)
            try:
                result = await self.agent_fn(client, **fields)
            finally:
                await client.close()
        else:
            client = openai.OpenAI(base_url=self.server.base_url(session_id), api_key="verl", max_retries=0)
            try:
                result = await asyncio.to_thread(self.agent_fn, client, **fields)
            finally:
                client.close()
        elapsed = time.perf_counter() - start
        req = session.request
        if req is None:  # the agent never asked the model: an empty trajectory on the dataset's prompt
            prompt_ids, response_ids, mask, captures, turns = list(kwargs["raw_prompt_ids"]), [], [], None, 1
        else:
            if not req.is_finished:
                if req.state != _S.RUNNING:
                    req.transition(_S.RUNNING)
                req.finalize(FinishReasonTypeEnum.STOP)
            prompt_ids, response_ids, mask = req.prompt_ids, req.response_ids, req.response_loss_mask
            captures, turns = req.generation_logits, req.num_turns
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=mask,
            num_turns=turns,
            reward_score=float(result) if isinstance(result, (int, float)) else None,
            metrics=AgentLoopMetrics(
                generate_sequences=session.generate_s, tool_calls=max(elapsed - session.generate_s, 0.0)
            ),
            extra_fields={
                "generation_logits": captures,
                "tool_call_count": sum(1 for m in (req.messages if req else []) if m["role"] == "tool"),
                "session_restarts": session.restarts,
                "messages": req.messages if req else [],
            },
        )
