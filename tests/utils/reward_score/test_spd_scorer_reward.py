"""SPD reward: the A/B/C/D table, hybrid prefixes, answer checking, the target client's faults (HTTP 500s, a
server that sleeps, a closed port: each bounded in wall time) and the happy path against the real OpenAI server
(hf backend, tiny model)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402

from verl.utils.reward_score import default_compute_score, known_data_sources  # noqa: E402
from verl.utils.reward_score.spd_scorer_reward import (  # noqa: E402
    completions_url,
    compute_score,
    compute_score_batch,
    first_rejection,
    get_tokenizer,
    hybrid_prefix,
    spd_reward,
    verify_hybrid_correctness,
    vllm_generate,
    vllm_generate_detailed,
)

FAST = {"timeout": 0.5, "retries": 3, "backoff": 0.05}  # fault tests: bound = 3 * 0.5 + 0.05 + 0.1 s per prompt


# ---------------------------------------------------------------------------------------------- fake targets
class FakeTarget:
    """An aiohttp server on 127.0.0.1 running ``handler`` on a background thread; counts requests and peak load."""

    def __init__(self, handler):
        self.handler, self.requests, self.in_flight, self.peak = handler, 0, 0, 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    async def _wrapped(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await self.handler(request, self.requests)
        finally:
            self.in_flight -= 1

    def __enter__(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/completions", self._wrapped)

        async def start():
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop)
        assert self._ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _echo(request: web.Request, n: int) -> web.Response:
    body = await request.json()
    await asyncio.sleep(0.05)
    return web.json_response({"choices": [{"index": 0, "text": f" echo {len(body['prompt'])}"}]})


async def _always_500(request: web.Request, n: int) -> web.Response:
    return web.json_response({"error": {"message": "boom"}}, status=500)


async def _500_twice_then_ok(request: web.Request, n: int) -> web.Response:
    if n <= 2:
        return web.json_response({"error": {"message": "warming up"}}, status=503)
    return web.json_response({"choices": [{"index": 0, "text": " 42"}]})


async def _bad_request(request: web.Request, n: int) -> web.Response:
    return web.json_response({"error": {"message": "prompt too long"}}, status=400)


async def _sleeps(request: web.Request, n: int) -> web.Response:
    await asyncio.sleep(30)
    return web.json_response({"choices": [{"index": 0, "text": "late"}]})


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


def _sample_extra(url: str, model_path: str = "unused", **extra) -> dict:
    # draft 10 11 12 13 vs target 10 99 12 98: mismatches at positions 1 and 3
    return {
        "context_ids": [1, 2, 3],
        "spd_draft_ids": [10, 11, 12, 13],
        "spd_target_ids": [10, 99, 12, 98],
        "spd_decisions": [1, 1],
        "target_model_url": url,
        "model_path": model_path,
        "max_tokens": 4,
        "eos_token_id": 0,  # not among the draft's ids
        **extra,
    }


# ---------------------------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("completion", "truth", "expected"),
    [
        ("so the answer is 42.", "42", True),  # flexible: last number, trailing period ignored
        ("3 + 4 = 7 ... #### 1,007", "1007", True),  # strict #### wins, commas removed
        ("#### 42 and later 43", "42", True),  # the last #### answer, not the last number
        ("42 or maybe 43", "42", False),  # the final number is 43
        ("it costs $5.00", "$5", True),  # compared by value
        ("-3.5 degrees", "-3.50", True),
        ("no number here", "7", False),
        ("the  capital is\nParis today", "capital is Paris", True),  # whitespace normalised on both sides
        ("the capital is Lyon", "Paris", False),
        ("anything", ["Paris", "thing"], True),  # any of several truths
        (None, "42", False),  # no completion (failed target)
        ("", "", False),
    ],
)
def test_verify_hybrid_correctness(completion, truth, expected):
    assert verify_hybrid_correctness(completion, truth) is expected


def test_first_rejection_per_mismatch_and_per_position_decisions():
    draft, target = [5, 6, 7, 8, 9], [5, 1, 7, 2, 3]  # mismatches at 1, 3, 4
    assert first_rejection(draft, target, [1, 1, 1]) == (None, 3)  # every mismatch accepted
    assert first_rejection(draft, target, [1, 0, 1]) == (3, 1)  # second mismatch (position 3) rejected
    assert first_rejection(draft, target, [0, 1, 1]) == (1, 0)  # plain speculative decoding stops at 1
    # per-position form (len K): entries at matching positions 0 and 2 are ignored
    assert first_rejection(draft, target, [0, 1, 0, 0, 1]) == (3, 1)
    assert first_rejection([4, 4], [4, 4], []) == (None, 0)  # no mismatch at all
    with pytest.raises(ValueError, match="one per draft token"):
        first_rejection(draft, target, [1, 1])
    with pytest.raises(ValueError, match="spd_target_ids"):
        first_rejection(draft, target[:4], [1, 1])


def test_hybrid_prefix_is_context_plus_accepted_draft_plus_target_token():
    context, draft, target = [1, 2], [5, 6, 7, 8], [5, 9, 7, 3]
    assert hybrid_prefix(context, draft, target, 1) == [1, 2, 5, 9]  # c + d_1 + t_2
    assert hybrid_prefix(context, draft, target, 3) == [1, 2, 5, 6, 7, 3]  # c + d_1..d_3 + t_4
    assert hybrid_prefix(context, draft, target, None) == [1, 2, 5, 6, 7, 8]  # nothing rejected: all of d


@pytest.mark.parametrize(
    ("correct", "accepted", "expected"),
    [
        (True, 2, 1.125),  # A: 1 + 0.5 * 2 / 8
        (True, 8, 1.5),  # A: 1 + 0.5 * 8 / 8
        (True, 0, 1.0),  # B
        (False, 3, -1.0),  # C: -beta
        (False, 0, 0.0),  # D
    ],
)
def test_spd_reward_table(correct, accepted, expected):
    assert spd_reward(correct, accepted, 8, alpha=0.5, beta=1.0) == pytest.approx(expected)


def test_spd_reward_alpha_beta_configurable():
    assert spd_reward(True, 1, 4, alpha=2.0, beta=3.0) == pytest.approx(1.5)  # 1 + 2 * 1 / 4
    assert spd_reward(False, 1, 4, alpha=2.0, beta=3.0) == pytest.approx(-3.0)


def test_completions_url_accepts_base_v1_or_endpoint():
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/completions"):
        assert completions_url(url) == "http://h:1/v1/completions"


def test_spd_scorer_is_a_known_data_source():
    assert "spd_scorer" in known_data_sources()


def test_missing_inputs_name_the_key():
    extra = _sample_extra("http://127.0.0.1:1")
    del extra["spd_decisions"]
    with pytest.raises(ValueError, match="spd_decisions"):
        compute_score("spd_scorer", "", "42", extra)
    with pytest.raises(ValueError, match="target_model_url"):
        compute_score("spd_scorer", "", "42", _sample_extra(""))
    with pytest.raises(ValueError, match="on_target_failure"):
        compute_score("spd_scorer", "", "42", _sample_extra("http://127.0.0.1:1", on_target_failure="ignore"))
    with pytest.raises(ValueError, match="unknown keyword"):
        compute_score("spd_scorer", "", "42", _sample_extra("http://127.0.0.1:1"), alpah=0.1)


# ---------------------------------------------------------------------------------------------- client + faults
def test_vllm_generate_bounds_concurrency_and_keeps_order():
    with FakeTarget(_echo) as url:
        prompts = [[1] * n for n in range(1, 11)]
        texts = vllm_generate(url, prompts, 4, concurrency=3)
    assert texts == [f" echo {n}" for n in range(1, 11)]  # one answer per prompt, in order


def test_vllm_generate_peak_in_flight_is_the_concurrency():
    fake = FakeTarget(_echo)
    with fake as url:
        vllm_generate(url, ["a"] * 12, 4, concurrency=3)
    assert fake.requests == 12 and fake.peak == 3


def test_http_500_is_retried_then_fails_in_bounded_time():
    fake = FakeTarget(_always_500)
    with fake as url:
        errors: list = []
        start = time.perf_counter()
        texts = vllm_generate(url, ["a", "b"], 4, errors=errors, **FAST)
        wall = time.perf_counter() - start
    assert texts == [None, None]
    assert all("HTTP 500" in e for e in errors)
    assert fake.requests == 2 * 3  # retries = attempts per prompt
    assert wall < 2.0


def test_transient_5xx_recovers_within_the_retries():
    with FakeTarget(_500_twice_then_ok) as url:
        (outcome,) = vllm_generate_detailed(url, ["a"], 4, **FAST)
    assert outcome.text == " 42" and outcome.attempts == 3 and outcome.error is None


def test_client_errors_are_not_retried():
    fake = FakeTarget(_bad_request)
    with fake as url:
        (outcome,) = vllm_generate_detailed(url, ["a"], 4, **FAST)
    assert outcome.text is None and "HTTP 400" in outcome.error and fake.requests == 1


def test_sleeping_target_times_out_in_bounded_time():
    fake = FakeTarget(_sleeps)
    with fake as url:
        start = time.perf_counter()
        result = compute_score("spd_scorer", "", "42", _sample_extra(url), timeout=0.3, retries=2, backoff=0.05)
        wall = time.perf_counter() - start
    assert result["target_failed"] and result["score"] == 0.0 and result["scenario"] == "failed"
    assert fake.requests == 2
    assert 0.6 <= wall < 2.5  # 2 attempts x 0.3 s + 0.05 s backoff, not the server's 30 s


def test_closed_port_scores_zero_or_raises_naming_the_url():
    url = _closed_port_url()
    start = time.perf_counter()
    result = compute_score("spd_scorer", "", "42", _sample_extra(url), **FAST)
    assert time.perf_counter() - start < 2.0
    assert result["target_failed"] and result["score"] == 0.0 and not result["correct"]
    assert result["num_mismatches"] == 2 and result["accepted_mismatches"] == 2  # bookkeeping still reported
    with pytest.raises(RuntimeError, match=f"{url}/v1/completions"):
        compute_score("spd_scorer", "", "42", _sample_extra(url), on_target_failure="raise", **FAST)


def test_batch_with_failing_target_marks_every_row_and_is_bounded():
    fake = FakeTarget(_always_500)
    with fake as url:
        start = time.perf_counter()
        rows = compute_score_batch(["spd_scorer"] * 8, [""] * 8, ["42"] * 8, [_sample_extra(url)] * 8, **FAST)
        wall = time.perf_counter() - start
    assert [r["target_failed"] for r in rows] == [True] * 8 and {r["score"] for r in rows} == {0.0}
    assert wall < 2.0  # concurrent: about one prompt's bound, not eight


# ---------------------------------------------------------------------------------------------- real target
@pytest.fixture(scope="module")
def target(tiny_model_dir):
    from verl.workers.rollout.openai_server import OpenAIServer

    server = OpenAIServer(tiny_model_dir, backend="hf", max_batch_size=16, max_wait_ms=10)
    url = server.start()
    yield url, tiny_model_dir
    server.stop()


def _real_extra(tokenizer, url: str, model_path: str, decisions: list[int]) -> dict:
    context = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is two plus three"}], add_generation_prompt=True, tokenize=False
    )
    draft = tokenizer(" the answer is five", add_special_tokens=False)["input_ids"][:4]
    target = list(draft)
    target[1], target[3] = draft[1] + 1, draft[3] + 1  # two mismatches: positions 1 and 3
    extra = {"context_text": context, "spd_draft_ids": draft, "spd_target_ids": target, "spd_decisions": decisions}
    return {**extra, "target_model_url": url + "/v1/completions", "model_path": model_path, "max_tokens": 8}


def test_happy_path_all_four_scenarios_against_the_real_server(target):
    url, model_path = target
    tokenizer = get_tokenizer(model_path)
    accept = _real_extra(tokenizer, url, model_path, [1, 1])  # both mismatches accepted -> A or C
    reject = _real_extra(tokenizer, url, model_path, [0, 1])  # first mismatch rejected -> B or D
    context_ids = tokenizer(accept["context_text"], add_special_tokens=False)["input_ids"]
    truths = {}
    for name, extra in (("accept", accept), ("reject", reject)):
        # the target's own greedy completion of the hybrid prefix, fetched directly: the truth that must verify
        j, _ = first_rejection(extra["spd_draft_ids"], extra["spd_target_ids"], extra["spd_decisions"])
        prefix = hybrid_prefix(context_ids, extra["spd_draft_ids"], extra["spd_target_ids"], j)
        (completion,) = vllm_generate(url, [prefix], 8)
        generated = tokenizer.decode(prefix[len(context_ids) :], skip_special_tokens=True)
        truths[name] = " ".join((generated + completion).split())
    a = compute_score("spd_scorer", "", truths["accept"], accept)
    b = compute_score("spd_scorer", "", truths["reject"], reject)
    c = compute_score("spd_scorer", "", "zebra-not-generated", accept, beta=2.0)
    d = compute_score("spd_scorer", "", "zebra-not-generated", reject)
    assert (a["scenario"], b["scenario"], c["scenario"], d["scenario"]) == ("A", "B", "C", "D")
    assert a["score"] == pytest.approx(1 + 0.5 * 2 / 4)  # K = 4 draft tokens, 2 accepted mismatches
    assert (b["score"], c["score"], d["score"]) == (1.0, -2.0, 0.0)
    assert (a["accepted_length"], b["accepted_length"]) == (4, 1)  # all of d; d_1 then t_2
    assert a["num_mismatches"] == b["num_mismatches"] == 2
    assert not any(r["target_failed"] for r in (a, b, c, d)) and a["target_latency_s"] > 0


def test_batch_equals_per_sample_and_default_compute_score_dispatches(target):
    url, model_path = target
    tokenizer = get_tokenizer(model_path)
    extras = [_real_extra(tokenizer, url, model_path, decisions) for decisions in ([1, 1], [0, 0], [1, 0], [0, 1])]
    truths = ["zebra", "5", "answer", "the"]
    batched = compute_score_batch(["spd_scorer"] * 4, [""] * 4, truths, extras, concurrency=4)
    for extra, truth, row in zip(extras, truths, batched):
        single = default_compute_score("spd_scorer", "", truth, extra)
        drop = ("target_latency_s",)
        assert {k: v for k, v in single.items() if k not in drop} == {k: v for k, v in row.items() if k not in drop}


def test_an_accepted_end_of_sequence_ends_the_answer_without_asking_the_target(target):
    """A draft that ends the answer (EOS) and is accepted whole: decoding stops there, so the answer is the draft's
    text and the target gets no request (a closed port would fail the sample otherwise); rejected before the EOS,
    the target completes as usual."""
    url, model_path = target
    tokenizer = get_tokenizer(model_path)
    context = tokenizer.apply_chat_template(
        [{"role": "user", "content": "what is 2 + 3"}], add_generation_prompt=True, tokenize=False
    )
    draft = tokenizer(" The sum is 5. #### 5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    target_ids = [draft[0], draft[1] + 1, *draft[2:]]  # one mismatch, at position 1
    extra = {"context_text": context, "spd_draft_ids": draft, "spd_target_ids": target_ids, "model_path": model_path}
    done = compute_score("spd_scorer", "", "5", {**extra, "spd_decisions": [1]}, target_model_url=_closed_port_url())
    assert not done["target_failed"] and done["correct"] and done["scenario"] == "A"
    assert done["target_latency_s"] == 0.0 and done["accepted_length"] == len(draft)
    # rejected at the mismatch: the hybrid prefix has no EOS, so the served target is asked to complete it
    asked = compute_score("spd_scorer", "", "5", {**extra, "spd_decisions": [0]}, target_model_url=url, max_tokens=4)
    assert not asked["target_failed"] and asked["target_latency_s"] > 0 and asked["accepted_length"] == 1
