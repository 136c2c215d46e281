"""Request models of SandboxFusion's HTTP API, as the open-source server declares them (pydantic).

A request that does not fit (an unknown ``language``, a missing ``code``, a body that is not JSON) is answered by
FastAPI with HTTP 422 ``{"detail": [{"type": ..., "loc": ["body", ...], "msg": ..., "input": ...}]}``, as
SandboxFusion does. Extra fields are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# The server's ``language`` Literal; only python and cpp have runners here (others answer SandboxError).
Language = Literal[
    "python", "cpp", "nodejs", "go", "go_test", "java", "php", "csharp", "bash", "typescript", "sql", "rust",
    "cuda", "lua", "R", "perl", "D_ut", "ruby", "scala", "julia", "pytest", "junit", "kotlin_script", "jest",
    "verilog", "python_gpu", "lean", "swift", "racket",
]  # fmt: skip


class RunCodeRequest(BaseModel):
    code: str
    language: Language
    compile_timeout: float = 10
    run_timeout: float = 10
    memory_limit_MB: int = -1
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)


class TestConfig(BaseModel):
    dataset_type: str | None = None
    language: str | None = None
    locale: str | None = None
    is_fewshot: bool | None = None
    compile_timeout: float | None = None
    run_timeout: float | None = None
    custom_extract_logic: str | None = None
    provided_data: dict[str, Any] | list[dict[str, Any]] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class GetPromptsRequest(BaseModel):
    dataset: str
    config: TestConfig = Field(default_factory=TestConfig)
    offset: int = 0
    limit: int = 1000000


class GetPromptByIdRequest(BaseModel):
    dataset: str
    config: TestConfig = Field(default_factory=TestConfig)
    id: int | str


class SubmitRequest(BaseModel):
    dataset: str
    id: int | str
    completion: str
    config: TestConfig = Field(default_factory=TestConfig)
