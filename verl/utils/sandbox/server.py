"""The embedded sandbox's HTTP server: SandboxFusion's API on FastAPI, and :class:`EmbeddedSandbox`.

Endpoints (shapes as in ``shared/reference/sandbox_fusion_api.md``):

=========================  =====================================================================================
``POST /run_code``         ``RunCodeRequest`` -> ``RunCodeResponse`` (HTTP 200 even for ``SandboxError``)
``POST /submit``           ``SubmitRequest`` -> ``EvalResult`` (stdin/stdout datasets, see :mod:`.datasets`)
``POST /get_prompts``      ``GetPromptsRequest`` -> ``[Prompt]``;  ``POST /list_ids`` -> ``[id]``
``POST /get_prompt_by_id`` ``GetPromptByIdRequest`` -> ``Prompt``
``GET /list_datasets``     registered dataset ids
``GET /v1/ping``           ``"pong"`` (the health check; there is no ``/health``)
``GET /v1/sandbox_info``   ours: languages, concurrency and the isolation in force
=========================  =====================================================================================

Errors: 422 for schema violations (FastAPI's ``{"detail": [...]}``), 400 ``{"detail": msg}`` for dataset errors,
500 ``{"detail": str(exc), "traceback": [...]}`` for anything uncaught.

Example::

    with EmbeddedSandbox(max_concurrency=4) as sb:
        requests.post(sb.url + "/run_code", json={"code": "print(1)", "language": "python"}).json()["status"]
        # -> 'Success'
"""

from __future__ import annotations

import asyncio
import traceback
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from verl.utils.sandbox import datasets
from verl.utils.sandbox.runner import Runner, SandboxConfig
from verl.utils.sandbox.schemas import GetPromptByIdRequest, GetPromptsRequest, RunCodeRequest, SubmitRequest


def create_app(runner: Runner) -> FastAPI:
    app = FastAPI(title="verl embedded sandbox (SandboxFusion API)")

    async def run(request: dict) -> dict:
        return await asyncio.get_running_loop().run_in_executor(runner.executor, runner.run_code, request)

    @app.exception_handler(datasets.DatasetError)
    async def _dataset_error(_: Request, exc: datasets.DatasetError):
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(Exception)
    async def _uncaught(_: Request, exc: Exception):
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return JSONResponse(status_code=500, content={"detail": str(exc), "traceback": tb})

    @app.get("/v1/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/v1/sandbox_info")
    async def info() -> dict:
        return {
            "languages": runner.languages(),
            "max_concurrency": runner.config.max_concurrency,
            "isolation": runner.isolation.describe(),
        }

    @app.post("/run_code")
    async def run_code(req: RunCodeRequest) -> dict:
        return await run(req.model_dump())

    @app.get("/list_datasets")
    async def list_datasets() -> list[str]:
        return sorted(datasets.registered())

    @app.post("/get_prompts")
    async def get_prompts(req: GetPromptsRequest) -> list[dict]:
        rows = datasets.rows_for(req.dataset, req.config)[req.offset : req.offset + req.limit]
        return [datasets.prompt_of(row, req.config) for row in rows]

    @app.post("/list_ids")
    async def list_ids(req: GetPromptsRequest) -> list:
        return [row["id"] for row in datasets.rows_for(req.dataset, req.config)[req.offset : req.offset + req.limit]]

    @app.post("/get_prompt_by_id")
    async def get_prompt_by_id(req: GetPromptByIdRequest) -> dict:
        return datasets.prompt_of(datasets.find_row(req.dataset, req.config, req.id), req.config)

    @app.post("/submit")
    async def submit(req: SubmitRequest) -> dict:
        cfg = req.config
        if not cfg.language:
            raise datasets.DatasetError(f"config.language field must exist for {datasets.COMMON_OJ}, got None")
        row = datasets.find_row(req.dataset, cfg, req.id)
        code, extracted_type = datasets.extract_code(req.completion, cfg.language)
        cases = datasets.case_requests(row, code, cfg)
        run_all = bool(cfg.extra.get("run_all_cases"))
        responses: list[dict] = []
        for start in range(0, len(cases), datasets.MAX_CONCURRENT_CASES):
            chunk = cases[start : start + datasets.MAX_CONCURRENT_CASES]
            responses += await asyncio.gather(*(run(case) for case in chunk))
            tests = datasets.judge_cases(row, responses, bool(cfg.extra.get("return_full_case")))
            if not run_all and not all(t["passed"] for t in tests):
                first_fail = next(i for i, t in enumerate(tests) if not t["passed"])
                tests = tests[: first_fail + 1]  # SandboxFusion stops at the first failing case
                break
        return datasets.eval_result(row["id"], code, extracted_type, tests)

    return app


class EmbeddedSandbox:
    """A sandbox server on a free loopback port, in a background thread of this process.

    Use as a context manager (or call :meth:`start`/:meth:`stop`); ``.url`` is the base URL to give a
    SandboxFusion client (``.url + "/run_code"`` for verl's ``sandbox_fusion_url``).

    Args:
        host: interface to listen on.
        port: 0 picks a free port.
        config: a full :class:`SandboxConfig`; keyword arguments override its fields.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: SandboxConfig | None = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        self.host, self.port = host, port
        self.url: str | None = None
        self.runner: Runner | None = None
        self._server: Any = None

    def start(self, timeout: float = 60.0) -> EmbeddedSandbox:
        from verl.utils.http_server import BackgroundServer

        self.runner = Runner(self.config)
        self._server = BackgroundServer(create_app(self.runner), self.host, self.port, name="embedded sandbox")
        self.port = self._server.start(timeout)
        self.url = f"http://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.runner is not None:
            self.runner.shutdown()
            self.runner = None

    def __enter__(self) -> EmbeddedSandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
