"""Gsm8kInteraction: terminates on a correct ``#### N`` answer, otherwise asks to try again."""

from __future__ import annotations

import asyncio

import pytest

from verl.interactions.gsm8k_interaction import CORRECT_REPLY, RETRY_REPLY, Gsm8kInteraction


def chat(answer):
    return [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": answer}]


@pytest.mark.parametrize(
    "answer, done, reply, score",
    [
        ("3 + 4 = 7\n#### 7", True, CORRECT_REPLY, 1.0),
        ("3 + 4 = 8\n#### 8", False, RETRY_REPLY, 0.0),
        ("the answer is 7", False, RETRY_REPLY, 0.0),  # strict format: no "####", no credit
    ],
)
def test_gsm8k_interaction_judges_the_last_assistant_message(answer, done, reply, score):
    async def run():
        inter = Gsm8kInteraction({"name": "gsm8k"})
        iid = await inter.start_interaction("x", ground_truth="7", name="gsm8k", query="ignored")
        result = await inter.generate_response(iid, chat(answer), generation_logits=None, name="gsm8k")
        final = await inter.calculate_score(iid)
        await inter.finalize_interaction(iid)
        return result, final, iid in inter._instance_dict

    (got_done, got_reply, got_score, extra), final, still_there = asyncio.run(run())
    assert (got_done, got_reply, got_score, extra) == (done, reply, score, {})
    assert final == score
    assert not still_there


def test_gsm8k_interaction_generates_an_instance_id_and_takes_its_name_from_config():
    inter = Gsm8kInteraction({"name": "math_user"})
    iid = asyncio.run(inter.start_interaction(ground_truth="1"))
    assert inter.name == "math_user" and len(iid) == 36
