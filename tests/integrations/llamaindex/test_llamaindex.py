"""BudgetHandler through LlamaIndex's real classes (its OpenAI LLM and OpenAIEmbedding), with
HTTP replayed from the recorded cassettes; caps through a wrap_openai client handed to the LLM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.llms.openai import OpenAI

import allotment as al
from allotment.integrations.llamaindex import DIMENSION_KEYS, BudgetHandler
from allotment.integrations.openai import wrap_openai

from support.cassettes import expected_cost, expected_hold, replay, sent, spent
from support.http import client as http_client

ROOT = Path(__file__).resolve().parents[3]
ACME = "tenant:acme"
HELLO = [ChatMessage(role="user", content="Hello!")]
UK = [ChatMessage(role="user", content="What is the capital of the UK?")]
CHAT_COST = expected_cost("openai", "gpt-4o-mini", 9, 9)  # openai_chat.yaml
STREAM_COST = expected_cost("openai", "gpt-4o-mini", 53, 15)  # openai_chat_stream.yaml, 1st
EMBED_COST = expected_cost("openai", "text-embedding-ada-002", 8, 0)  # openai_embeddings.yaml


def llm(handler: BudgetHandler, model: str = "gpt-4o-mini", **options: Any) -> OpenAI:
    return OpenAI(model=model, api_key="sk-test", max_retries=0,
                  callback_manager=CallbackManager([handler]), **options)


def embedder(handler: BudgetHandler) -> OpenAIEmbedding:
    return OpenAIEmbedding(model="text-embedding-ada-002", api_key="sk-test", max_retries=0,
                           callback_manager=CallbackManager([handler]))


def settled(handler: BudgetHandler) -> bool:
    return not handler._pending


# -- chat, completion, streams ----------------------------------------------------------------


def test_chat_commits_the_price_of_the_recorded_usage(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat.yaml") as cassette:
        reply = llm(handler).chat(HELLO)
    assert reply.message.content == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(funded) == (CHAT_COST, 18)
    assert "stream_options" not in sent()  # asked for on streams only
    (reserved,) = funded.audit("acme", types=["reservation.reserved"])
    assert reserved.action == "llm.completion openai:gpt-4o-mini"
    assert settled(handler)


def test_the_token_breakdown_reaches_the_usage_export(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat.yaml"):
        llm(handler).chat(HELLO)
    (usd,) = [row for row in funded.usage(tenant="acme") if row.unit is al.Unit.USD_MICROCENTS]
    assert (usd.model, usd.spend, usd.calls, usd.input_tokens, usd.output_tokens) == (
        "openai:gpt-4o-mini", CHAT_COST, 1, 9, 9)


def test_complete_goes_through_the_same_event(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat.yaml") as cassette:
        reply = llm(handler).complete("Hello!")
    assert reply.text == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(funded) == (CHAT_COST, 18)


def test_the_hold_is_bounded_by_the_llms_max_tokens(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme", default_max_tokens=1_000)
    with replay("openai_chat.yaml"):
        llm(handler, max_tokens=50).chat(HELLO)
    assert sent()["max_tokens"] == 50  # the request is LlamaIndex's own, untouched
    with replay("openai_chat.yaml"):
        llm(handler).chat(HELLO)
    assert "max_tokens" not in sent()
    fifty, default = funded.audit("acme", types=["reservation.reserved"])
    tokens = {e.unit: e.amount for e in fifty.estimate}[al.Unit.TOKENS]
    assert tokens - 50 == {e.unit: e.amount for e in default.estimate}[al.Unit.TOKENS] - 1_000


def test_stream_asks_for_usage_and_commits_it(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat_stream.yaml") as cassette:
        chunks = list(llm(handler).stream_chat(UK))
    assert cassette.play_count == 1
    assert sent()["stream_options"] == {"include_usage": True}
    assert chunks[-1].raw.usage.prompt_tokens == 53
    assert spent(funded) == (STREAM_COST, 68)
    assert settled(handler)


def test_a_stream_left_early_is_charged_the_estimate(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat_stream.yaml"):
        stream = llm(handler).stream_chat(UK)
        next(stream)
        stream.close()  # the consumer walks away after one chunk
    (committed,) = funded.audit("acme", types=["reservation.committed"])
    assert committed.charged == committed.estimate  # it reached the provider: never free
    assert spent(funded)[0] > 0 and settled(handler)


def test_a_stream_never_started_sends_nothing(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_chat_stream.yaml") as cassette:
        llm(handler).stream_chat(UK)  # reserved, but the request waits for the first read
    assert cassette.play_count == 0
    (balance,) = [b for b in funded.balances(ACME) if b.unit == al.Unit.USD_MICROCENTS]
    assert balance.reserved > 0  # held until the reservation's TTL runs out


def test_async_chat_and_stream(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")

    async def main() -> None:
        model = llm(handler)
        with replay("openai_chat.yaml"):
            reply = await model.achat(HELLO)
            assert reply.message.content
        with replay("openai_chat_stream.yaml"):
            stream = await model.astream_chat(UK)
            async for _ in stream:
                pass
        with replay("openai_chat.yaml"):
            await model.acomplete("Hello!")

    asyncio.run(main())
    assert spent(funded) == (2 * CHAT_COST + STREAM_COST, 18 + 68 + 18)
    assert settled(handler)


# -- denial -----------------------------------------------------------------------------------


def test_a_denied_call_sends_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.000001")
    handler = BudgetHandler(guard, tenant="acme")
    model = llm(handler)
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        model.chat(HELLO)
    assert cassette.play_count == 0
    with replay("openai_chat_stream.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        list(model.stream_chat(UK))
    assert cassette.play_count == 0

    async def main() -> None:
        with replay("openai_chat.yaml") as cassette, pytest.raises(al.BudgetExceeded):
            await model.achat(HELLO)
        assert cassette.play_count == 0

    asyncio.run(main())
    assert guard.balances(ACME)[0].reserved == 0 and settled(handler)
    assert len(guard.audit("acme", types=["reservation.denied"])) == 3


def test_an_unknown_model_is_refused_and_no_tenant_is_an_error(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=1)
    finetune = "ft:gpt-4o-mini:acme::abc123"  # no list price
    unknown = OpenAI(model=finetune, api_key="sk-test", max_retries=0,
                     callback_manager=CallbackManager([BudgetHandler(guard, tenant="acme")]))
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.Denied) as denied:
        unknown.chat(HELLO)
    assert denied.value.decision.reason == "PRICE_UNKNOWN" and cassette.play_count == 0
    priced = BudgetHandler(guard, tenant="acme", pricer=al.pricing.Pricer(
        {finetune: {"input_mtok": 1, "output_mtok": 2}}))
    with replay("openai_chat.yaml") as cassette:
        llm(priced, model=finetune).chat(HELLO)
    assert guard.balances(ACME)[0].spent == al.usd("0.000027").amount  # 9 * $1 + 9 * $2 / M
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.InvalidRequest):
        llm(BudgetHandler(guard)).chat(HELLO)
    assert cassette.play_count == 0


def test_an_embedding_denied_sends_nothing(guard: al.Guard) -> None:
    guard.set_budget(ACME, tokens=100)  # less than one embedding allowance
    with replay("openai_embeddings.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        embedder(BudgetHandler(guard, tenant="acme")).get_text_embedding("hello")
    assert cassette.play_count == 0


# -- embeddings -------------------------------------------------------------------------------


def test_embeddings_commit_the_tokens_of_their_texts(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    with replay("openai_embeddings.yaml") as cassette:
        vector = embedder(handler).get_text_embedding("Tell me a joke about opentelemetry")
    assert len(vector) == 1536 and cassette.play_count == 1
    assert spent(funded) == (EMBED_COST, 8)  # counted as the provider reported: 8 tokens
    (reserved,) = funded.audit("acme", types=["reservation.reserved"])
    assert reserved.action == "llm.embedding openai:text-embedding-ada-002"
    assert settled(handler)


def test_async_embeddings_and_batches(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")

    async def main() -> None:
        model = embedder(handler)
        with replay("openai_embeddings.yaml"):
            await model.aget_query_embedding("Tell me a joke about opentelemetry")
            await model.aget_text_embedding_batch(["Tell me a joke about opentelemetry"])

    asyncio.run(main())
    assert spent(funded) == (2 * EMBED_COST, 16)
    assert settled(handler)


def test_a_custom_token_counter(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme", token_counter=lambda text: 100)
    with replay("openai_embeddings.yaml"):
        embedder(handler).get_text_embedding("Tell me a joke about opentelemetry")
    assert spent(funded)[1] == 100


# -- subject: handler arguments, al.scope, instrument_tags -------------------------------------


def test_subject_from_scope_and_instrument_tags(guard: al.Guard) -> None:
    guard.set_budget("tenant:acme/workflow:chat", usd=1, per="run")
    guard.set_budget("tenant:beta", usd=1)
    handler = BudgetHandler(guard, tenant="acme")
    with replay("openai_chat.yaml"), al.scope(workflow="chat"), instrument_tags(
            {"run_id": "r-9", "trace": "not a budget field"}):
        llm(handler).chat(HELLO)
    (run,) = guard.balances("tenant:acme/workflow:chat/run:r-9")
    assert run.spent == CHAT_COST
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None and reserved.subject.dimensions == {"run": "r-9"}
    with replay("openai_chat.yaml"), instrument_tags({"tenant": "beta"}):
        llm(BudgetHandler(guard)).chat(HELLO)  # the tags alone name the tenant
    assert guard.balances("tenant:beta")[0].spent == CHAT_COST


def test_tags_are_read_per_call_and_concurrently(funded: al.Guard) -> None:
    funded.set_budget("tenant:acme", usd=1, per="run")
    handler = BudgetHandler(funded, tenant="acme")
    model = llm(handler)

    async def one(run: str) -> None:
        with instrument_tags({"run": run}):
            await model.achat(HELLO)

    async def main() -> None:
        with replay("openai_chat.yaml") as cassette:
            cassette.allow_playback_repeats = True
            await asyncio.gather(one("a"), one("b"), one("c"))

    asyncio.run(main())
    for run in "abc":
        assert funded.balances(f"tenant:acme/run:{run}")[0].spent == CHAT_COST


# -- which tags are read: dimension_keys, a "dimensions" dict, required dimensions ------------

CUSTOMER_KEYS = [*DIMENSION_KEYS, "customer"]


def per_customer(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, usd=1, per="customer", required=True)


def test_a_custom_dimension_in_instrument_tags_reaches_the_subject(guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetHandler(guard, tenant="acme", dimension_keys=CUSTOMER_KEYS)
    levels = ("tenant", "workspace", "app", "workflow", "agent", "toolset")
    named = (*levels, "run", "user", "session", "customer")
    assert handler.metadata_keys == (*named, *(f"{key}_id" for key in named), "dimensions")
    with replay("openai_chat.yaml") as cassette, instrument_tags({"customer": "c-9",
                                                                  "run_id": "r-1"}):
        llm(handler).chat(HELLO)
    assert cassette.play_count == 1
    assert guard.balances("tenant:acme/customer:c-9")[0].spent == CHAT_COST
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None
    assert reserved.subject.dimensions == {"customer": "c-9", "run": "r-1"}
    with replay("openai_chat.yaml"), instrument_tags({"customer_id": "c-10"}):
        llm(handler).complete("Hello!")  # each key is read as <key>_id too
    assert guard.balances("tenant:acme/customer:c-10")[0].spent == CHAT_COST
    assert settled(handler)


def test_dimension_keys_rename_tags_into_dimensions(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, usd=1, per="session")
    handler = BudgetHandler(guard, tenant="acme", dimension_keys={"thread": "session"})
    assert "run" not in handler.metadata_keys and "thread_id" in handler.metadata_keys
    with replay("openai_chat.yaml"), instrument_tags({"thread": "t-1", "run": "not read"}):
        llm(handler).chat(HELLO)
    assert guard.balances("tenant:acme/session:t-1")[0].spent == CHAT_COST
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None and reserved.subject.dimensions == {"session": "t-1"}


def test_a_dimensions_dict_in_instrument_tags_reaches_the_subject(guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetHandler(guard, tenant="acme")  # the default keys: not customer
    with replay("openai_chat.yaml"), instrument_tags({"dimensions": {"customer": "C-9"},
                                                      "run": "r-1"}):
        llm(handler).chat(HELLO)
    assert guard.balances("tenant:acme/customer:C-9")[0].spent == CHAT_COST  # kept exactly
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None
    assert reserved.subject.dimensions == {"customer": "C-9", "run": "r-1"}

    async def main() -> None:
        with replay("openai_embeddings.yaml"), instrument_tags({"dimensions": {
                "customer": 42}}):  # a whole number is an id, as in a named tag
            await embedder(handler).aget_text_embedding("Tell me a joke about opentelemetry")

    asyncio.run(main())
    assert guard.balances("tenant:acme/customer:42")[0].spent == EMBED_COST
    assert settled(handler)


def test_a_required_dimension_the_tags_lack_is_refused_before_any_request(
        guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetHandler(guard, tenant="acme")  # reads run, user, session: not customer
    model = llm(handler)
    with replay("openai_chat.yaml") as cassette, instrument_tags({"customer": "c-9"}), \
            pytest.raises(al.Denied) as denied:
        model.chat(HELLO)
    assert cassette.play_count == 0
    assert denied.value.decision.reason == "DIMENSION_REQUIRED"
    assert denied.value.decision.missing_dimensions == ("customer",)
    assert "'customer'" in str(denied.value) and "instrument_tags" in str(denied.value)
    with replay("openai_chat_stream.yaml") as cassette, pytest.raises(al.Denied):
        list(model.stream_chat(UK))  # no tags at all
    assert cassette.play_count == 0

    async def main() -> None:
        with replay("openai_embeddings.yaml") as cassette, pytest.raises(al.Denied):
            await embedder(handler).aget_text_embedding("hello")
        assert cassette.play_count == 0

    asyncio.run(main())
    assert guard.balances(ACME)[0].spent == 0 and guard.balances(ACME)[0].reserved == 0
    assert len(guard.audit("acme", types=["reservation.denied"])) == 3
    assert settled(handler)


def test_a_guarded_client_below_gets_the_custom_dimension(guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetHandler(guard, tenant="acme", dimension_keys=CUSTOMER_KEYS)
    model = OpenAI(model="gpt-4o-mini", callback_manager=CallbackManager([handler]),
                   openai_client=wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0),
                                             guard, tenant="acme"))
    with replay("openai_chat.yaml") as cassette, instrument_tags({"customer_id": "c-9"}):
        model.chat(HELLO)
    with replay("openai_chat.yaml"), instrument_tags({"dimensions": {"customer": "c-10"}}):
        model.chat(HELLO)
    assert not any(h.lower().startswith("x-allotment") for h in cassette.requests[0].headers)
    assert guard.balances("tenant:acme/customer:c-9")[0].spent == CHAT_COST
    assert guard.balances("tenant:acme/customer:c-10")[0].spent == CHAT_COST
    assert len(guard.audit("acme", types=["reservation.reserved"])) == 2  # each once
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.Denied) as denied:
        model.chat(HELLO)  # the client refuses a call the tags gave no customer
    assert cassette.play_count == 0
    assert denied.value.decision.reason == "DIMENSION_REQUIRED"


def test_the_keys_read_are_logged_when_the_handler_is_made(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "allotment"):
        BudgetHandler(al.Guard(), tenant="acme", dimension_keys=CUSTOMER_KEYS)
    (line,) = [r.getMessage() for r in caplog.records if "instrument_tags keys" in
               r.getMessage()]
    assert "customer, " in line and "customer_id" in line and line.endswith("dimensions")


@pytest.mark.parametrize(("keys", "wrong"), [
    ("customer", "the string 'customer'"),
    (["tenant"], "'tenant' is read as the tenant level"),
    ({"org": "tenant"}, "scope level"),
    (["dimensions"], "'dimensions' is read as a dict"),
    (["cust omer"], "'cust omer' cannot fill dimension"),
])
def test_bad_dimension_keys_are_refused_when_the_handler_is_made(keys: Any,
                                                                 wrong: str) -> None:
    with pytest.raises(al.InvalidRequest, match=wrong):
        BudgetHandler(al.Guard(), tenant="acme", dimension_keys=keys)


@pytest.mark.parametrize(("tags", "wrong"), [
    ({"dimensions": {"customer": ["c-9"]}}, "expected a string id"),
    ({"dimensions": {"tenant": "beta"}}, "a scope level"),
])
def test_a_bad_dimensions_dict_is_refused_before_any_request(guard: al.Guard, tags: Any,
                                                             wrong: str) -> None:
    per_customer(guard)
    with replay("openai_chat.yaml") as cassette, instrument_tags(tags), \
            pytest.raises(al.InvalidRequest, match=wrong):
        llm(BudgetHandler(guard, tenant="acme")).chat(HELLO)
    assert cassette.play_count == 0
    assert guard.balances(ACME)[0].reserved == 0


# -- caps: a guarded client below LlamaIndex -------------------------------------------------


def test_caps_reach_the_outgoing_body_through_a_guarded_client(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    guard.set_budget("tenant:acme", usd=1, per="run")
    handler = BudgetHandler(guard, tenant="acme")
    capped = OpenAI(model="gpt-4o-mini", max_tokens=2_000, callback_manager=CallbackManager(
        [handler]), openai_client=wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0),
                                              guard, tenant="acme"))
    with replay("openai_chat.yaml") as cassette, instrument_tags({"run": "r-1"}):
        capped.chat(HELLO)
    assert sent()["max_tokens"] == 100  # the LLM asked for 2,000
    headers = {k.lower() for k in cassette.requests[0].headers}
    assert not any(h.startswith("x-allotment") for h in headers)
    reserved = guard.audit("acme", types=["reservation.reserved"])
    assert len(reserved) == 1, "charged once: the handler stood aside for the guarded client"
    assert guard.balances("tenant:acme/run:r-1")[0].spent == CHAT_COST  # the tags reached it
    assert settled(handler)


def test_caps_on_async_streams_through_a_guarded_client(guard: al.Guard) -> None:
    guard.set_access(ACME, max_tokens_per_call=64)
    guard.set_budget(ACME, usd=10)
    handler = BudgetHandler(guard, tenant="acme")
    wrapped = wrap_openai(openai.AsyncOpenAI(api_key="sk-test", max_retries=0), guard,
                          tenant="acme")
    capped = OpenAI(model="gpt-4o-mini", async_openai_client=wrapped,
                    callback_manager=CallbackManager([handler]))

    async def main() -> None:
        with replay("openai_chat_stream.yaml"):
            stream = await capped.astream_chat(UK)
            async for _ in stream:
                pass

    asyncio.run(main())
    body = sent()
    assert body["max_completion_tokens"] == 64
    assert body["stream_options"] == {"include_usage": True}
    assert guard.balances(ACME)[0].spent == STREAM_COST
    assert len(guard.audit("acme", types=["reservation.reserved"])) == 1


def test_a_sync_guarded_client_does_not_cover_async_calls(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    model = OpenAI(model="gpt-4o-mini", api_key="sk-test", max_retries=0,
                   callback_manager=CallbackManager([handler]),
                   openai_client=wrap_openai(openai.OpenAI(api_key="sk-test"), funded,
                                             tenant="acme"))
    with replay("openai_chat.yaml"):
        asyncio.run(model.achat(HELLO))  # through LlamaIndex's own async client
    assert spent(funded) == (CHAT_COST, 18)
    assert len(funded.audit("acme", types=["reservation.reserved"])) == 1


def test_a_guarded_client_under_an_embedding_model_is_charged_once(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    model = embedder(handler)
    model._client = wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), funded,
                                tenant="acme")  # OpenAIEmbedding takes no client argument
    with replay("openai_embeddings.yaml"):
        model.get_text_embedding("Tell me a joke about opentelemetry")
    assert spent(funded) == (EMBED_COST, 8)  # the provider's count, through the client
    assert len(funded.audit("acme", types=["reservation.reserved"])) == 1


def test_caps_the_handler_cannot_apply_are_logged(guard: al.Guard,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model="gpt-4o-mini")])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    handler = BudgetHandler(guard, tenant="acme")
    big = OpenAI(model="gpt-4o", api_key="sk-test", max_retries=0,
                 callback_manager=CallbackManager([handler]))
    with caplog.at_level(logging.DEBUG, "allotment"):
        for _ in range(2):
            with replay("openai_chat.yaml"):
                big.chat(HELLO)
    assert sent()["model"] == "gpt-4o"  # a callback cannot switch the model...
    said = [r.levelno for r in caplog.records if "cannot be applied" in r.getMessage()]
    assert said == [logging.WARNING, logging.DEBUG]  # once loud, then quiet
    reserved = guard.audit("acme", types=["reservation.reserved"])
    assert [r.action for r in reserved] == ["llm.completion openai:gpt-4o"] * 2  # held as sent
    committed = guard.audit("acme", types=["reservation.committed"])
    assert [c.charged[0].amount for c in committed] == [expected_cost("openai", "gpt-4o", 9,
                                                                      9)] * 2


# -- errors -----------------------------------------------------------------------------------


def test_a_provider_error_releases_and_reraises(funded: al.Guard) -> None:
    calls = []

    def refuse(request: httpx2.Request) -> httpx2.Response:
        calls.append(request)
        return httpx2.Response(400, json={"error": {"message": "bad request"}})

    handler = BudgetHandler(funded, tenant="acme")
    model = llm(handler, http_client=http_client("openai", refuse))
    with pytest.raises(openai.BadRequestError):
        model.chat(HELLO)
    with pytest.raises(openai.BadRequestError):
        list(model.stream_chat(HELLO))
    assert len(calls) == 2
    assert spent(funded) == (0, 0)
    assert [r.type for r in funded.audit("acme")][-1] == "reservation.released"
    assert settled(handler)


def test_usage_in_other_shapes() -> None:
    from llama_index.core.base.llms.types import ChatResponse

    from allotment.integrations.llamaindex import _response_usage

    anthropic_like = ChatResponse(message=ChatMessage(role="assistant", content="hi"), raw={
        "usage": {"input_tokens": 14, "output_tokens": 11, "cache_read_input_tokens": 100,
                  "cache_creation_input_tokens": 0}})
    usage = _response_usage(anthropic_like)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (114, 100, 11)
    counted = ChatResponse(message=ChatMessage(role="assistant", content="hi"),
                           additional_kwargs={"prompt_tokens": 5, "completion_tokens": 7})
    assert _response_usage(counted) == al.pricing.TokenUsage(input_tokens=5, output_tokens=7)
    gemini = ChatResponse(message=ChatMessage(role="assistant", content="hi"), raw={
        "usage_metadata": {"prompt_token_count": 3, "candidates_token_count": 4}})
    assert _response_usage(gemini) == al.pricing.TokenUsage(input_tokens=3, output_tokens=4)
    bare = ChatResponse(message=ChatMessage(role="assistant", content="hi"))
    assert _response_usage(bare) is None


def test_a_response_without_usage_is_charged_the_estimate(funded: al.Guard) -> None:
    recorded = _recorded_chat()
    del recorded["usage"]

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=recorded)

    handler = BudgetHandler(funded, tenant="acme")
    llm(handler, http_client=http_client("openai", answer)).chat(HELLO)
    (committed,) = funded.audit("acme", types=["reservation.committed"])
    assert committed.charged == committed.estimate


def _recorded_chat() -> dict[str, Any]:
    import yaml

    from support.cassettes import DIRECTORY

    data = yaml.safe_load((DIRECTORY / "openai_chat.yaml").read_text())
    loaded: dict[str, Any] = json.loads(data["interactions"][0]["response"]["body"]["string"])
    return loaded


# -- packaging and the example ---------------------------------------------------------------


def test_the_handler_is_a_llamaindex_callback_handler() -> None:
    from llama_index.core.callbacks.base_handler import BaseCallbackHandler

    handler = BudgetHandler(al.Guard(), tenant="acme")
    assert isinstance(handler, BaseCallbackHandler)
    assert not isinstance(handler, BaseEmbedding)


def test_importing_allotment_imports_no_framework() -> None:
    code = ("import sys, allotment, allotment.integrations.openai; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('llama_index', 'openai', 'langchain_core')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_example_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    out = subprocess.run([sys.executable, "llamaindex_handler.py"], cwd=ROOT / "examples",
                         env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    assert "stopped: tenant:acme/workflow:support-chat/run:r-7: BUDGET_EXCEEDED" in out
    assert "capped: max_tokens sent = 128" in out


# -- service tiers ---------------------------------------------------------------------------


def test_the_tier_asked_for_is_held_and_the_one_served_charged(funded: al.Guard) -> None:
    handler = BudgetHandler(funded, tenant="acme")
    asking = llm(handler, additional_kwargs={"service_tier": "priority"})
    with replay("openai_chat_priority.yaml"):
        asking.chat(HELLO)
    assert sent()["service_tier"] == "priority"
    with replay("openai_chat_stream_priority.yaml"):
        for _ in llm(handler).stream_chat(UK):
            pass
    assert spent(funded) == (
        expected_cost("openai", "gpt-4o-mini", 9, 9, tier="priority")
        + expected_cost("openai", "gpt-4o-mini", 53, 15, tier="priority"), 18 + 68)
    for held in funded.audit("acme", types=["reservation.reserved"]):  # asked, or left open
        assert held.estimate[0].amount == expected_hold("openai", "gpt-4o-mini", held,
                                                        "priority")
    assert settled(handler)


def test_the_openai_extra_installs_beside_llamaindex_openai_llm() -> None:
    """LlamaIndex's OpenAI LLM pins openai<3: `allotment[openai]` admits the openai it brings
    (this environment installs both), and wrap_openai meters it (the tests above)."""
    from importlib.metadata import distribution, version

    from packaging.requirements import Requirement

    def requirements(name: str, extra: str = "") -> list[Requirement]:
        found = [Requirement(r) for r in distribution(name).requires or ()]
        return [r for r in found if (r.marker is None and not extra)
                or (r.marker is not None and r.marker.evaluate({"extra": extra}))]

    (llm_pin,) = [r for r in requirements("llama-index-llms-openai") if r.name == "openai"]
    (ours,) = [r for r in requirements("allotment", "openai") if r.name == "openai"]
    installed = version("openai")
    assert installed in llm_pin.specifier and installed in ours.specifier
    assert int(installed.split(".")[0]) < 3
