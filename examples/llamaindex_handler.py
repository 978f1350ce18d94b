"""Per-tenant budgets in LlamaIndex: a callback handler reserves before every LLM call (a
denial stops the call before anything is sent) and commits the usage the provider reports;
a guarded OpenAI client under LlamaIndex's OpenAI LLM also caps what is sent.

    pip install 'allotment[llamaindex]' llama-index-llms-openai
    python examples/llamaindex_handler.py

Offline it talks to a simulated provider; with OPENAI_API_KEY set, to OpenAI itself.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from simulated_provider import openai_http

import allotment as al
from allotment.integrations.llamaindex import BudgetHandler
from allotment.integrations.openai import wrap_openai


def http_client(sent: list[dict[str, Any]]) -> httpx2.Client:
    """The provider's HTTP client, noting each request body so we can show what was sent."""
    client = openai_http() or httpx2.Client()
    client.event_hooks["request"].append(lambda request: sent.append(json.loads(request.content)))
    return client


def main() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=5, period="month")
    guard.set_budget("tenant:acme/workflow:support-chat", usd="0.002", per="run")
    handler = BudgetHandler(guard, tenant="acme", workflow="support-chat")

    sent: list[dict[str, Any]] = []
    llm = OpenAI(model="gpt-4o-mini", api_key="sk-simulated", max_tokens=256, max_retries=0,
                 http_client=http_client(sent), callback_manager=CallbackManager([handler]))
    question = [ChatMessage(role="user", content="Why do AI platforms need per-tenant budgets?")]

    with instrument_tags({"run": "r-7"}):  # LlamaIndex's own tags name the run
        print("answer:", llm.chat(question).message.content)
        print("streamed:", "".join(r.delta or "" for r in llm.stream_chat(question)))
        try:
            for _ in range(50):  # the per-run budget stops a loop before it runs away
                llm.chat(question)
        except al.BudgetExceeded as denied:
            print("stopped:", denied)

    # Caps need a guarded client under the LLM: the handler stands aside for it.
    guard.set_access("tenant:acme", max_tokens_per_call=128)
    client = openai.OpenAI(api_key="sk-simulated", http_client=http_client(sent))
    capped = OpenAI(model="gpt-4o-mini", max_tokens=1_000, callback_manager=CallbackManager(
        [handler]), openai_client=wrap_openai(client, guard, tenant="acme",
                                              workflow="support-chat"))
    with al.scope(run="r-8"):
        capped.chat(question)
    print("capped: max_tokens sent =", sent[-1]["max_tokens"])

    for balance in guard.balances("tenant:acme"):
        print(f"{balance.scope:50} spent {al.format_amount(balance.unit, balance.spent):>10}"
              f"  remaining {al.format_amount(balance.unit, balance.remaining)}")


if __name__ == "__main__":
    main()
