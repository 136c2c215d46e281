"""verl.tools: the tool YAML registry, hermes call parsing, SearchTool against the real retrieval server (and every
way it can fail), and the code interpreter on the embedded sandbox."""

from __future__ import annotations

import asyncio
import socket

import pytest

from verl.experimental.agent_loop.tool_parser import ToolParser
from verl.tools.retrieval_server import RetrievalServer, load_corpus
from verl.tools.schemas import OpenAIFunctionCallSchema, OpenAIFunctionParsedSchema
from verl.tools.search_tool import SearchTool
from verl.tools.utils.tool_registry import initialize_tools_from_config

DOCS = [
    {"id": "0", "contents": "Zorblat\nThe capital of Zorblat is Quimby."},
    {"id": "1", "contents": "Flenwick\nFlenwick was founded in 1642 by sailors."},
    {"id": "2", "contents": "Quimby\nQuimby is a port city with a lighthouse."},
]


@pytest.fixture(scope="module")
def retrieval():
    with RetrievalServer(DOCS) as server:
        yield server


def run(coro):
    return asyncio.run(coro)


def search_tool(url: str, **config) -> SearchTool:
    return SearchTool({"retrieval_service_url": url, "topk": 2, **config}, None)


def test_search_finds_the_passage_with_verl_shapes(retrieval):
    import requests

    raw = requests.post(
        retrieval.url, json={"queries": ["capital of Zorblat"], "topk": 1, "return_scores": True}
    ).json()
    assert raw["result"][0][0]["document"]["contents"].startswith("Zorblat\n")
    assert raw["result"][0][0]["score"] > 0
    tool = search_tool(retrieval.url)
    instance, _ = run(tool.create())
    response, reward, metrics = run(tool.execute(instance, {"query_list": ["capital of Zorblat"]}))
    assert response.text.splitlines()[0] == "Doc 1 (Title: Zorblat) The capital of Zorblat is Quimby."
    assert metrics == {"queries": 1, "passages": 1} and reward == 0.0  # zero-score passages are dropped
    response, _, _ = run(tool.execute(instance, {"query": "founded by sailors"}))
    assert "Flenwick was founded in 1642" in response.text


def test_search_failures_are_responses_not_crashes(retrieval):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/retrieve"
    response, _, metrics = run(search_tool(dead).execute("i", {"query_list": ["x"]}))
    assert metrics["error"] == "unreachable" and dead in response.text

    silent = socket.socket()  # accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/retrieve"
        response, _, metrics = run(search_tool(url, timeout=0.5).execute("i", {"query_list": ["x"]}))
        assert metrics["error"] == "timeout" and "0.5 s" in response.text
    finally:
        silent.close()

    response, _, metrics = run(search_tool(retrieval.url.replace("/retrieve", "/nope")).execute("i", {"query": "x"}))
    assert metrics["error"] == "http_status" and "HTTP 404" in response.text
    for bad in ({}, {"query_list": []}, {"query_list": [3]}):
        response, _, metrics = run(search_tool(retrieval.url).execute("i", bad))
        assert metrics["error"] == "bad_arguments" and "query_list" in response.text


def test_retrieval_server_refuses_bad_requests_and_corpora(retrieval, tmp_path):
    import requests

    assert requests.post(retrieval.url, json={"queries": "x"}).status_code == 400
    assert requests.post(retrieval.url, json={"queries": ["x"], "topk": 0}).status_code == 400
    assert requests.post(retrieval.url, json={"queries": [""], "topk": 2}).json() == {"result": [[]]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "ok"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: expected an object with a string 'contents'"):
        load_corpus(bad)
    with pytest.raises(ValueError, match="no indexable words"):
        RetrievalServer([{"id": "0", "contents": "a b"}])


def test_hermes_parser_keeps_malformed_calls_as_errors(tiny_model_dir):
    from transformers import AutoTokenizer

    parser = ToolParser.get_tool_parser("hermes", AutoTokenizer.from_pretrained(tiny_model_dir))
    text = (
        'I will look. <tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
        "<tool_call>{not json}</tool_call><tool_call>[1]</tool_call>"
        '<tool_call>{"name": "calc", "arguments": "{\\"x\\": 1}"}</tool_call>'
    )
    content, calls = parser.extract_from_text(text)
    assert content == "I will look. "
    assert (calls[0].name, calls[0].arguments, calls[0].error) == ("search", '{"query": "a"}', None)
    assert "not valid JSON" in calls[1].error and "JSON object" in calls[2].error
    assert (calls[3].name, calls[3].arguments) == ("calc", '{"x": 1}')
    call, failed = OpenAIFunctionCallSchema.from_openai_function_parsed_schema(
        OpenAIFunctionParsedSchema(name="calc", arguments="[1]")
    )
    assert failed and call.arguments == {}
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'"):
        ToolParser.get_tool_parser("xml", None)


def test_tool_registry_reads_verl_yaml_and_names_errors(tmp_path):
    good = tmp_path / "tools.yaml"
    good.write_text(
        "tools:\n"
        "  - class_name: verl.tools.search_tool.SearchTool\n"
        "    config: {type: native, retrieval_service_url: 'http://127.0.0.1:1/retrieve', topk: 2}\n"
        "  - class_name: verl.tools.sandbox_fusion_tools.SandboxFusionTool\n"
        "    config: {type: native}\n"
        "    tool_schema:\n"
        "      type: function\n"
        "      function: {name: python, description: run code, parameters: {type: object, properties: "
        "{code: {type: string}}, required: [code]}}\n"
    )
    tools = initialize_tools_from_config(str(good))
    assert [t.name for t in tools] == ["search", "python"]
    assert tools[0].get_openai_tool_schema().function.parameters.required == ["query_list"]
    cases = {
        "tools: {}\n": "top-level 'tools:' list",
        "tools:\n  - config: {}\n": "entry 0 needs a class_name",
        "tools:\n  - class_name: nowhere.Tool\n": "cannot import module 'nowhere'",
        "tools:\n  - class_name: verl.tools.search_tool.SearchTool\n    config: {type: mcp}\n": "only native tools",
        "tools:\n  - class_name: verl.tools.search_tool.SearchTool\n    config: {}\n": "retrieval_service_url",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        with pytest.raises((ValueError, ImportError), match=message):
            initialize_tools_from_config(str(path))


def test_code_interpreter_runs_in_the_embedded_sandbox():
    from verl.tools.sandbox_fusion_tools import SandboxFusionTool
    from verl.utils.sandbox.server import EmbeddedSandbox

    with EmbeddedSandbox() as sandbox:
        tool = SandboxFusionTool(
            {"sandbox_fusion_url": sandbox.url, "default_timeout": 2, "max_output_chars": 50}, None
        )
        response, _, metrics = run(tool.execute("i", {"code": "print(6 * 7)"}))
        assert response.text.strip() == "42" and "error" not in metrics
        response, _, metrics = run(tool.execute("i", {"code": "raise SystemExit('boom')"}))
        assert metrics["error"] == "program_failed" and "boom" in response.text
        response, _, metrics = run(tool.execute("i", {"code": "print('x' * 500)"}))
        assert response.text.endswith("... (output cut)") and len(response.text) < 80
        response, _, metrics = run(tool.execute("i", {"code": "import time; time.sleep(10)"}))
        assert metrics["error"] == "timeout"
    response, _, metrics = run(tool.execute("i", {"code": ""}))
    assert metrics["error"] == "bad_arguments"
