"""wrap_openai through the real SDK, with HTTP replayed from recorded cassettes."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx2
import openai
import pytest

import allotment as al
from allotment.integrations.openai import wrap_openai

from support.cassettes import expected_cost, expected_hold, replay, sent, spent
from support.http import client as http_client

ACME = "tenant:acme"


def client(guard: al.Guard, **options: Any) -> Any:
    return wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), guard, tenant="acme",
                       **options)


def test_chat_commits_the_price_of_the_recorded_usage(funded: al.Guard) -> None:
    with replay("openai_chat.yaml") as cassette:
        reply = client(funded).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert reply.choices[0].message.content == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 9, 9), 18)
    assert sent()["max_completion_tokens"] == 4_096  # a bound set from policy: the estimate holds


def test_the_wrapped_client_is_still_an_openai_client(funded: al.Guard) -> None:
    wrapped = client(funded)
    assert isinstance(wrapped, openai.OpenAI)
    assert type(wrapped.with_options(timeout=5)) is type(wrapped)
    original = openai.OpenAI(api_key="sk-test")
    wrap_openai(original, funded, tenant="acme")
    assert type(original) is openai.OpenAI  # nothing global, not even the original
    assert wrapped.user_agent == original.user_agent  # the provider sees the same client
    assert type(wrapped).__qualname__ == "GuardedOpenAI"


def test_tool_call_chat_and_raw_response(funded: al.Guard) -> None:
    messages = [{"role": "user", "content": "weather?"}]
    with replay("openai_chat_tool_calls.yaml") as cassette:
        raw = client(funded).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, max_tokens=300,
            tools=[{"type": "function", "function": {"name": "get_weather",
                                                     "parameters": {"type": "object"}}}])
        assert raw.parse().choices[0].message.tool_calls
    assert cassette.play_count == 1
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 207, 46), 253)
    assert sent()["max_tokens"] == 300  # the caller's own field and value are kept


def test_chat_stream_commits_from_the_usage_chunk(funded: al.Guard) -> None:
    with replay("openai_chat_stream.yaml") as cassette:
        stream = client(funded).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "capital of the UK?"}],
            stream=True)
        assert isinstance(stream, openai.Stream)
        chunks = list(stream)
    assert cassette.play_count == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert sent()["stream_options"] == {"include_usage": True}
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 53, 15), 68)


def test_chat_stream_helper_goes_through_the_same_path(funded: al.Guard) -> None:
    with replay("openai_chat_stream.yaml") as cassette, client(
            funded).chat.completions.stream(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "UK?"}]) as stream:
        final = stream.get_final_completion()
    assert final.usage is not None and final.usage.prompt_tokens == 53
    assert cassette.play_count == 1
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 53, 15), 68)


def test_responses_create_and_parse(funded: al.Guard) -> None:
    wrapped = client(funded)
    with replay("openai_responses.yaml") as cassette:
        first = wrapped.responses.create(model="gpt-4.1-nano",
                                         input="What is the capital of France?")
        wrapped.responses.parse(model="gpt-4.1-nano", input="What is the capital of France?")
    assert "Paris" in first.output_text
    assert cassette.play_count == 2
    assert sent()["max_output_tokens"] == 4_096
    cost = expected_cost("openai", "gpt-4.1-nano", 14, 8)
    assert spent(funded) == (2 * cost, 2 * 22)


def test_responses_reasoning_tokens_are_part_of_the_output(funded: al.Guard) -> None:
    with replay("openai_responses_reasoning.yaml"):
        reply = client(funded).responses.create(model="gpt-5-nano",
                                                input="Count r's in strawberry")
    assert reply.usage is not None and reply.usage.output_tokens_details.reasoning_tokens == 320
    assert spent(funded) == (expected_cost("openai", "gpt-5-nano", 11, 327), 338)


def test_responses_stream_commits_from_the_completed_event(funded: al.Guard) -> None:
    with replay("openai_responses_stream.yaml"):
        events = list(client(funded).responses.create(model="gpt-4.1-nano",
                                                      input="What is 2+2?", stream=True))
    assert events[-1].type == "response.completed"
    assert spent(funded) == (expected_cost("openai", "gpt-4.1-nano", 14, 9), 23)


def test_responses_stream_helper(funded: al.Guard) -> None:
    with replay("openai_responses_stream.yaml"), client(funded).responses.stream(
            model="gpt-4.1-nano", input="What is 2+2?") as stream:
        final = stream.get_final_response()
    assert final.usage is not None and final.usage.total_tokens == 23
    assert spent(funded) == (expected_cost("openai", "gpt-4.1-nano", 14, 9), 23)


def test_embeddings_are_charged_as_llm_embedding(funded: al.Guard) -> None:
    with replay("openai_embeddings.yaml"):
        client(funded).embeddings.create(model="text-embedding-ada-002",
                                         input="Tell me a joke about opentelemetry")
    assert spent(funded) == (expected_cost("openai", "text-embedding-ada-002", 8, 0), 8)
    (reserved,) = funded.audit("acme", types=["reservation.reserved"])
    assert reserved.action == "llm.embedding openai:text-embedding-ada-002"


def test_a_denied_call_sends_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.000001")
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        client(guard).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert cassette.play_count == 0
    handled = client(guard, on_deny=lambda denied: f"denied: {denied.decision.reason}")
    with replay("openai_chat.yaml") as cassette:
        answer = handled.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert answer == "denied: BUDGET_EXCEEDED" and cassette.play_count == 0


def test_caps_reach_the_outgoing_body(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model="gpt-4o-mini",
                                                       max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    guard.set_access(ACME, tools_deny=["shell*"])
    with replay("openai_chat_tool_calls.yaml"):
        client(guard).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "weather?"}],
            max_completion_tokens=2_000, tools=[
                {"type": "function", "function": {"name": "get_weather"}},
                {"type": "function", "function": {"name": "shell_exec"}}])
    body = sent()
    assert (body["model"], body["max_completion_tokens"]) == ("gpt-4o-mini", 100)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]


def test_elastic_fit_shrinks_max_tokens(guard: al.Guard) -> None:
    # room for the input and about 1,000 output tokens at the default tier's $0.60 per million
    guard.set_budget(ACME, usd="0.0006153")
    with replay("openai_chat.yaml") as cassette:
        client(guard).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
            service_tier="default")
    assert cassette.play_count == 1
    assert 900 < sent()["max_completion_tokens"] < 1_100


def test_subject_from_scope_and_per_call_headers(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme/workflow:chat", usd=1, per="run")
    wrapped = wrap_openai(openai.OpenAI(api_key="sk-test"), guard, tenant="acme")
    with replay("openai_chat.yaml") as cassette, al.scope(workflow="chat"):
        wrapped.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
            extra_headers={"x-allotment-run": "r-9"})
    headers = {k.lower() for k in cassette.requests[0].headers}
    assert not any(h.startswith("x-allotment") for h in headers)
    (run,) = guard.balances("tenant:acme/workflow:chat/run:r-9")
    assert run.spent == expected_cost("openai", "gpt-4o-mini", 9, 9)


def test_a_user_id_in_a_header_is_kept_exactly(guard: al.Guard) -> None:
    """A header's name is a kind (folded); its value is an id, kept case and all."""
    guard.set_budget(ACME, usd=1, per="user")
    wrapped = wrap_openai(openai.OpenAI(api_key="sk-test"), guard, tenant="acme")
    with replay("openai_chat.yaml"):
        wrapped.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
            extra_headers={"X-Allotment-User": "Bob+Test@Example.com|1"})
    (user,) = guard.balances(f"{ACME}/user:{al.quote_value('Bob+Test@Example.com|1')}")
    assert user.spent == expected_cost("openai", "gpt-4o-mini", 9, 9)
    assert user.scope == f"{ACME}/user:Bob+Test@Example.com%7C1"


def test_the_remembered_subject_gives_way_to_scopes_and_headers(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    guard.set_budget("tenant:acme/workflow:chat", usd=1)
    wrapped = client(guard)
    one = expected_cost("openai", "gpt-4o-mini", 9, 9)

    def call(**options: Any) -> None:
        with replay("openai_chat.yaml"):
            wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
                **options)

    call()
    with al.scope(workflow="chat"):
        call()
    call()
    call(extra_headers={"x-allotment-workflow": "chat"})
    (chat,) = guard.balances("tenant:acme/workflow:chat", include_children=False)
    (tenant,) = guard.balances(ACME, include_children=False)
    assert (chat.spent, tenant.spent) == (2 * one, 4 * one)


def test_an_unknown_model_is_refused_or_priced_by_fallback(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.Denied) as denied:
        client(guard).chat.completions.create(
            model="my-finetune-9", messages=[{"role": "user", "content": "Hello!"}])
    assert denied.value.decision.reason == "PRICE_UNKNOWN" and cassette.play_count == 0
    fallback = al.pricing.Pricer(fallback={"input_mtok": 1, "output_mtok": 2})
    with replay("openai_chat.yaml"):
        client(guard, pricer=fallback).chat.completions.create(
            model="my-finetune-9", messages=[{"role": "user", "content": "Hello!"}])
    assert guard.balances(ACME)[0].spent == al.usd(Decimal(9 * 1 + 9 * 2) / 10**6).amount


def test_async_client(funded: al.Guard) -> None:
    async def main() -> None:
        wrapped = wrap_openai(openai.AsyncOpenAI(api_key="sk-test"), funded, tenant="acme")
        assert isinstance(wrapped, openai.AsyncOpenAI)
        with replay("openai_chat.yaml"):
            await wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
        with replay("openai_chat_stream.yaml"):
            stream = await wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "UK?"}],
                stream=True)
            async for _ in stream:
                pass

    asyncio.run(main())
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 9, 9)
                             + expected_cost("openai", "gpt-4o-mini", 53, 15), 18 + 68)


# -- error and abandonment paths, with a mock transport ------------------------------------


def mock_client(guard: al.Guard, handler: Any) -> Any:
    http = http_client("openai", handler)
    return wrap_openai(openai.OpenAI(api_key="sk-test", http_client=http, max_retries=2),
                       guard, tenant="acme")


def test_a_provider_error_releases_and_reraises(funded: al.Guard) -> None:
    calls = []

    def refuse(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(400, json={"error": {"message": "bad request"}})

    with pytest.raises(openai.BadRequestError):
        mock_client(funded, refuse).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert len(calls) == 1
    assert spent(funded) == (0, 0)
    assert [r.type for r in funded.audit("acme")][-1] == "reservation.released"


def test_sdk_retries_are_one_reservation(funded: al.Guard) -> None:
    replies = iter([httpx2.Response(500, json={"error": {"message": "oops"}}),
                    httpx2.Response(200, json=json.loads(_recorded_chat()))])

    def flaky(request: httpx2.Request) -> httpx2.Response:
        return next(replies)

    mock_client(funded, flaky).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 9, 9), 18)
    assert len(funded.audit("acme", types=["reservation.reserved"])) == 1


def test_an_abandoned_stream_commits_what_it_saw_or_the_estimate(funded: al.Guard) -> None:
    def stream_without_usage(request: httpx2.Request) -> httpx2.Response:
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0,
                 "model": "gpt-4o-mini",
                 "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        data = "".join(f"data: {json.dumps(chunk)}\n\n" for _ in range(5))
        return httpx2.Response(200, content=data.encode(),
                               headers={"content-type": "text/event-stream"})

    stream = mock_client(funded, stream_without_usage).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True)
    next(iter(stream))
    stream.close()  # the caller walks away after one chunk
    (committed,) = funded.audit("acme", types=["reservation.committed"])
    assert committed.charged == committed.estimate  # nothing known: the estimate, not $0
    assert spent(funded)[0] > 0


def _recorded_chat() -> str:
    import yaml

    from support.cassettes import DIRECTORY

    data = yaml.safe_load((DIRECTORY / "openai_chat.yaml").read_text())
    text: str = data["interactions"][0]["response"]["body"]["string"]
    return text


def test_a_model_switch_is_held_and_charged_at_the_new_models_price(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model="gpt-4o-mini")])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    with replay("openai_chat.yaml"):
        client(guard).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello!"}])
    assert sent()["model"] == "gpt-4o-mini"
    reserved = guard.audit("acme", types=["reservation.reserved"])
    assert [r.action for r in reserved] == ["llm.completion openai:gpt-4o",
                                            "llm.completion openai:gpt-4o-mini"]
    assert reserved[1].estimate[0].amount < reserved[0].estimate[0].amount
    (committed,) = guard.audit("acme", types=["reservation.committed"])
    assert committed.charged[0].amount == expected_cost("openai", "gpt-4o-mini", 9, 9)


# -- service tiers: held at the tier asked for, charged at the tier that served ----------


def reservations(guard: al.Guard) -> list[Any]:
    return guard.audit("acme", types=["reservation.reserved"])


def test_a_responses_stream_served_at_flex_is_charged_the_flex_price(funded: al.Guard) -> None:
    # The recorded stream, its terminal event saying flex (cassettes/NOTICE). It answered for
    # gpt-4.1-nano, which has no flex tier; replay matches on the path, and the call is priced
    # at the model it asks for: gpt-5-nano, which genai-prices prices at flex.
    with replay("openai_responses_stream_flex.yaml"):
        events = list(client(funded).responses.create(
            model="gpt-5-nano", input="What is 2+2?", stream=True, service_tier="flex"))
    assert events[-1].response.service_tier == "flex"
    flex = expected_cost("openai", "gpt-5-nano", 14, 9, tier="flex")
    assert flex < expected_cost("openai", "gpt-5-nano", 14, 9)  # not the standard price
    assert spent(funded) == (flex, 23)
    (held,) = reservations(funded)
    assert held.estimate[0].amount == expected_hold("openai", "gpt-5-nano", held, "flex")


def test_flex_async_and_through_the_stream_helper(funded: al.Guard) -> None:
    async def main() -> None:
        wrapped = wrap_openai(openai.AsyncOpenAI(api_key="sk-test"), funded, tenant="acme")
        with replay("openai_responses_stream_flex.yaml"):
            stream = await wrapped.responses.create(model="gpt-5-nano", input="2+2?",
                                                    stream=True, service_tier="flex")
            async for _ in stream:
                pass

    asyncio.run(main())
    with replay("openai_responses_stream_flex.yaml"), client(funded).responses.stream(
            model="gpt-5-nano", input="2+2?", service_tier="flex") as stream:
        stream.get_final_response()
    assert spent(funded) == (2 * expected_cost("openai", "gpt-5-nano", 14, 9, tier="flex"),
                             2 * 23)
    for held in reservations(funded):
        assert held.estimate[0].amount == expected_hold("openai", "gpt-5-nano", held, "flex")


@pytest.mark.parametrize("asked", [{}, {"service_tier": "auto"}, {"service_tier": "scale"}])
def test_a_tier_left_open_is_held_at_the_highest_and_charged_as_served(
        funded: al.Guard, asked: dict[str, str]) -> None:
    """None named, `auto`, or a tier genai-prices does not know: the project may serve the
    call at priority, so it is held at that price; the answer says default, which it costs."""
    with replay("openai_responses_stream.yaml"):
        list(client(funded).responses.create(model="gpt-4.1-nano", input="What is 2+2?",
                                              stream=True, **asked))
    assert spent(funded) == (expected_cost("openai", "gpt-4.1-nano", 14, 9), 23)
    (held,) = reservations(funded)
    assert held.estimate[0].amount == expected_hold("openai", "gpt-4.1-nano", held,
                                                    "priority")
    assert held.estimate[0].amount > expected_hold("openai", "gpt-4.1-nano", held)


def test_chat_served_at_priority_is_charged_the_priority_price(funded: al.Guard) -> None:
    messages = [{"role": "user", "content": "Hello!"}]
    with replay("openai_chat_priority.yaml"):
        reply = client(funded).chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                       service_tier="priority")
    assert reply.service_tier == "priority"
    priority = expected_cost("openai", "gpt-4o-mini", 9, 9, tier="priority")
    assert priority > expected_cost("openai", "gpt-4o-mini", 9, 9)
    assert spent(funded) == (priority, 18)
    (held,) = reservations(funded)
    assert held.estimate[0].amount == expected_hold("openai", "gpt-4o-mini", held, "priority")


def test_chat_streams_say_their_tier_in_every_chunk(funded: al.Guard) -> None:
    async def main() -> None:
        wrapped = wrap_openai(openai.AsyncOpenAI(api_key="sk-test"), funded, tenant="acme")
        with replay("openai_chat_stream_priority.yaml"):
            stream = await wrapped.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "UK?"}],
                stream=True)
            async for _ in stream:
                pass

    asyncio.run(main())
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 53, 15, tier="priority"),
                             68)


def test_a_default_tier_asked_for_is_held_at_the_standard_price(funded: al.Guard) -> None:
    with replay("openai_chat.yaml"):
        client(funded).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}],
            service_tier="default")
    assert sent()["service_tier"] == "default"
    (held,) = reservations(funded)
    assert held.estimate[0].amount == expected_hold("openai", "gpt-4o-mini", held)
    assert spent(funded) == (expected_cost("openai", "gpt-4o-mini", 9, 9), 18)


def test_an_override_is_the_price_at_every_tier(funded: al.Guard) -> None:
    pricer = al.pricing.Pricer(overrides={"gpt-4o-mini": {"input_mtok": 1, "output_mtok": 2}})
    with replay("openai_chat_priority.yaml"):
        client(funded, pricer=pricer).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
    assert spent(funded) == (al.usd(Decimal(9 * 1 + 9 * 2) / 10**6).amount, 18)
