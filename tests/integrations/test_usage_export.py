"""The provider's token breakdown reaches the usage export: wrapped OpenAI and Anthropic calls
and LangChain's handler, through the real SDKs with HTTP replayed from recorded cassettes."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import anthropic
import openai
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import SystemMessage

import allotment as al
from allotment.integrations.anthropic import wrap_anthropic
from allotment.integrations.langchain import BudgetCallbackHandler
from allotment.integrations.openai import wrap_openai
from allotment.usage import read_usage

from support.cassettes import replay

USD = al.Unit.USD_MICROCENTS
CACHED = "claude-3-7-sonnet-20250219"
SYSTEM = [{"type": "text", "text": "long novel", "cache_control": {"type": "ephemeral"}}]
ASK = [{"role": "user", "content": "What's the capital of France?"}]


def breakdown(guard: al.Guard) -> list[tuple[Any, ...]]:
    """The USD rows as (scope, model, spend, calls, input, cached, cache writes, output,
    reasoning), after a CSV round trip."""
    out = io.StringIO()
    al.write_usage(guard.usage(tenant="acme"), out)
    rows = read_usage(io.StringIO(out.getvalue()))
    return [(r.scope, r.model, r.spend, r.calls, r.input_tokens, r.cached_tokens,
             r.cache_write_tokens, r.output_tokens, r.reasoning_tokens)
            for r in rows if r.unit is USD]


def spent_usd(guard: al.Guard) -> int:
    (ledger,) = [b for b in guard.balances("tenant:acme") if b.unit is USD]
    return ledger.spent


def test_openai_reasoning_tokens_reach_the_export(funded: al.Guard) -> None:
    client = wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), funded,
                         tenant="acme", workspace="research")
    with replay("openai_responses_reasoning.yaml"):
        client.responses.create(model="gpt-5-nano", input="Count r's in strawberry")
    assert breakdown(funded) == [
        ("tenant:acme/workspace:research", "openai:gpt-5-nano", spent_usd(funded), 1,
         11, 0, 0, 327, 320)]


def test_openai_async_stream_usage_reaches_the_export(funded: al.Guard) -> None:
    client = wrap_openai(openai.AsyncOpenAI(api_key="sk-test", max_retries=0), funded,
                         tenant="acme")

    async def call() -> None:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "capital of the UK?"}],
            stream=True)
        async for _ in stream:
            pass

    with replay("openai_chat_stream.yaml"):
        asyncio.run(call())
    assert breakdown(funded) == [
        ("tenant:acme", "openai:gpt-4o-mini", spent_usd(funded), 1, 53, 0, 0, 15, 0)]


def test_anthropic_cache_reads_and_writes_reach_the_export(funded: al.Guard) -> None:
    client = wrap_anthropic(anthropic.Anthropic(api_key="sk-test", max_retries=0), funded,
                            tenant="acme")
    with replay("anthropic_prompt_caching.yaml"):
        for _ in range(2):
            client.messages.create(model=CACHED, max_tokens=2048, system=SYSTEM, messages=ASK)
    # the first call writes the cache, the second reads it; input counts both (TokenUsage)
    assert breakdown(funded) == [
        ("tenant:acme", f"anthropic:{CACHED}", spent_usd(funded), 2, 2 * (21 + 1733), 1733,
         1733, 561 + 568, 0)]


def test_langchain_handler_passes_the_breakdown_on(funded: al.Guard) -> None:
    handler = BudgetCallbackHandler(funded, tenant="acme", workflow="novels")
    system = SystemMessage(content=SYSTEM)  # type: ignore[arg-type]
    model = ChatAnthropic(model=CACHED, api_key="sk-test", max_retries=0,  # type: ignore[call-arg]
                          max_tokens=2048)  # type: ignore[call-arg]
    with replay("anthropic_prompt_caching.yaml"):
        for _ in range(2):
            model.invoke([system, ("user", "Analyze the major themes.")],
                         config={"callbacks": [handler]})
    assert breakdown(funded) == [
        ("tenant:acme/workflow:novels", f"anthropic:{CACHED}", spent_usd(funded), 2,
         2 * (21 + 1733), 1733, 1733, 561 + 568, 0)]
