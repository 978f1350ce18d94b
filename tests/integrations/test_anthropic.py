"""wrap_anthropic through the real SDK, with HTTP replayed from recorded cassettes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx2
import pytest

import allotment as al
from allotment.integrations._usage import AnthropicStreamUsage, anthropic_usage
from allotment.integrations.anthropic import wrap_anthropic

from support.cassettes import expected_cost, expected_hold, replay, sent, spent
from support.http import client as http_client

ACME = "tenant:acme"
SONNET = "claude-sonnet-4-6"
ASK = [{"role": "user", "content": "What's the capital of France?"}]


def client(guard: al.Guard, **options: Any) -> Any:
    return wrap_anthropic(anthropic.Anthropic(api_key="sk-test", max_retries=0), guard,
                          tenant="acme", **options)


def test_messages_create_commits_the_recorded_usage(funded: al.Guard) -> None:
    with replay("anthropic_messages.yaml") as cassette:
        reply = client(funded).messages.create(model=SONNET, max_tokens=1024, messages=ASK)
    assert "Paris" in reply.content[0].text and cassette.play_count == 1
    assert spent(funded) == (expected_cost("anthropic", SONNET, 14, 11), 25)
    assert isinstance(client(funded), anthropic.Anthropic)
    assert client(funded).user_agent == anthropic.Anthropic(api_key="k").user_agent


def test_create_with_stream_true(funded: al.Guard) -> None:
    with replay("anthropic_messages_stream.yaml"):
        events = list(client(funded).messages.create(
            model=SONNET, max_tokens=1024, messages=ASK, stream=True))
    assert events[0].type == "message_start"
    # message_start says 21 in / 7 out; the cumulative message_delta says 21 / 13
    assert spent(funded) == (expected_cost("anthropic", SONNET, 21, 13), 34)


def test_messages_stream_helper(funded: al.Guard) -> None:
    with replay("anthropic_messages_stream.yaml") as cassette, client(funded).messages.stream(
            model=SONNET, max_tokens=1024, messages=ASK) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 13 and cassette.play_count == 1
    assert spent(funded) == (expected_cost("anthropic", SONNET, 21, 13), 34)


def test_tool_use(funded: al.Guard) -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}},
             {"name": "get_time", "input_schema": {"type": "object"}}]
    with replay("anthropic_tool_use.yaml"):
        reply = client(funded).messages.create(model=SONNET, max_tokens=1024, messages=ASK,
                                               tools=tools)
    assert [block.type for block in reply.content].count("tool_use") == 2
    assert spent(funded) == (expected_cost("anthropic", SONNET, 721, 112), 833)


def test_prompt_caching_prices_cache_writes_and_reads_apart(funded: al.Guard) -> None:
    model = "claude-3-7-sonnet-20250219"
    system = [{"type": "text", "text": "long novel", "cache_control": {"type": "ephemeral"}}]
    wrapped = client(funded)
    with replay("anthropic_prompt_caching.yaml"):
        for _ in range(2):
            wrapped.messages.create(model=model, max_tokens=2048, system=system, messages=ASK)
    write = expected_cost("anthropic", model, 21 + 1733, 561, cache_write=1733)
    read = expected_cost("anthropic", model, 21 + 1733, 568, cache_read=1733)
    assert write > read  # a cache write costs more than a cache read
    assert spent(funded) == (write + read, (1754 + 561) + (1754 + 568))


def test_legacy_thinking_stream_keeps_the_start_input(funded: al.Guard) -> None:
    model = "claude-3-7-sonnet-20250219"
    with replay("anthropic_thinking_stream_legacy.yaml"):
        for _ in client(funded).messages.create(
                model=model, max_tokens=2048, messages=ASK, stream=True,
                thinking={"type": "enabled", "budget_tokens": 1024}):
            pass
    # the old delta format carries output only: input stays as message_start said
    assert spent(funded) == (expected_cost("anthropic", model, 52, 216), 268)


def test_a_denied_call_sends_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.0001")
    with replay("anthropic_messages.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        client(guard).messages.create(model=SONNET, max_tokens=1024, messages=ASK)
    assert cassette.play_count == 0


def test_caps_reach_the_outgoing_body(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, max_tokens=512,
                                                       model="claude-haiku-4-5")])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", f"anthropic:{SONNET}"),
                 al.usd("0.01"))
    guard.set_access(ACME, tools_allow=["get_weather"])
    with replay("anthropic_tool_use.yaml"):
        client(guard).messages.create(
            model=SONNET, max_tokens=1024, messages=ASK,
            tools=[{"name": "get_weather", "input_schema": {"type": "object"}},
                   {"name": "get_time", "input_schema": {"type": "object"}}])
    body = sent()
    assert (body["model"], body["max_tokens"]) == ("claude-haiku-4-5", 512)
    assert [t["name"] for t in body["tools"]] == ["get_weather"]


def test_async_client(funded: al.Guard) -> None:
    async def main() -> None:
        wrapped = wrap_anthropic(anthropic.AsyncAnthropic(api_key="sk-test"), funded,
                                 tenant="acme")
        assert isinstance(wrapped, anthropic.AsyncAnthropic)
        with replay("anthropic_messages.yaml"):
            await wrapped.messages.create(model=SONNET, max_tokens=1024, messages=ASK)
        with replay("anthropic_messages_stream.yaml"):
            async with wrapped.messages.stream(model=SONNET, max_tokens=1024,
                                               messages=ASK) as stream:
                await stream.get_final_message()

    asyncio.run(main())
    assert spent(funded) == (expected_cost("anthropic", SONNET, 14, 11)
                             + expected_cost("anthropic", SONNET, 21, 13), 25 + 34)


def test_a_provider_error_releases(funded: al.Guard) -> None:
    def overloaded(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(529, json={"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}})

    http = http_client("anthropic", overloaded)
    wrapped = wrap_anthropic(anthropic.Anthropic(api_key="sk-test", http_client=http,
                                                 max_retries=0), funded, tenant="acme")
    with pytest.raises(anthropic.APIStatusError):
        wrapped.messages.create(model=SONNET, max_tokens=100, messages=ASK)
    assert spent(funded) == (0, 0)


def test_a_broken_stream_commits_the_usage_it_saw(funded: al.Guard) -> None:
    start = {"type": "message_start", "message": {
        "id": "m", "type": "message", "role": "assistant", "model": SONNET, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 30, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": None, "stop_sequence": None},
             "usage": {"output_tokens": 40}}

    def cut_off(request: httpx2.Request) -> httpx2.Response:
        events = [("message_start", start), ("message_delta", delta)]
        data = "".join(f"event: {name}\ndata: {json.dumps(e)}\n\n" for name, e in events)
        return httpx2.Response(200, content=data.encode(),
                               headers={"content-type": "text/event-stream"})

    http = http_client("anthropic", cut_off)
    wrapped = wrap_anthropic(anthropic.Anthropic(api_key="sk-test", http_client=http),
                             funded, tenant="acme")
    stream = wrapped.messages.create(model=SONNET, max_tokens=500, messages=ASK, stream=True)
    for event in stream:  # the connection ends before message_stop
        assert event.type in ("message_start", "message_delta")
    assert spent(funded) == (expected_cost("anthropic", SONNET, 30, 40), 70)


# -- service tiers ---------------------------------------------------------------------------


def test_a_tier_genai_prices_does_not_know_is_charged_the_standard_price(
        funded: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    """Anthropic reports `usage.service_tier`; genai-prices knows no priority price for
    Anthropic, so a call served at priority costs the standard price, and the log says so."""
    with replay("anthropic_messages_priority.yaml"), caplog.at_level("WARNING", "allotment"):
        reply = client(funded).messages.create(model=SONNET, max_tokens=1024, messages=ASK,
                                               service_tier="auto")
    assert reply.usage.service_tier == "priority"
    assert spent(funded) == (expected_cost("anthropic", SONNET, 14, 11), 25)
    assert "service tier 'priority'" in caplog.text
    # held at the highest tier known for the model: its standard price (batch is cheaper)
    (held,) = funded.audit("acme", types=["reservation.reserved"])
    assert held.estimate[0].amount == expected_hold("anthropic", SONNET, held, max_tokens=1024)


def test_a_batch_served_usage_is_charged_the_batch_price() -> None:
    """Message Batches results say `batch`: genai-prices' batch processing price."""
    from genai_prices import Usage, calc_price

    usage = anthropic_usage({"input_tokens": 14, "output_tokens": 11,
                             "service_tier": "batch"})
    assert usage is not None and usage.service_tier == "batch"
    batch = calc_price(Usage(input_tokens=14, output_tokens=11), model_ref=SONNET,
                       provider_id="anthropic", price_context={"processing": "batch"})
    assert al.pricing.Pricer().cost("anthropic", SONNET, usage) == al.usd(batch.total_price)
    assert batch.total_price < calc_price(Usage(input_tokens=14, output_tokens=11),
                                          model_ref=SONNET,
                                          provider_id="anthropic").total_price


def test_a_stream_keeps_the_tier_message_start_said(funded: al.Guard) -> None:
    with replay("anthropic_messages_stream.yaml"):
        seen = AnthropicStreamUsage()
        for event in client(funded).messages.create(model=SONNET, max_tokens=1024,
                                                    messages=ASK, stream=True,
                                                    service_tier="standard_only"):
            seen.see(event)
    assert seen.usage is not None and seen.usage.service_tier == "standard"
    assert spent(funded) == (expected_cost("anthropic", SONNET, 21, 13), 34)
    (held,) = funded.audit("acme", types=["reservation.reserved"])
    assert held.estimate[0].amount == expected_hold("anthropic", SONNET, held, max_tokens=1024)
