"""Wrap an OpenAI client: every call is reserved before it is sent and committed from the
usage the provider reports — streams included.

    python examples/openai_wrapper.py

Offline it talks to a simulated provider; with OPENAI_API_KEY set, to OpenAI itself.
"""

from __future__ import annotations

import openai
from simulated_provider import openai_http

import allotment as al
from allotment.integrations.openai import wrap_openai


def main() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=5, period="month")
    guard.set_budget("tenant:acme/workflow:support-chat", usd="0.002", per="session")
    guard.set_access("tenant:acme", models_allow=["gpt-4o*"], max_tokens_per_call=512)

    client = wrap_openai(openai.OpenAI(api_key="sk-simulated", http_client=openai_http()),
                         guard, tenant="acme", workflow="support-chat")
    question = [{"role": "user", "content": "Why do AI platforms need per-tenant budgets?"}]

    with al.scope(session="s-1"):
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=question)
        print("answer:", reply.choices[0].message.content)
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=question,
                                                stream=True)
        print("streamed:", "".join(c.choices[0].delta.content or "" for c in stream
                                     if c.choices))
        try:
            for _ in range(50):  # the session budget stops a loop before it runs away
                client.chat.completions.create(model="gpt-4o-mini", messages=question)
        except al.BudgetExceeded as denied:
            print("stopped:", denied)
    try:
        client.chat.completions.create(model="o3", messages=question)
    except al.NotAllowed as denied:
        print("refused:", denied)

    for balance in guard.balances("tenant:acme"):
        print(f"{balance.scope:50} spent {al.format_amount(balance.unit, balance.spent):>10}"
              f"  remaining {al.format_amount(balance.unit, balance.remaining)}")


if __name__ == "__main__":
    main()
