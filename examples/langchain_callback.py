"""LangChain under per-tenant budgets: one callback handler serves every tenant of a chain,
`capped()` applies caps to a model, and `BudgetMiddleware` stops a runaway agent with an
answer instead of an exception.

    python examples/langchain_callback.py

Offline it talks to a simulated provider; with OPENAI_API_KEY set, to OpenAI itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx2
from langchain.agents import create_agent
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from simulated_provider import http_client, openai_http, openai_reply

import allotment as al
from allotment.integrations.langchain import BudgetCallbackHandler, BudgetMiddleware, capped


def model(http: Any = None) -> ChatOpenAI:
    """gpt-4o-mini, simulated unless OPENAI_API_KEY is set."""
    if os.environ.get("OPENAI_API_KEY"):
        return ChatOpenAI(model="gpt-4o-mini")
    return ChatOpenAI(model="gpt-4o-mini", api_key="sk-simulated",
                      http_client=http or openai_http(), stream_usage=True)


def always_searching(request: httpx2.Request) -> httpx2.Response:
    """A model that wants one more search every time it is asked: the runaway agent."""
    body = json.loads(request.content)
    if not body.get("tools"):
        return openai_reply(request)
    usage = {"prompt_tokens": len(request.content) // 4, "completion_tokens": 20,
             "total_tokens": len(request.content) // 4 + 20}
    call = {"id": f"call_{len(body['messages'])}", "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": "more"})}}
    return httpx2.Response(200, json={
        "id": "chatcmpl-loop", "object": "chat.completion", "created": 0,
        "model": body["model"], "usage": usage, "choices": [{
            "index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]})


@tool
def search(query: str) -> str:
    """Search the web."""
    return "nothing new"


def main() -> None:
    guard = al.Guard()
    for tenant in ("acme", "globex"):
        guard.set_budget(f"tenant:{tenant}", usd=5, period="month")
    guard.set_budget("tenant:globex/workflow:research", usd="0.0005", per="run")

    # one handler for every tenant: the tenant and run ride in each run's metadata
    handler = BudgetCallbackHandler(guard, tool_prices={"search": "0.0001"})
    chain = (ChatPromptTemplate.from_messages([("user", "{question}")]) | model()
             | StrOutputParser())
    question = {"question": "Why do AI platforms need per-tenant budgets?"}
    for tenant in ("acme", "globex"):
        answer = chain.invoke(question, config={"callbacks": [handler],
                                                "metadata": {"tenant": tenant}})
        print(f"{tenant}: {answer}")
    streamed = "".join(chain.stream(question, config={"callbacks": [handler],
                                                      "metadata": {"tenant": "acme"}}))
    print("acme streamed:", streamed)

    # a research loop of globex's: its per-run budget refuses the call that would overspend
    run: Any = {"callbacks": [handler],
                "metadata": {"tenant": "globex", "workflow": "research", "run": "r-1"}}
    calls = 0
    try:
        while calls < 100:
            chain.invoke(question, config=run)
            calls += 1
    except al.BudgetExceeded as denied:
        print(f"stopped: {denied} (after {calls} calls)")

    # capped(): the model is sent the max_tokens the tenant's access rule allows
    guard.set_access("tenant:acme", max_tokens_per_call=64)
    reply = capped(model(), guard, tenant="acme").invoke("Explain token budgets at length.")
    print(f"capped: max_tokens 64, the reply used {reply.usage_metadata['output_tokens']}"
          " output tokens")

    # an agent that would search forever ends with an answer saying why it stopped
    runaway = None if os.environ.get("OPENAI_API_KEY") else http_client(
        "openai", always_searching)
    agent = create_agent(model(runaway), [search], middleware=[
        BudgetMiddleware(guard, tool_prices={"search": "0.0001"})])
    result = agent.invoke({"messages": [("user", "Research our competitors.")]},
                          config={"metadata": {"tenant": "globex", "workflow": "research",
                                               "run": "r-2"}, "recursion_limit": 200})
    searches = sum(1 for m in result["messages"] if m.type == "tool")
    print(f"agent: {result['messages'][-1].content} ({searches} searches)")

    for balance in guard.balances("tenant:acme") + guard.balances("tenant:globex"):
        print(f"{balance.scope:45} spent {al.format_amount(balance.unit, balance.spent):>10}")
    print(json.dumps({"tenants": ["acme", "globex"], "spent_usd": {
        t: str(al.microcents_to_usd(guard.balances(f"tenant:{t}")[0].spent))
        for t in ("acme", "globex")}}))


if __name__ == "__main__":
    main()
