"""An OpenAI-compatible HTTP server (FastAPI) over a generation backend (``generation_backend``).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
Request parameters: ``n``, ``stop``, ``max_tokens``, ``temperature`` (0 is greedy), ``top_p``, ``seed``, vLLM's
``top_k`` and ``ignore_eos``, ``stream``
(server-sent events ending with ``data: [DONE]``, ``stream_options.include_usage``), ``logprobs`` (completions: an
int -> ``{tokens, token_logprobs, top_logprobs, text_offset}``; chat: ``logprobs: true`` + ``top_logprobs: k`` ->
``logprobs.content[{token, logprob, bytes, top_logprobs}]``) and ``usage`` in every answer.

This module only translates: pydantic request models -> ``GenerationJob`` (the engine's ``SamplingParams`` plus
stop strings) and prompt ids -> one backend call per choice (all choices of all requests run concurrently, so the backend batches them) -> OpenAI response JSON.
Every error is OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for an invalid or malformed
body (FastAPI's 422 is rewritten, naming the field), 400 when the prompt plus ``max_tokens`` exceeds the model's
length, 404 for an unknown model, 401 for a missing or wrong bearer key.

Differences from vLLM's server (measured against it, see the tests): chat ``top_logprobs`` are the true top-k
(vLLM's start with the sampled token); a token that is part of a multi-byte character reads ``"\ufffd"`` with its
real ``bytes`` (vLLM: ``""`` and ``[]``); ``echo`` and prompt logprobs are refused. Like vLLM, ``n > 1`` with
temperature 0 is a 400.

``OpenAIServer`` runs the app with uvicorn on a background thread (tests, replicas, Ray actors);
``python -m verl.serve`` runs it on its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from verl.workers.rollout.engine import SamplingParams
from verl.workers.rollout.generation_backend import (
    GenerationJob,
    GenerationResult,
    TokenStep,
    logprobs_capture,
    make_backend,
)
from verl.workers.rollout.openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    OpenAIError,
    RequestBase,
    TokenLogprob,
    TokenText,
    TopLogprob,
    Usage,
    cut_at_stop,
)

__all__ = ["ChatCompletionRequest", "CompletionRequest", "OpenAIServer", "create_app"]


# ---------------------------------------------------------------------------------------------- the app
class _Handler:
    """Request -> backend calls -> response, for one app."""

    def __init__(self, backend: Any, served_model_name: str):
        self.backend = backend
        self.name = served_model_name
        self.tokenizer = backend.tokenizer
        self.tokens = TokenText(backend.tokenizer)

    # ------------------------------------------------------------ request -> internal
    def check_model(self, req: RequestBase) -> None:
        if req.model is not None and req.model != self.name:
            raise OpenAIError(404, f"The model `{req.model}` does not exist.", "model", "model_not_found")

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        prompt = req.prompt
        if isinstance(prompt, str):
            prompts = [self.tokenizer.encode(prompt)]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [list(prompt)]
        else:
            prompts = [self.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompt]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise OpenAIError(400, "prompt must not be empty", "prompt")
        vocab = len(self.tokenizer)
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise OpenAIError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        return prompts

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        messages = []
        for m in req.messages:
            content = m.content
            if isinstance(content, list):  # content parts: only text is supported
                content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
            messages.append({**m.model_dump(exclude_none=True), "content": content or ""})
        try:
            extra = {"tools": req.tools} if req.tools else {}
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        except Exception as exc:  # a template that refuses these messages (roles, order)
            raise OpenAIError(400, f"the chat template cannot render these messages: {exc}", "messages") from exc
        return self.tokenizer.encode(text, add_special_tokens=False)

    def sampling(self, req: RequestBase, prompt: list[int], max_tokens: int | None, logprobs: int | None, i: int):
        if req.n > 1 and req.temperature <= 0:  # n identical answers are a mistake; vLLM refuses it too
            raise OpenAIError(
                400, f"n must be 1 when using greedy sampling, got {req.n} (temperature 0 is greedy).", "n"
            )
        max_tokens = max_tokens if max_tokens is not None else self.backend.max_model_len - len(prompt)
        if max_tokens < 1:  # chat without max_tokens: the prompt alone fills the context
            limit = self.backend.max_model_len
            raise OpenAIError(400, f"the prompt has {len(prompt)} tokens, no room left in {limit}", "messages")
        seed = None if req.seed is None else req.seed + i  # choice i of n gets its own stream
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k or -1,
            seed=seed,
            stop_token_ids=self.backend.eos_ids,
            ignore_eos=req.ignore_eos,
            capture=logprobs_capture(logprobs),
        )
        job = GenerationJob(params, req.stop_list)
        try:
            self.backend.check_prompt(prompt, job)
        except ValueError as exc:
            param = "max_tokens" if max_tokens <= self.backend.max_model_len else "prompt"
            raise OpenAIError(400, str(exc), param, "context_length_exceeded") from None
        return job

    # ------------------------------------------------------------ internal -> response
    def completion_logprobs(self, result: GenerationResult) -> CompletionLogprobs:
        ids = result.token_ids
        tokens = [self.tokens.text(t) for t in ids]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        tops = []
        for token, top in zip(ids, result.top_logprobs or []):
            entry = {self.tokens.text(t): lp for t, lp in top}
            entry.setdefault(self.tokens.text(token), result.logprobs[len(tops)])
            tops.append(entry)
        return CompletionLogprobs(
            tokens=tokens, token_logprobs=list(result.logprobs[: len(ids)]), top_logprobs=tops, text_offset=offsets
        )

    def chat_logprobs(self, ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]], k: int):
        def top(t: int, lp: float) -> TopLogprob:
            return TopLogprob(token=self.tokens.text(t), logprob=lp, bytes=self.tokens.bytes(t))

        content = [
            TokenLogprob(**top(t, lp).model_dump(), top_logprobs=[top(a, b) for a, b in alts[:k]])
            for t, lp, alts in zip(ids, logprobs, tops)
        ]
        return ChoiceLogprobs(content=content)

    def text(self, token_ids: list[int]) -> str:
        """The completion text; a trailing incomplete UTF-8 character is not text yet (vLLM drops it too)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")

    def finish(self, result: GenerationResult, stops: tuple[str, ...]) -> tuple[str, str]:
        """``(text, finish_reason)`` after cutting the text at the earliest stop string."""
        text = self.text(result.token_ids)
        text, stopped = cut_at_stop(text, stops)
        return text, ("stop" if stopped else result.finish_reason)

    # ------------------------------------------------------------ endpoints
    async def _run_all(self, jobs: list[tuple[list[int], GenerationJob]]) -> list[GenerationResult]:
        return list(await asyncio.gather(*(self.backend.generate(p, s) for p, s in jobs)))

    async def completions(self, req: CompletionRequest) -> Any:
        self.check_model(req)
        prompts = self.completion_prompts(req)
        jobs = [(p, self.sampling(req, p, req.max_tokens, req.logprobs, i)) for p in prompts for i in range(req.n)]
        prompt_tokens = sum(len(p) for p in prompts)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return self._stream(jobs, rid, created, prompt_tokens, req.include_usage, chat=False)
        results = await self._run_all(jobs)
        choices = []
        for index, ((_, params), result) in enumerate(zip(jobs, results)):
            text, reason = self.finish(result, params.stop)
            lps = self.completion_logprobs(result) if params.logprobs is not None else None
            choices.append(CompletionChoice(index=index, text=text, logprobs=lps, finish_reason=reason))
        usage = _usage(prompt_tokens, results)
        return Completion(id=rid, created=created, model=self.name, choices=choices, usage=usage)

    async def chat(self, req: ChatCompletionRequest) -> Any:
        self.check_model(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise OpenAIError(400, "top_logprobs requires logprobs to be true", "top_logprobs")
        prompt = self.chat_prompt(req)
        want = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        jobs = [(prompt, self.sampling(req, prompt, max_tokens, want, i)) for i in range(req.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return self._stream(jobs, rid, created, len(prompt), req.include_usage, chat=True)
        results = await self._run_all(jobs)
        choices = []
        for index, ((_, params), result) in enumerate(zip(jobs, results)):
            text, reason = self.finish(result, params.stop)
            lps = None
            if want is not None:
                lps = self.chat_logprobs(result.token_ids, result.logprobs, result.top_logprobs, want)
            message = AssistantMessage(content=text)
            choices.append(ChatChoice(index=index, message=message, logprobs=lps, finish_reason=reason))
        return ChatCompletion(
            id=rid, created=created, model=self.name, choices=choices, usage=_usage(len(prompt), results)
        )

    # ------------------------------------------------------------ streaming
    def _stream(self, jobs, rid: str, created: int, prompt_tokens: int, include_usage: bool, chat: bool):
        """Server-sent events: one chunk per generated token per choice, then the finish chunks, usage, [DONE]."""
        events: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, prompt: list[int], params: GenerationJob) -> None:
            try:
                async for step in self.backend.generate_stream(prompt, params):
                    await events.put((index, step))
            except Exception as exc:  # reported in the stream: the status line has already gone out
                await events.put((index, exc))

        tasks = [asyncio.create_task(pump(i, p, s)) for i, (p, s) in enumerate(jobs)]
        states = [_ChoiceStream(self, params) for _, params in jobs]
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict], usage: dict | None = None) -> str:
            body = {"id": rid, "object": obj, "created": created, "model": self.name, "choices": choices}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        async def events_out() -> AsyncIterator[str]:
            try:
                if chat:
                    roles = [{"index": i, "delta": {"role": "assistant", "content": ""}} for i in range(len(jobs))]
                    yield chunk([{**r, "logprobs": None, "finish_reason": None} for r in roles])
                remaining = len(jobs)
                while remaining:
                    index, item = await events.get()
                    if isinstance(item, Exception):
                        err = OpenAIError(500, f"generation failed: {item}")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        return
                    piece = states[index].feed(item, chat)
                    if piece is not None:
                        yield chunk([{"index": index, **piece}])
                    remaining -= isinstance(item, str)
                if include_usage:
                    done = sum(len(s.ids) for s in states)
                    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": done}
                    yield chunk([], {**usage, "total_tokens": prompt_tokens + done})
                yield "data: [DONE]\n\n"
            finally:
                for task in tasks:
                    task.cancel()

        return events_out()


class _ChoiceStream:
    """The text emitted so far for one streamed choice; holds back what could still become a stop string."""

    def __init__(self, handler: _Handler, params: GenerationJob):
        self.h, self.params = handler, params
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False

    def feed(self, item: TokenStep | str, chat: bool) -> dict | None:
        """The chunk body (without ``index``) for one token or the finish reason, or None when nothing is due."""
        if self.stopped:
            return None
        finished = isinstance(item, str)
        if not finished:
            self.ids.append(item.token_id)
        text = self.h.text(self.ids)
        text, hit = cut_at_stop(text, self.params.stop)
        safe = len(text)
        if not finished and not hit:
            hold = max((len(s) - 1 for s in self.params.stop), default=0)
            safe = max(self.sent, len(text) - hold)
        delta, self.sent = text[self.sent : safe], max(self.sent, safe)
        reason = None
        if finished or hit:
            reason = "stop" if hit else item
            self.stopped = True
        lps = None
        if self.params.logprobs is not None and not finished:
            lps = self._logprobs(item, chat)
        if not delta and reason is None and lps is None:
            return None
        if chat:
            return {"delta": {"content": delta} if delta else {}, "logprobs": lps, "finish_reason": reason}
        return {"text": delta, "logprobs": lps, "finish_reason": reason}

    def _logprobs(self, step: TokenStep, chat: bool) -> dict:
        h, tops = self.h, step.top_logprobs or []
        if chat:
            return h.chat_logprobs([step.token_id], [step.logprob], [tops], self.params.logprobs).model_dump()
        result = GenerationResult(token_ids=[step.token_id], logprobs=[step.logprob], top_logprobs=[tops])
        return h.completion_logprobs(result).model_dump()


def _usage(prompt_tokens: int, results: list[GenerationResult]) -> Usage:
    done = sum(len(r.token_ids) for r in results)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done)


def _field_error(errors: list[dict]) -> OpenAIError:
    """FastAPI's validation errors as one 400 naming the first offending field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return OpenAIError(400, f"the request body is not valid JSON: {first.get('msg')}", None, "invalid_json")
    field = ".".join(loc) or None
    if field is None and first.get("type") in ("model_attributes_type", "dict_type"):
        message = "the request body must be a JSON object (sent with Content-Type: application/json)"
        return OpenAIError(400, message, None, "invalid_json")
    where = f"invalid value for field '{field}': " if field else "invalid request body: "
    return OpenAIError(400, where + str(first.get("msg")), field, "invalid_request")


def create_app(backend: Any, served_model_name: str, api_key: str | None = None) -> Any:
    """The FastAPI app serving ``backend`` as model ``served_model_name``; ``api_key`` guards ``/v1/*``."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    handler = _Handler(backend, served_model_name)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise OpenAIError(401, "Incorrect or missing API key (send 'Authorization: Bearer <key>').", None, 401)

    app = FastAPI(title="verl OpenAI-compatible server")
    app.state.backend = backend

    @app.exception_handler(OpenAIError)
    async def _openai_error(_request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = _field_error(list(exc.errors()))
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(OpenAIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        card = {"id": served_model_name, "object": "model", "created": int(time.time()), "owned_by": "verl"}
        return {"object": "list", "data": [{**card, "max_model_len": backend.max_model_len}]}

    def respond(result: Any) -> Any:
        if isinstance(result, BaseModel):
            return JSONResponse(result.model_dump())
        return StreamingResponse(result, media_type="text/event-stream")

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: CompletionRequest) -> Any:
        return respond(await handler.completions(req))

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(req: ChatCompletionRequest) -> Any:
        return respond(await handler.chat(req))

    return app


# ---------------------------------------------------------------------------------------------- background server
class OpenAIServer:
    """The app under uvicorn on a background thread.

    Args:
        model_path: HF model directory.
        backend: ``"hf"`` or ``"vllm"`` (``generation_backend.BACKENDS``).
        host, port: where to listen (port 0 picks a free one).
        served_model_name: the ``model`` clients send; default ``model_path``.
        api_key: bearer key required on ``/v1/*``; None for none.
        **backend_kwargs: passed to the backend (``max_batch_size``, ``device``, ``dtype``, ``seed``...).

    Usage::

        server = OpenAIServer(model_dir, served_model_name="tiny")
        base = server.start()        # "http://127.0.0.1:PORT", once /health answers
        ...
        server.stop()
    """

    def __init__(
        self,
        model_path: str,
        backend: str = "hf",
        host: str = "127.0.0.1",
        port: int = 0,
        served_model_name: str | None = None,
        api_key: str | None = None,
        **backend_kwargs: Any,
    ):
        self.model_path, self.backend_name = model_path, backend
        self.host, self.port = host, port
        self.served_model_name = served_model_name or model_path
        self.api_key = api_key
        self.backend_kwargs = backend_kwargs
        self.backend: Any = None
        """The generation backend; set it before ``start()`` to share one (this server then never closes it)."""
        self._owns_backend = False
        self.address = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 300.0) -> str:
        """Load the backend, serve, and return the base address once ``/health`` answers 200."""
        import uvicorn

        if self.backend is None:
            self.backend = make_backend(self.backend_name, self.model_path, **self.backend_kwargs)
            self._owns_backend = True
        app = create_app(self.backend, self.served_model_name, self.api_key)
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError(f"the OpenAI server on {self.address} exited during startup")
            try:
                with urllib.request.urlopen(f"{self.address}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self.address
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"the OpenAI server on {self.address} did not answer /health within {timeout} s")

    def stop(self) -> None:
        """Stop serving and close the backend (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.backend is not None and self._owns_backend:
            self.backend.close()
        self._server, self._thread = None, None
