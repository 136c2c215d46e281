"""The OpenAI-compatible server (hf backend) against the real ``openai`` client and ``aiohttp``, and beside a real
vLLM OpenAI server on the same tiny model (``vllm`` marker): same response fields, same greedy text."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request

import pytest

openai = pytest.importorskip("openai")
aiohttp = pytest.importorskip("aiohttp")

from verl.workers.rollout.openai_server import OpenAIServer, cut_at_stop  # noqa: E402

MODEL = "tiny"
CHAT = [{"role": "user", "content": "what is two plus three"}]


@pytest.fixture(scope="module")
def hf_server(tiny_model_dir):
    server = OpenAIServer(tiny_model_dir, served_model_name=MODEL, max_batch_size=32, max_wait_ms=20)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(hf_server):
    return openai.OpenAI(base_url=f"{hf_server.address}/v1", api_key="unused", max_retries=0)


def _post(base: str, path: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    async def go():
        async with aiohttp.ClientSession() as session:
            kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with session.post(f"{base}{path}", headers=headers or {}, **kwargs) as resp:
                return resp.status, await resp.json(content_type=None)

    return asyncio.run(go())


def _sse(base: str, path: str, body: dict) -> list[str]:
    """The raw ``data:`` payloads of a streamed answer, read with aiohttp."""

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}{path}", json={**body, "stream": True}) as resp:
                assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
                text = (await resp.read()).decode()
        return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]

    return asyncio.run(go())


# ---------------------------------------------------------------------------------------------- basic answers
def test_completion_with_logprobs_has_openai_shape(client):
    out = client.completions.create(model=MODEL, prompt="the cat sat on", max_tokens=6, temperature=0, logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    assert out.object == "text_completion" and out.model == MODEL and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 6 == len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset)
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and top[token] == logprob  # greedy: the sampled token is the best one
        assert logprob == pytest.approx(max(top.values()))


def test_prompt_forms_text_list_and_token_ids(client, hf_server):
    ids = hf_server.backend.tokenizer.encode("one two three")
    by_text = client.completions.create(model=MODEL, prompt="one two three", max_tokens=4, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, temperature=0)
    both = client.completions.create(model=MODEL, prompt=["one two three", "five"], max_tokens=4, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text == both.choices[0].text
    assert [c.index for c in both.choices] == [0, 1]
    assert both.usage.prompt_tokens == len(ids) + len(hf_server.backend.tokenizer.encode("five"))


def test_chat_n_seed_and_top_logprobs(client):
    kwargs = dict(model=MODEL, messages=CHAT, max_tokens=5, temperature=1.0, seed=7, n=3, logprobs=True)
    out = client.chat.completions.create(**kwargs, top_logprobs=2)
    again = client.chat.completions.create(**kwargs, top_logprobs=2)
    assert out.object == "chat.completion" and len(out.choices) == 3
    assert [c.message.content for c in out.choices] == [c.message.content for c in again.choices]  # seeded
    assert len({c.message.content for c in out.choices}) > 1  # choice i samples with seed + i
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    for entry in out.choices[0].logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        text = bytes(entry.bytes).decode("utf-8", errors="replace")
        assert text == entry.token or "\ufffd" in entry.token


def test_stop_string_cuts_text(client):
    base = dict(model=MODEL, prompt="count one two", max_tokens=12, temperature=0)
    full = client.completions.create(**base).choices[0].text
    stop = full[4:6]
    cut = client.completions.create(**base, stop=[stop, "never-seen"]).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    assert cut_at_stop("abcXYd", ("XY", "c")) == ("ab", True)


def test_streaming_equals_non_streaming(client, hf_server):
    body = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    whole = client.chat.completions.create(**body).choices[0]
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    raw = _sse(hf_server.address, "/v1/completions", {"model": MODEL, "prompt": "one", "max_tokens": 4, "logprobs": 1})
    assert raw[-1] == "[DONE]"
    events = [json.loads(r) for r in raw[:-1]]
    assert all(e["object"] == "text_completion" for e in events)
    assert sum(len(e["choices"][0]["logprobs"]["tokens"]) for e in events if e["choices"][0]["logprobs"]) == 4


def test_streamed_stop_string_never_leaks(client):
    base = dict(model=MODEL, prompt="count one two", max_tokens=12, temperature=0)
    full = client.completions.create(**base).choices[0].text
    stop = full[4:7]
    text = "".join(c.choices[0].text for c in client.completions.create(**base, stop=stop, stream=True))
    assert text == full[: full.find(stop)]


# ---------------------------------------------------------------------------------------------- batching, aiohttp
def test_concurrent_requests_are_batched(hf_server):
    backend = hf_server.backend
    seen = len(backend.batch_sizes)

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{hf_server.address}/v1", api_key="x", max_retries=0) as aclient:
            calls = [
                aclient.completions.create(model=MODEL, prompt=f"say {i}", max_tokens=8, temperature=1.0, seed=i)
                for i in range(16)
            ]
            return await asyncio.gather(*calls)

    outs = asyncio.run(run())
    assert all(o.usage.completion_tokens >= 1 for o in outs)
    assert max(backend.batch_sizes[seen:]) > 1, backend.batch_sizes[seen:]
    assert sum(backend.batch_sizes[seen:]) == 16


def test_aiohttp_models_health_and_completion(hf_server):
    async def run():
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{hf_server.address}/health") as resp:
                assert resp.status == 200
            async with session.get(f"{hf_server.address}/v1/models") as resp:
                models = await resp.json()
        return models

    models = asyncio.run(run())
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    status, body = _post(hf_server.address, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"]


# ---------------------------------------------------------------------------------------------- errors
def test_prompt_plus_max_tokens_too_long_is_400(client, hf_server):
    limit = hf_server.backend.max_model_len
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="one two", max_tokens=limit)
    message = err.value.body["message"]
    assert err.value.status_code == 400 and str(limit) in message and "maximum context length" in message


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=CHAT, max_tokens=2)
    assert "gpt-9" in err.value.body["message"] and err.value.body["param"] == "model"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"model": MODEL, "prompt": "hi", "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL}, "prompt"),
        ({"model": MODEL, "prompt": "hi", "logprobs": 99}, "logprobs"),
    ],
)
def test_malformed_body_is_400_naming_the_field(hf_server, body, field):
    status, answer = _post(hf_server.address, "/v1/completions", body)
    assert status == 400 and answer["error"]["param"] == field and field in answer["error"]["message"]
    assert set(answer["error"]) == {"message", "type", "param", "code"}


def test_invalid_json_and_chat_field_errors_are_400(hf_server):
    json_header = {"Content-Type": "application/json"}
    status, answer = _post(hf_server.address, "/v1/chat/completions", b"{not json", json_header)
    assert status == 400 and "not valid JSON" in answer["error"]["message"]
    status, answer = _post(hf_server.address, "/v1/chat/completions", b"[1, 2]", json_header)
    assert status == 400 and "JSON object" in answer["error"]["message"]
    status, answer = _post(
        hf_server.address, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "top_logprobs": 2}
    )
    assert status == 400 and answer["error"]["param"] == "top_logprobs"


def test_api_key_is_required_when_set(tiny_model_dir, hf_server):
    keyed = OpenAIServer(tiny_model_dir, served_model_name=MODEL, api_key="sekrit")
    keyed.backend = hf_server.backend  # shared; the keyed server does not close it
    keyed.start()
    try:
        with pytest.raises(openai.AuthenticationError) as err:
            openai.OpenAI(base_url=f"{keyed.address}/v1", api_key="wrong", max_retries=0).models.list()
        assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"
        good = openai.OpenAI(base_url=f"{keyed.address}/v1", api_key="sekrit", max_retries=0)
        assert good.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens == 2
        with urllib.request.urlopen(f"{keyed.address}/health") as resp:  # health stays open
            assert resp.status == 200
    finally:
        keyed.stop()
    assert hf_server.backend._thread.is_alive()


# ---------------------------------------------------------------------------------------------- beside real vLLM
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_address(vllm_server_address):
    """The session's real vLLM OpenAI server (tests/conftest.py), served as ``tiny``."""
    return vllm_server_address


def _scenarios(base: str) -> dict:
    """The same client calls against one server; returns the raw JSON answers."""
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    out = {}
    out["completion"] = client.completions.create(
        model=MODEL, prompt="the cat sat on", max_tokens=8, temperature=0, logprobs=2
    ).model_dump(exclude_unset=True)
    out["chat"] = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    ).model_dump(exclude_unset=True)
    sampled = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=1.0, seed=3, n=3)
    out["sampled_n"] = (len(sampled.choices), sorted(sampled.choices[0].model_dump(exclude_unset=True)))
    status, err = _post(base, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "temperature": 0, "n": 2})
    out["greedy_n2"] = (status, err["error"]["message"].split(",")[0])
    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True)
    out["chat_stream_text"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    async def concurrent():
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as aclient:
            calls = [
                aclient.completions.create(model=MODEL, prompt=f"say {i}", max_tokens=6, temperature=0)
                for i in range(4)
            ]
            return [r.choices[0].text for r in await asyncio.gather(*calls)]

    out["async_texts"] = asyncio.run(concurrent())
    out["raw_stream_tail"] = _sse(base, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 3})[-1]
    status, err = _post(base, "/v1/completions", {"model": "nope", "prompt": "hi"})
    out["unknown_model"] = (status, sorted(err["error"]))
    return out


def _keys_subset(ours: dict, theirs: dict, where: str) -> None:
    """Every field we send is one vLLM sends too (vLLM adds extras: token_ids, stop_reason, ...)."""
    assert set(ours) <= set(theirs), f"{where}: {sorted(set(ours) - set(theirs))} not in vLLM's answer"
    for key, value in ours.items():
        if isinstance(value, dict) and isinstance(theirs.get(key), dict):
            _keys_subset(value, theirs[key], f"{where}.{key}")
        elif isinstance(value, list) and value and isinstance(value[0], dict) and theirs.get(key):
            if key != "top_logprobs" or where.endswith("content"):
                _keys_subset(value[0], theirs[key][0], f"{where}.{key}[0]")


@pytest.mark.vllm
@pytest.mark.slow
def test_hf_server_answers_like_real_vllm_server(hf_server, vllm_address):
    ours, theirs = _scenarios(hf_server.address), _scenarios(vllm_address)
    for name in ("completion", "chat"):
        _keys_subset(ours[name], theirs[name], name)
        _keys_subset(ours[name]["choices"][0], theirs[name]["choices"][0], f"{name}.choices[0]")
        counts = ("prompt_tokens", "completion_tokens", "total_tokens")
        assert [ours[name]["usage"][k] for k in counts] == [theirs[name]["usage"][k] for k in counts]
    ours_c, theirs_c = ours["completion"]["choices"][0], theirs["completion"]["choices"][0]
    assert ours_c["text"] == theirs_c["text"] and ours_c["finish_reason"] == theirs_c["finish_reason"]
    assert ours_c["logprobs"]["tokens"] == theirs_c["logprobs"]["tokens"]
    assert ours_c["logprobs"]["text_offset"] == theirs_c["logprobs"]["text_offset"]
    assert ours_c["logprobs"]["token_logprobs"] == pytest.approx(theirs_c["logprobs"]["token_logprobs"], abs=1e-3)
    for a, b in zip(ours["chat"]["choices"], theirs["chat"]["choices"]):
        assert a["message"]["content"] == b["message"]["content"]
        # a piece of a multi-byte character: "\ufffd" + its real bytes here, "" + [] from vLLM (documented)
        mine = ["" if "\ufffd" in e["token"] else e["token"] for e in a["logprobs"]["content"]]
        assert mine == [e["token"] for e in b["logprobs"]["content"]]
        mine_lp, their_lp = ([e["logprob"] for e in x["logprobs"]["content"]] for x in (a, b))
        assert mine_lp == pytest.approx(their_lp, abs=1e-3)
    assert ours["chat_stream_text"] == theirs["chat_stream_text"] == ours["chat"]["choices"][0]["message"]["content"]
    assert ours["async_texts"] == theirs["async_texts"]
    assert ours["raw_stream_tail"] == theirs["raw_stream_tail"] == "[DONE]"
    assert ours["sampled_n"][0] == theirs["sampled_n"][0] == 3
    assert set(ours["sampled_n"][1]) <= set(theirs["sampled_n"][1])
    assert ours["greedy_n2"] == theirs["greedy_n2"] == (400, "n must be 1 when using greedy sampling")
    assert ours["unknown_model"] == theirs["unknown_model"] == (404, ["code", "message", "param", "type"])
