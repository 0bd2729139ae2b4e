"""Summary planning and the two summarisers, on plain message lists."""

from __future__ import annotations

import json

import httpx
import pytest
from memory_synth import conversation

from chatstate.errors import ConfigurationError, SummaryError
from chatstate.memory.history import split_turns, starts_turn
from chatstate.memory.summarize import (
    ExtractiveSummarizer,
    OpenAICompatibleSummarizer,
    SummaryRequest,
    plan_summary,
)
from chatstate.memory.tokens import TokenCounter
from chatstate.model import Message, Summary

COUNTER = TokenCounter("heuristic")


def test_plan_keeps_the_newest_whole_turns_and_covers_the_rest() -> None:
    history = conversation(60, seed=1, tool_rate=0.4)
    plan = plan_summary(None, history, counter=COUNTER, keep_tokens=1200, min_messages=10)
    assert plan is not None
    kept = history[len(plan.messages):]
    assert plan.messages == history[: len(plan.messages)]
    assert plan.start_seq == 1 and plan.end_seq == plan.messages[-1].seq
    assert starts_turn(plan.messages[-1], kept[0])  # the cut is a turn boundary
    assert plan.kept_tokens == sum(COUNTER.count_message(m) for m in kept)
    assert plan.kept_tokens <= 1200
    next_turn = split_turns(plan.messages)[-1]
    assert plan.kept_tokens + sum(COUNTER.count_message(m) for m in next_turn) > 1200
    assert plan.covered_tokens == sum(COUNTER.count_message(m) for m in plan.messages)


def test_plan_stacks_on_the_previous_summary() -> None:
    history = conversation(40, seed=2)[10:]
    previous = Summary(start_seq=1, end_seq=history[0].seq - 1, content="Earlier.", tokens=40)
    plan = plan_summary(previous, history, counter=COUNTER, keep_tokens=300, min_messages=10)
    assert plan is not None
    assert plan.start_seq == 1 and plan.previous is previous
    assert plan.covered_tokens == 40 + sum(COUNTER.count_message(m) for m in plan.messages)


def test_plan_needs_enough_messages_and_something_to_cover() -> None:
    history = conversation(3, seed=3)
    assert plan_summary(None, history, counter=COUNTER, keep_tokens=10, min_messages=10) is None
    # Everything fits in the kept part: nothing to cover.
    many = conversation(20, seed=3)
    assert plan_summary(None, many, counter=COUNTER, keep_tokens=10**6, min_messages=1) is None
    # The newest turn is always kept, even when it alone exceeds keep_tokens.
    plan = plan_summary(None, many, counter=COUNTER, keep_tokens=1, min_messages=1)
    assert plan is not None and plan.messages == many[: len(many) - len(split_turns(many)[-1])]


async def test_extractive_summary_is_deterministic_bounded_and_keeps_facts() -> None:
    messages = [
        Message(role="user", content="Hi! My name is Ada and my order number is 4815."),
        Message(role="assistant", content="Hello Ada. Let me check order 4815 for you."),
        Message(role="user", content="It was supposed to arrive in Lisbon on Friday."),
        Message(role="assistant", content="The order 4815 is delayed; it arrives in Lisbon "
                                          "on Monday."),
        Message(role="user", content="ok thanks"),
    ] * 5
    request = SummaryRequest(previous=None, messages=messages, max_tokens=40, counter=COUNTER)
    summarizer = ExtractiveSummarizer()
    first = await summarizer(request)
    assert first == await summarizer(request)
    assert 0 < COUNTER.count(first) <= 40
    assert "4815" in first
    assert "ok thanks" not in first.lower()


async def test_extractive_summary_folds_the_previous_one() -> None:
    previous = Summary(start_seq=1, end_seq=10,
                       content="User: Ada lives in Porto and prefers window seats.")
    messages = [Message(role="user", content="Book me a flight to Porto, window seat please."),
                Message(role="assistant", content="Booked a window seat to Porto.")]
    request = SummaryRequest(previous=previous, messages=messages, max_tokens=200,
                             counter=COUNTER)
    text = await ExtractiveSummarizer()(request)
    assert "Ada lives in Porto" in text
    assert "Booked a window seat" in text


async def test_extractive_summary_of_nothing_is_empty() -> None:
    request = SummaryRequest(previous=None, messages=[Message(role="system", content="x")],
                             max_tokens=50, counter=COUNTER)
    assert await ExtractiveSummarizer()(request) == ""


def _endpoint(seen: list[dict[str, object]], status: int = 200, body: object = None
              ) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append({"url": str(request.url), "auth": request.headers.get("authorization"),
                     "body": json.loads(request.content)})
        payload = body if body is not None else {
            "choices": [{"message": {"role": "assistant", "content": "Ada's order is late."}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 6},
        }
        return httpx.Response(status, json=payload)

    return httpx.MockTransport(handle)


async def test_openai_compatible_summarizer_calls_the_endpoint_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHATSTATE_LLM_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("CHATSTATE_LLM_API_KEY", "sk-test")
    monkeypatch.setenv("CHATSTATE_SUMMARY_MODEL", "small-model")
    seen: list[dict[str, object]] = []
    summarizer = OpenAICompatibleSummarizer(transport=_endpoint(seen))
    previous = Summary(start_seq=1, end_seq=2, content="Earlier summary.")
    request = SummaryRequest(
        previous=previous, max_tokens=123, counter=COUNTER,
        messages=[Message(role="user", content="Where is my order?"),
                  Message(role="assistant", tool_calls=[{"id": "c", "type": "function",
                          "function": {"name": "lookup_order", "arguments": "{}"}}])],
    )
    assert await summarizer(request) == "Ada's order is late."
    await summarizer.aclose()
    (call,) = seen
    assert call["url"] == "http://127.0.0.1:9/v1/chat/completions"
    assert call["auth"] == "Bearer sk-test"
    body = call["body"]
    assert isinstance(body, dict)
    assert body["model"] == "small-model" and body["max_tokens"] == 123
    prompt = body["messages"][1]["content"]
    assert "Earlier summary." in prompt and "user: Where is my order?" in prompt
    assert "[called lookup_order]" in prompt
    assert summarizer.last_usage == {"prompt_tokens": 50, "completion_tokens": 6}


@pytest.mark.parametrize("status,body", [
    (500, {"error": "boom"}),
    (200, {"unexpected": True}),
])
async def test_openai_compatible_summarizer_failures_are_summary_errors(
    status: int, body: object
) -> None:
    summarizer = OpenAICompatibleSummarizer(
        base_url="http://127.0.0.1:9/v1", api_key="k", transport=_endpoint([], status, body)
    )
    request = SummaryRequest(previous=None, messages=[Message(role="user", content="x")],
                             max_tokens=10, counter=COUNTER)
    with pytest.raises(SummaryError):
        await summarizer(request)
    await summarizer.aclose()


def test_openai_without_a_key_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHATSTATE_LLM_BASE_URL", "OPENAI_BASE_URL", "CHATSTATE_LLM_API_KEY",
                 "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAICompatibleSummarizer()
    # A local endpoint needs no key.
    OpenAICompatibleSummarizer(base_url="http://127.0.0.1:11434/v1")
