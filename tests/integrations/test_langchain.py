"""The LangChain integration through the real classes (ChatOpenAI, ChatAnthropic, agents
built with create_agent), with HTTP replayed from recorded cassettes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx2
import pytest
import vcr
from langchain.agents import create_agent
from langchain_anthropic import ChatAnthropic
from langchain_core.caches import InMemoryCache
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.messages import AIMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

import allotment as al
from allotment.integrations.langchain import (
    DIMENSION_KEYS,
    AsyncBudgetCallbackHandler,
    BudgetCallbackHandler,
    BudgetMiddleware,
    capped,
)
from allotment.pricing import Pricer

from support.cassettes import DIRECTORY, expected_cost, expected_hold, replay, sent, spent
from support.http import client as http_client

ROOT = Path(__file__).resolve().parents[2]
ACME = "tenant:acme"
MINI = "gpt-4o-mini"
SONNET = "claude-sonnet-4-6"
ASK = "What's the capital of France?"


def usd_spent(guard: al.Guard, scope: str) -> int:
    (balance,) = [b for b in guard.balances(scope, include_children=False)
                  if b.unit is al.Unit.USD_MICROCENTS]
    assert balance.reserved == 0, "every reservation settled"
    return balance.spent


def openai(**options: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MINI, api_key="sk-test", max_retries=0, **options)


def anthropic(model: str = SONNET, **options: Any) -> ChatAnthropic:
    return ChatAnthropic(model=model, api_key="sk-test", max_retries=0, **options)


def cost(input_tokens: int, output_tokens: int, model: str = MINI) -> int:
    return expected_cost("anthropic" if "claude" in model else "openai", model, input_tokens,
                         output_tokens)


def committed(guard: al.Guard, tenant: str = "acme") -> list[Any]:
    return list(guard.audit(tenant, types=["reservation.committed"]))


_repeating = vcr.VCR(cassette_library_dir=str(DIRECTORY), record_mode="none",
                     match_on=["method", "scheme", "host", "path"])


@contextmanager
def looping(name: str) -> Iterator[Any]:
    """A cassette whose answer plays again on every request: a model stuck in a tool loop."""
    with _repeating.use_cassette(name, allow_playback_repeats=True) as cassette:
        yield cassette


# -- packaging ------------------------------------------------------------------------------


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120, cwd=ROOT).stdout


def test_importing_allotment_never_imports_langchain() -> None:
    out = run_python(
        "import sys, allotment, allotment.integrations, allotment.integrations.openai, "
        "allotment.integrations.anthropic\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('langchain', 'langchain_core', 'langgraph')))")
    assert out.strip() == "[]"


def test_the_handler_and_capped_need_only_langchain_core() -> None:
    out = run_python(
        "import sys\n"
        "sys.modules['langchain'] = None  # as if only langchain-core were installed\n"
        "import allotment as al\n"
        "from allotment.integrations.langchain import BudgetCallbackHandler, BudgetMiddleware"
        ", capped\n"
        "BudgetCallbackHandler(al.Guard(), tenant='acme')\n"
        "try:\n"
        "    BudgetMiddleware(al.Guard())\n"
        "except ImportError as e:\n"
        "    print('needs:', e)\n")
    assert "needs: BudgetMiddleware needs the `langchain` package" in out


# -- the callback handler -------------------------------------------------------------------


def test_chat_openai_commits_the_price_of_the_recorded_usage(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded)  # no tenant here: it comes with each run
    with replay("openai_chat.yaml") as cassette:
        reply = openai().invoke("Hello!", config={"callbacks": [handler],
                                                  "metadata": {"tenant": "acme"}})
    assert reply.content == "Hello! How can I assist you today?"
    assert cassette.play_count == 1
    assert spent(funded) == (cost(9, 9), 18)
    (reserved,) = funded.audit("acme", types=["reservation.reserved"])
    assert reserved.action == "llm.completion openai:gpt-4o-mini"


def test_chat_anthropic_commits_the_price_of_the_recorded_usage(funded: al.Guard) -> None:
    with replay("anthropic_messages.yaml") as cassette:
        reply = anthropic().invoke(ASK, config={
            "callbacks": [BudgetCallbackHandler(funded, tenant="acme")]})
    assert "Paris" in str(reply.content) and cassette.play_count == 1
    assert spent(funded) == (cost(14, 11, SONNET), 25)
    (reserved,) = funded.audit("acme", types=["reservation.reserved"])
    # ChatAnthropic sends a max_tokens of its own, the model's maximum (128000 from its model
    # profile; 64000 from its own table before langchain-anthropic 1.2): that is what was held
    assert reserved.estimate[1].amount > sent()["max_tokens"] >= 64_000


def test_anthropic_cache_writes_and_reads_are_priced_apart(funded: al.Guard) -> None:
    model = "claude-3-7-sonnet-20250219"
    handler = BudgetCallbackHandler(funded, tenant="acme")
    system = SystemMessage(content=[{"type": "text", "text": "a long novel",
                                     "cache_control": {"type": "ephemeral"}}])
    with replay("anthropic_prompt_caching.yaml"):
        for _ in range(2):
            anthropic(model, max_tokens=2048).invoke(
                [system, ("user", "Analyze the major themes.")], config={"callbacks": [handler]})
    write = expected_cost("anthropic", model, 21 + 1733, 561, cache_write=1733)
    read = expected_cost("anthropic", model, 21 + 1733, 568, cache_read=1733)
    assert write > read
    assert spent(funded) == (write + read, (1754 + 561) + (1754 + 568))


def test_openai_stream_commits_the_usage_chunk(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    with replay("openai_chat_stream.yaml") as cassette:
        chunks = list(openai().stream("capital of the UK?", config={"callbacks": [handler]}))
    assert cassette.play_count == 1 and len(chunks) > 3
    assert sent()["stream_options"] == {"include_usage": True}
    assert spent(funded) == (cost(53, 15), 68)


def test_anthropic_stream_commits_the_cumulative_delta(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    with replay("anthropic_messages_stream.yaml"):
        text = "".join(str(c.content) for c in anthropic(max_tokens=1024).stream(
            ASK, config={"callbacks": [handler]}))
    assert text == "Sunlight scatters off air molecules."
    assert spent(funded) == (cost(21, 13, SONNET), 34)


def test_an_old_style_stream_without_input_counts_falls_back_to_the_estimate(
        funded: al.Guard) -> None:
    model = "claude-3-7-sonnet-20250219"
    handler = BudgetCallbackHandler(funded, tenant="acme")
    with replay("anthropic_thinking_stream_legacy.yaml"):
        chunks = list(anthropic(model, max_tokens=2048, thinking={
            "type": "enabled", "budget_tokens": 1024}).stream(ASK, config={"callbacks": [handler]}))
    assert sum((c.usage_metadata or {}).get("input_tokens", 0) for c in chunks) == 0
    (done,) = committed(funded)
    usd, tokens = (a.amount for a in done.charged)
    estimated_input = tokens - 216
    assert estimated_input >= 52  # the recorded input: the estimate is an upper bound
    assert usd == expected_cost("anthropic", model, estimated_input, 216)


def test_a_denied_call_plays_no_interaction(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.000001")
    handler = BudgetCallbackHandler(guard, tenant="acme")
    config: Any = {"callbacks": [handler]}

    async def asynchronous() -> None:
        with pytest.raises(al.BudgetExceeded):
            await openai().ainvoke("Hello!", config=config)
        with pytest.raises(al.BudgetExceeded):
            async for _ in openai().astream("Hello!", config=config):
                pass

    with replay("openai_chat.yaml") as cassette:
        with pytest.raises(al.BudgetExceeded):
            openai().invoke("Hello!", config=config)
        with pytest.raises(al.BudgetExceeded):
            list(openai().stream("Hello!", config=config))
        with pytest.raises(al.BudgetExceeded):
            openai().batch(["Hello!", "Hi!"], config=config)
        asyncio.run(asynchronous())
    assert cassette.play_count == 0
    assert guard.audit("acme", types=["reservation.reserved"]) == ()


def test_a_call_without_a_tenant_is_refused_before_it_is_sent(funded: al.Guard) -> None:
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.InvalidRequest, match="tenant"):
        openai().invoke("Hello!", config={"callbacks": [BudgetCallbackHandler(funded)]})
    assert cassette.play_count == 0


def test_a_broken_off_stream_commits_the_estimate(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    with replay("openai_chat_stream.yaml"):
        stream = openai().stream("capital of the UK?", config={"callbacks": [handler]})
        next(stream)
        stream.close()  # the caller walks away after the first chunk
    (done,) = committed(funded)
    assert done.charged == done.estimate  # nothing known: the estimate, never $0
    assert spent(funded)[0] > 0


def test_a_provider_error_releases(funded: al.Guard) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"error": {"message": "bad request"}})

    model = openai(http_client=http_client("openai", refuse))
    with pytest.raises(Exception, match="bad request"):
        model.invoke("x", config={"callbacks": [BudgetCallbackHandler(funded, tenant="acme")]})
    assert spent(funded) == (0, 0)
    assert [r.type for r in funded.audit("acme")][-1] == "reservation.released"


def test_batches_settle_each_run_on_its_own(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    model = ChatOpenAI(model="gpt-4.1-nano", api_key="sk-test", use_responses_api=True)
    with replay("openai_responses.yaml") as cassette:
        replies = model.batch([ASK, ASK], config={"callbacks": [handler]})
    assert cassette.play_count == 2 and all("Paris" in r.text for r in replies)
    assert spent(funded) == (2 * expected_cost("openai", "gpt-4.1-nano", 14, 8), 2 * 22)
    assert len({r.reservation_id for r in committed(funded)}) == 2


def test_async_twin_and_async_paths(funded: al.Guard) -> None:
    async def main() -> None:
        twin = AsyncBudgetCallbackHandler(funded, tenant="acme")
        with replay("openai_chat.yaml"):
            await openai().ainvoke("Hello!", config={"callbacks": [twin]})
        with replay("openai_chat_stream.yaml"):
            async for _ in openai().astream("UK?", config={"callbacks": [twin]}):
                pass
        sync = BudgetCallbackHandler(funded, tenant="acme")  # the sync one serves async too
        with replay("anthropic_messages.yaml"):
            await anthropic().ainvoke(ASK, config={"callbacks": [sync]})

    asyncio.run(main())
    assert spent(funded) == (cost(9, 9) + cost(53, 15) + cost(14, 11, SONNET), 18 + 68 + 25)


def test_the_async_twin_denies_async_calls(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.000001")

    async def main() -> None:
        with pytest.raises(al.BudgetExceeded):
            await openai().ainvoke("Hello!", config={
                "callbacks": [AsyncBudgetCallbackHandler(guard, tenant="acme")]})

    with replay("openai_chat.yaml") as cassette:
        asyncio.run(main())
    assert cassette.play_count == 0


def test_the_handler_cannot_switch_models_so_it_charges_the_one_sent(
        guard: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model=MINI, max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    handler = BudgetCallbackHandler(guard, tenant="acme")
    with replay("openai_chat.yaml"), caplog.at_level(logging.WARNING, logger="allotment"):
        ChatOpenAI(model="gpt-4o", api_key="sk-test").invoke("Hello!",
                                                            config={"callbacks": [handler]})
    assert sent()["model"] == "gpt-4o" and "max_completion_tokens" not in sent()
    assert "cannot be applied by a callback" in caplog.text
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.action == "llm.completion openai:gpt-4o"
    (done,) = committed(guard)
    assert done.charged[0].amount == expected_cost("openai", "gpt-4o", 9, 9)


def test_llm_output_usage_when_usage_metadata_is_missing(funded: al.Guard) -> None:
    """Older integrations report only the provider's raw usage, in llm_output."""
    handler = BudgetCallbackHandler(funded, tenant="acme")
    openai_raw = {"token_usage": {"prompt_tokens": 207, "completion_tokens": 46,
                                  "prompt_tokens_details": {"cached_tokens": 0}}}
    anthropic_raw = {"usage": {"input_tokens": 21, "output_tokens": 561,
                               "cache_creation_input_tokens": 1733,
                               "cache_read_input_tokens": 0}}
    model = "claude-3-7-sonnet-20250219"
    for provider, name, raw in [("openai", MINI, openai_raw),
                                ("anthropic", model, anthropic_raw)]:
        run_id = uuid4()
        handler.on_chat_model_start({"id": ["x", "Chat"]}, [[AIMessage("hi")]], run_id=run_id,
                                    metadata={"ls_provider": provider},
                                    invocation_params={"model": name, "max_tokens": 2048})
        handler.on_llm_end(LLMResult(generations=[[ChatGeneration(message=AIMessage("x"))]],
                                     llm_output=raw), run_id=run_id)
    first, second = committed(funded)
    assert first.charged[0].amount == cost(207, 46)
    assert second.charged[0].amount == expected_cost("anthropic", model, 1754, 561,
                                                     cache_write=1733)


def test_langchain_cache_hits_are_released_not_charged(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    model = openai(cache=InMemoryCache())
    with replay("openai_chat.yaml") as cassette:
        first = model.invoke("Hello!", config={"callbacks": [handler]})
        again = model.invoke("Hello!", config={"callbacks": [handler]})
    assert again.content == first.content and cassette.play_count == 1
    assert spent(funded) == (cost(9, 9), 18)
    assert len(funded.audit("acme", types=["reservation.released"])) == 1


def test_plain_llms_go_through_on_llm_start(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme",
                                    pricer=Pricer(fallback={"input_mtok": 1, "output_mtok": 2}))
    assert FakeListLLM(responses=["ok"]).invoke("hi", config={"callbacks": [handler]}) == "ok"
    (done,) = committed(funded)
    assert done.charged == done.estimate  # a fake model reports no usage: the estimate


def test_one_handler_serves_many_tenants_through_metadata_and_scope(guard: al.Guard) -> None:
    for tenant in ("acme", "beta"):
        guard.set_budget(f"tenant:{tenant}", usd=10)
    guard.set_budget("tenant:beta/workflow:chat", usd=1, per="run")
    handler = BudgetCallbackHandler(guard)  # one handler, no subject of its own
    chain = RunnableLambda(lambda text: text) | openai()  # the model is nested in a chain
    with replay("openai_chat.yaml"):
        chain.invoke("Hello!", config={"callbacks": [handler], "metadata": {
            "tenant": "beta", "workflow": "chat", "run": "r-7", "ls_run_depth": 1}})
    with replay("openai_chat.yaml"), al.scope(tenant="acme", workflow="support"):
        chain.invoke("Hello!", config={"callbacks": [handler]})
    assert usd_spent(guard, "tenant:beta/workflow:chat/run:r-7") == cost(9, 9)
    assert usd_spent(guard, "tenant:acme") == cost(9, 9)
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None and reserved.subject.workflow == "support"


def test_dimension_keys_rename_metadata_into_dimensions(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, usd=1, per="session")
    handler = BudgetCallbackHandler(guard, dimension_keys={"thread_id": "session"})
    with replay("openai_chat.yaml"):
        openai().invoke("Hello!", config={"callbacks": [handler], "metadata": {
            "tenant": "acme", "thread_id": "t-1", "run": "not-a-dimension-here"}})
    assert usd_spent(guard, "tenant:acme/session:t-1") == cost(9, 9)
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None and reserved.subject.dimensions == {"session": "t-1"}


def test_a_user_id_in_metadata_is_kept_exactly(guard: al.Guard) -> None:
    """LangGraph thread and user ids keep their case: two users differing only in it are
    two ledgers."""
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, usd=1, per="user")
    handler = BudgetCallbackHandler(guard)
    for user in ("User_AbC", "user_abc"):
        with replay("openai_chat.yaml"):
            openai().invoke("Hello!", config={"callbacks": [handler], "metadata": {
                "tenant": "acme", "user": user}})
    assert usd_spent(guard, "tenant:acme/user:User_AbC") == cost(9, 9)
    assert usd_spent(guard, "tenant:acme/user:user_abc") == cost(9, 9)


CUSTOMER_KEYS = [*DIMENSION_KEYS, "customer"]


def per_customer(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_budget(ACME, usd=1, per="customer", required=True)


def test_a_custom_dimension_in_metadata_reaches_the_subject(guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetCallbackHandler(guard, dimension_keys=CUSTOMER_KEYS)
    assert handler.metadata_keys == ("tenant", "workspace", "app", "workflow", "agent",
                                     "toolset", "run", "user", "session", "customer",
                                     "dimensions")
    with replay("openai_chat.yaml"):
        openai().invoke("Hello!", config={"callbacks": [handler], "metadata": {
            "tenant": "acme", "customer": "c-9", "run": "r-1"}})
    assert usd_spent(guard, "tenant:acme/customer:c-9") == cost(9, 9)
    (reserved,) = guard.audit("acme", types=["reservation.reserved"])
    assert reserved.subject is not None
    assert reserved.subject.dimensions == {"customer": "c-9", "run": "r-1"}
    # the "dimensions" dict reaches the subject whatever the handler's keys
    with replay("openai_chat.yaml"):
        openai().invoke("Hello!", config={"callbacks": [BudgetCallbackHandler(guard)],
                                          "metadata": {"tenant": "acme",
                                                       "dimensions": {"customer": "c-10"}}})
    assert usd_spent(guard, "tenant:acme/customer:c-10") == cost(9, 9)


def test_a_required_dimension_the_handler_does_not_read_is_refused(guard: al.Guard) -> None:
    per_customer(guard)
    handler = BudgetCallbackHandler(guard)  # reads run, user, session: not customer
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.Denied) as denied:
        openai().invoke("Hello!", config={"callbacks": [handler], "metadata": {
            "tenant": "acme", "customer": "c-9"}})
    assert cassette.play_count == 0  # nothing was sent, and nothing charged to the tenant
    assert denied.value.decision.reason == "DIMENSION_REQUIRED"
    assert "'customer'" in str(denied.value)
    assert usd_spent(guard, ACME) == 0


@pytest.mark.parametrize(("keys", "wrong"), [
    ("customer", "the string 'customer'"),
    (["workflow"], "'workflow' is read as the workflow level"),
    ({"org": "tenant"}, "scope level"),
    (["cust omer"], "'cust omer' cannot fill dimension"),
])
def test_bad_dimension_keys_are_refused_when_a_piece_is_made(guard: al.Guard, keys: Any,
                                                             wrong: str) -> None:
    for make in (lambda: BudgetCallbackHandler(guard, dimension_keys=keys),
                 lambda: BudgetMiddleware(guard, dimension_keys=keys),
                 lambda: capped(openai(), guard, dimension_keys=keys)):
        with pytest.raises(al.InvalidRequest, match=wrong):
            make()


def test_a_dimensions_dict_naming_a_level_is_refused(guard: al.Guard) -> None:
    per_customer(guard)
    with replay("openai_chat.yaml") as cassette, pytest.raises(al.InvalidRequest,
                                                               match="a scope level"):
        openai().invoke("Hello!", config={"callbacks": [BudgetCallbackHandler(guard)],
                                          "metadata": {"tenant": "acme", "dimensions": {
                                              "Tenant": "beta", "customer": "c-9"}}})
    assert cassette.play_count == 0 and usd_spent(guard, ACME) == 0


def test_middleware_reads_a_custom_dimension_from_metadata(guard: al.Guard) -> None:
    per_customer(guard)
    middleware = BudgetMiddleware(guard, dimension_keys=CUSTOMER_KEYS)
    assert "customer" in middleware.metadata_keys
    agent = create_agent(openai(), [], middleware=[middleware])
    with replay("openai_chat.yaml"):
        agent.invoke({"messages": [("user", "Hello!")]},
                     config={"metadata": {"tenant": "acme", "customer": "c-9"}})
    assert usd_spent(guard, "tenant:acme/customer:c-9") == cost(9, 9)
    # without the key the run ends with an answer that names what is missing
    plain = create_agent(openai(), [], middleware=[BudgetMiddleware(guard)])
    with replay("openai_chat.yaml") as cassette:
        result = plain.invoke({"messages": [("user", "Hello!")]},
                              config={"metadata": {"tenant": "acme", "customer": "c-9"}})
    last = result["messages"][-1]
    assert cassette.play_count == 0
    assert last.response_metadata["allotment"]["denied"] == "DIMENSION_REQUIRED"
    assert "'customer'" in last.content


def test_capped_reads_a_custom_dimension_from_metadata(guard: al.Guard) -> None:
    per_customer(guard)
    model = capped(openai(), guard, dimension_keys=CUSTOMER_KEYS)
    assert "customer" in model.metadata_keys
    with replay("openai_chat.yaml"):
        model.invoke("Hello!", config={"metadata": {"tenant": "acme", "customer": "c-9"}})
    assert usd_spent(guard, "tenant:acme/customer:c-9") == cost(9, 9)


# -- tools ----------------------------------------------------------------------------------

RAN: list[str] = []


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    RAN.append("get_weather")
    return "fine"


@tool
def get_population(city: str) -> str:
    """The population of a city."""
    RAN.append("get_population")
    return "large"


@tool
def get_capital(country: str) -> str:
    """The capital of a country."""
    RAN.append("get_capital")
    return "London"


@tool
def broken(city: str) -> str:
    """A tool that fails."""
    raise RuntimeError("tool failed")


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    RAN.clear()


def test_tool_calls_are_priced_and_counted(funded: al.Guard) -> None:
    funded.set_quota(ACME, calls=2, window="day", action_kind="tool.*")
    handler = BudgetCallbackHandler(funded, tenant="acme", tool_prices={"get_weather": "0.01"})
    config: Any = {"callbacks": [handler]}
    get_weather.invoke({"city": "Paris"}, config=config)
    get_population.invoke({"city": "Paris"}, config=config)  # free, but still a call
    with pytest.raises(al.QuotaExceeded):
        get_weather.invoke({"city": "Paris"}, config=config)
    assert RAN == ["get_weather", "get_population"]  # the third never ran
    assert spent(funded)[0] == al.usd("0.01").amount
    actions = [r.action for r in funded.audit("acme", types=["reservation.reserved"])]
    assert actions == ["tool.call get_weather", "tool.call get_population"]


def test_a_tool_refused_by_access_rules_or_failing_is_not_charged(funded: al.Guard) -> None:
    funded.set_access(ACME, tools_deny=["get_pop*"])
    handler = BudgetCallbackHandler(funded, tenant="acme", tool_prices={"broken": 1})
    with pytest.raises(al.NotAllowed):
        get_population.invoke({"city": "Paris"}, config={"callbacks": [handler]})
    with pytest.raises(RuntimeError):
        broken.invoke({"city": "Paris"}, config={"callbacks": [handler]})
    assert RAN == [] and spent(funded) == (0, 0)
    assert [r.type for r in funded.audit("acme")][-1] == "reservation.released"


# -- agents: the handler, and BudgetMiddleware ---------------------------------------------

RUN_SCOPE = "tenant:acme/workflow:agent"


@pytest.fixture
def per_run(guard: al.Guard) -> al.Guard:
    """Enough for a few turns of the looping agent, not for a runaway."""
    guard.set_budget(ACME, usd=10)
    guard.set_budget(RUN_SCOPE, usd="0.002", per="run")
    return guard


def run_config(run: str, *callbacks: Any) -> Any:
    return {"metadata": {"tenant": "acme", "workflow": "agent", "run": run},
            "callbacks": list(callbacks), "recursion_limit": 200}


def test_a_tool_loop_is_stopped_by_its_run_budget(per_run: al.Guard) -> None:
    handler = BudgetCallbackHandler(per_run, tool_prices={"get_weather": "0.0002"})
    agent = create_agent(openai(), [get_weather, get_population])
    with looping("openai_chat_tool_calls.yaml") as cassette, pytest.raises(al.BudgetExceeded):
        agent.invoke({"messages": [("user", "weather?")]}, config=run_config("r-1", handler))
    loops = cassette.play_count
    assert 2 <= loops < 20
    run = usd_spent(per_run, f"{RUN_SCOPE}/run:r-1")
    assert 0 < run <= al.usd("0.002").amount
    # every model call and tool call of the run was charged, and nothing else
    charged = sum(r.charged[0].amount for r in committed(per_run))
    assert charged == run == (loops * cost(207, 46) + RAN.count("get_weather")
                              * al.usd("0.0002").amount)
    # a new run has a budget of its own
    with looping("openai_chat_tool_calls.yaml"), pytest.raises(al.BudgetExceeded):
        agent.invoke({"messages": [("user", "weather?")]}, config=run_config("r-2", handler))
    assert usd_spent(per_run, f"{RUN_SCOPE}/run:r-2") == run


def test_middleware_meters_an_agent_and_sets_a_bound(funded: al.Guard) -> None:
    middleware = BudgetMiddleware(funded, tool_prices={"get_capital": "0.01"})
    agent = create_agent(openai(streaming=True), [get_capital], middleware=[middleware])
    handler = BudgetCallbackHandler(funded)  # attached too: it must not hold anything twice
    with replay("openai_chat_stream.yaml") as cassette:
        result = agent.invoke({"messages": [("user", "Capital of the UK?")]},
                              config={"metadata": {"tenant": "acme"}, "callbacks": [handler]})
    assert result["messages"][-1].content == "The capital of the UK is London."
    assert cassette.play_count == 2 and RAN == ["get_capital"]
    assert sent(0)["max_completion_tokens"] == sent(1)["max_completion_tokens"] == 4_096
    assert spent(funded) == (cost(53, 15) + cost(78, 9) + al.usd("0.01").amount, 68 + 87)
    actions = [r.action for r in funded.audit("acme", types=["reservation.reserved"])]
    assert actions == ["llm.completion openai:gpt-4o-mini", "tool.call get_capital",
                       "llm.completion openai:gpt-4o-mini"]


def test_middleware_holds_the_agents_system_prompt(funded: al.Guard) -> None:
    """langchain 1.0 hands middleware a `system_prompt` string, 1.1 and later a
    `system_message`: either way the prompt is part of the input held for."""
    held = []
    for prompt in (None, "Answer in the style of a long Victorian novel. " * 50):
        agent = create_agent(openai(), [], system_prompt=prompt,
                             middleware=[BudgetMiddleware(funded, tenant="acme")])
        with replay("openai_chat.yaml"):
            agent.invoke({"messages": [("user", "Hello!")]})
        if prompt is not None:
            assert sent()["messages"][0] == {"role": "system", "content": prompt}
        (reserved,) = funded.audit("acme", types=["reservation.reserved"])[-1:]
        held.append(reserved.estimate[1].amount)
    assert held[1] - held[0] > 400  # the prompt's 450 words, in tokens


def test_middleware_caps_reach_the_outgoing_body(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model=MINI, max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    guard.set_access(ACME, tools_deny=["get_population"])
    agent = create_agent(ChatOpenAI(model="gpt-4o", api_key="sk-test"),
                         [get_weather, get_population],
                         middleware=[BudgetMiddleware(guard, tenant="acme")])
    with replay("openai_chat_tool_calls.yaml") as cassette:
        result = agent.invoke({"messages": [("user", "weather?")]})
    body = sent()
    assert (body["model"], body["max_completion_tokens"]) == (MINI, 100)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    # the replayed model still asks for get_population: refused, and the run ends there
    assert RAN == ["get_weather"] and cassette.play_count == 1
    last = result["messages"][-1]
    assert isinstance(last, AIMessage)
    assert last.content.startswith("Stopped after a refused tool call: ")
    assert last.response_metadata["allotment"]["denied"] == "TOOL_NOT_ALLOWED"
    model_calls = [r for r in committed(guard) if r.charged[0].amount > 0]
    assert model_calls[0].charged[0].amount == cost(207, 46)  # at the cheaper model's price


def test_middleware_stops_a_looping_agent_with_an_answer(per_run: al.Guard) -> None:
    agent = create_agent(openai(), [get_weather, get_population], middleware=[
        BudgetMiddleware(per_run, tool_prices={"get_weather": "0.0002"})])
    with looping("openai_chat_tool_calls.yaml") as cassette:
        result = agent.invoke({"messages": [("user", "weather?")]}, config=run_config("r-1"))
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert last.response_metadata["allotment"]["denied"] == "BUDGET_EXCEEDED"
    assert 2 <= cassette.play_count < 20
    assert 0 < usd_spent(per_run, f"{RUN_SCOPE}/run:r-1") <= al.usd("0.002").amount
    erroring = create_agent(openai(), [get_weather, get_population], middleware=[
        BudgetMiddleware(per_run, exit_behavior="error")])
    with looping("openai_chat_tool_calls.yaml"), pytest.raises(al.BudgetExceeded):
        erroring.invoke({"messages": [("user", "weather?")]}, config=run_config("r-2"))


def test_middleware_with_chat_anthropic_caps_max_tokens_and_tools(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_access(ACME, max_tokens_per_call=512, tools_deny=["get_time"])

    @tool
    def get_time(timezone: str) -> str:
        """The time in a timezone."""
        return "noon"

    @tool
    def get_weather_at(location: str) -> str:
        """The weather at a location."""
        return "fine"

    agent = create_agent(anthropic(), [get_weather_at, get_time],
                         middleware=[BudgetMiddleware(guard, tenant="acme")])
    with replay("anthropic_tool_use.yaml"):
        result = agent.invoke({"messages": [("user", "Weather and time in New York?")]})
    body = sent()
    assert body["max_tokens"] == 512  # not the 128000 ChatAnthropic would send
    assert [t["name"] for t in body["tools"]] == ["get_weather_at"]
    assert result["messages"][-1].response_metadata["allotment"]["denied"] == (
        "TOOL_NOT_ALLOWED")
    assert usd_spent(guard, ACME) == cost(721, 112, SONNET)


def test_middleware_async(funded: al.Guard) -> None:
    middleware = BudgetMiddleware(funded, tenant="acme", tool_prices={"get_capital": "0.01"})
    agent = create_agent(openai(streaming=True), [get_capital], middleware=[middleware])

    async def main() -> Any:
        with replay("openai_chat_stream.yaml"):
            return await agent.ainvoke({"messages": [("user", "Capital of the UK?")]})

    result = asyncio.run(main())
    assert result["messages"][-1].content == "The capital of the UK is London."
    assert spent(funded) == (cost(53, 15) + cost(78, 9) + al.usd("0.01").amount, 68 + 87)


def test_middleware_reads_the_tenant_from_the_agent_context(guard: al.Guard) -> None:
    @dataclass
    class Context:
        tenant: str
        run: str

    guard.set_budget("tenant:beta", usd=10)
    guard.set_budget("tenant:beta/workflow:agent", usd=1, per="run")
    agent = create_agent(openai(), [], context_schema=Context,
                         middleware=[BudgetMiddleware(guard, workflow="agent")])
    with replay("openai_chat.yaml"):
        agent.invoke({"messages": [("user", "Hello!")]}, context=Context("beta", "r-3"))
    assert usd_spent(guard, "tenant:beta/workflow:agent/run:r-3") == cost(9, 9)


# -- capped(): caps for a model in a plain chain --------------------------------------------


def test_capped_sends_a_bound_and_charges_the_usage(funded: al.Guard) -> None:
    model = capped(openai(), funded, tenant="acme")
    with replay("openai_chat.yaml") as cassette:
        reply = model.invoke("Hello!")
    assert reply.content == "Hello! How can I assist you today?" and cassette.play_count == 1
    assert sent()["max_completion_tokens"] == 4_096  # the bound the estimate assumed
    assert spent(funded) == (cost(9, 9), 18)


def test_capped_applies_degrade_caps(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1.0, model=MINI, max_tokens=100)])
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd("0.01"))
    model = capped(ChatOpenAI(model="gpt-4o", api_key="sk-test"), guard,
                   tenant="acme")
    with replay("openai_chat.yaml"):
        model.invoke("Hello!", max_tokens=2_000)  # asking for more does not lift the cap
    assert (sent()["model"], sent()["max_completion_tokens"]) == (MINI, 100)
    (done,) = committed(guard)
    assert done.charged[0].amount == cost(9, 9)  # charged at the model that answered


def test_capped_shrinks_max_tokens_to_what_the_budget_holds(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.0006153")  # the input and about 1,000 output tokens
    with replay("openai_chat.yaml") as cassette:  # at the default tier's price
        capped(openai(service_tier="default"), guard, tenant="acme").invoke("Hello!")
    assert cassette.play_count == 1
    assert 900 < sent()["max_completion_tokens"] < 1_100


def test_capped_filters_bound_tools(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10)
    guard.set_access(ACME, tools_deny=["get_population"])
    model = capped(openai(), guard, tenant="acme").bind_tools([get_weather, get_population])
    with replay("openai_chat_tool_calls.yaml"):
        reply = model.invoke("weather?")
    assert [t["function"]["name"] for t in sent()["tools"]] == ["get_weather"]
    assert reply.tool_calls and usd_spent(guard, ACME) == cost(207, 46)


def test_capped_streams_and_async(funded: al.Guard) -> None:
    model = capped(anthropic(), funded)
    config: Any = {"metadata": {"tenant": "acme"}}
    with replay("anthropic_messages_stream.yaml"):
        text = "".join(str(chunk.content) for chunk in model.stream(ASK, config=config))
    assert text == "Sunlight scatters off air molecules."
    # ChatAnthropic would send the model's maximum (128000); where its model profile says so
    # (langchain-anthropic 1.2 and later) that counts as no bound given, and the default holds
    chat = anthropic()
    profile = getattr(chat, "profile", None) or {}
    profiled = profile.get("max_output_tokens") == chat.max_tokens
    assert sent()["max_tokens"] == (4_096 if profiled else chat.max_tokens)

    async def main() -> None:
        with replay("anthropic_messages.yaml"):
            await model.ainvoke(ASK, config=config)
        with replay("anthropic_messages_stream.yaml"):
            async for _ in model.astream(ASK, config=config):
                pass

    asyncio.run(main())
    assert spent(funded) == (2 * cost(21, 13, SONNET) + cost(14, 11, SONNET), 2 * 34 + 25)


def test_capped_streams_ask_for_usage_where_chat_openai_would_not(funded: al.Guard) -> None:
    own_client = openai(http_client=http_client("openai"))  # stream_usage then defaults off
    with replay("openai_chat_stream.yaml"):
        list(capped(own_client, funded, tenant="acme").stream("UK?"))
    assert sent()["stream_options"] == {"include_usage": True}
    assert spent(funded) == (cost(53, 15), 68)


def test_capped_with_a_handler_attached_charges_once(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    chain = RunnableLambda(lambda text: text) | capped(openai(), funded, tenant="acme")
    with replay("openai_chat.yaml"):
        chain.invoke("Hello!", config={"callbacks": [handler]})
    assert spent(funded) == (cost(9, 9), 18)
    assert len(funded.audit("acme", types=["reservation.reserved"])) == 1


def test_capped_denial_sends_nothing_or_answers_through_on_deny(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.000001")
    with replay("openai_chat.yaml") as cassette:
        with pytest.raises(al.BudgetExceeded):
            capped(openai(), guard, tenant="acme").invoke("Hello!")
        with pytest.raises(al.BudgetExceeded):
            list(capped(openai(), guard, tenant="acme").stream("Hello!"))
        answer = capped(openai(), guard, tenant="acme", on_deny=lambda denied: AIMessage(
            f"Sorry: {denied.decision.reason}")).invoke("Hello!")
    assert answer.content == "Sorry: BUDGET_EXCEEDED" and cassette.play_count == 0


def test_capped_broken_off_stream_commits_the_estimate(funded: al.Guard) -> None:
    with replay("openai_chat_stream.yaml"):
        stream = capped(openai(), funded, tenant="acme").stream("UK?")
        next(stream)
        stream.close()
    (done,) = committed(funded)
    assert done.charged == done.estimate


# -- the example ----------------------------------------------------------------------------


def test_the_example_runs_offline() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    out = subprocess.run([sys.executable, "langchain_callback.py"], cwd=ROOT / "examples",
                         env=env, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    for text in ("acme: Per-tenant budgets", "globex: Per-tenant budgets",
                 "stopped: tenant:globex/workflow:research/run:r-1: BUDGET_EXCEEDED",
                 "capped: max_tokens 64, the reply used 64 output tokens",
                 "agent: Stopped before another model call: "
                 "tenant:globex/workflow:research/run:r-2: BUDGET_EXCEEDED"):
        assert text in out, out
    summary = json.loads(out.splitlines()[-1])
    assert summary["tenants"] == ["acme", "globex"]
    assert all(float(usd) > 0 for usd in summary["spent_usd"].values())


# -- service tiers ---------------------------------------------------------------------------


def priority(input_tokens: int, output_tokens: int) -> int:
    return expected_cost("openai", MINI, input_tokens, output_tokens, tier="priority")


def test_the_handler_holds_the_tier_asked_for_and_charges_the_one_served(
        funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme")
    with replay("openai_chat_priority.yaml"):
        openai(service_tier="priority").invoke("Hello!", config={"callbacks": [handler]})
    assert sent()["service_tier"] == "priority"
    with replay("openai_chat_stream_priority.yaml"):
        list(openai().stream("capital of the UK?", config={"callbacks": [handler]}))
    assert spent(funded) == (priority(9, 9) + priority(53, 15), 18 + 68)
    asked, left_open = funded.audit("acme", types=["reservation.reserved"])
    assert asked.estimate[0].amount == expected_hold("openai", MINI, asked, "priority")
    assert left_open.estimate[0].amount == expected_hold("openai", MINI, left_open, "priority")


def test_capped_and_the_middleware_charge_the_tier_served(funded: al.Guard) -> None:
    model = capped(openai(service_tier="default"), funded, tenant="acme")
    with replay("openai_chat_priority.yaml"):
        model.invoke("Hello!")
    with replay("openai_chat_stream_priority.yaml"):
        list(model.stream("capital of the UK?"))
    assert spent(funded) == (priority(9, 9) + priority(53, 15), 18 + 68)
    held = funded.audit("acme", types=["reservation.reserved"])
    assert [r.estimate[0].amount for r in held] == [expected_hold("openai", MINI, r)
                                                    for r in held]  # default: standard
    middleware = BudgetMiddleware(funded, tool_prices={"get_capital": "0.01"})
    agent = create_agent(openai(streaming=True), [get_capital], middleware=[middleware])
    with replay("openai_chat_stream_priority.yaml"):
        agent.invoke({"messages": [("user", "Capital of the UK?")]},
                     config={"metadata": {"tenant": "acme"}})
    assert spent(funded)[0] == (priority(9, 9) + 2 * priority(53, 15) + priority(78, 9)
                                + al.usd("0.01").amount)
