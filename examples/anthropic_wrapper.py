"""Wrap an Anthropic client: messages.create and messages.stream are reserved before they are
sent, capped by policy, and committed from the usage in the response or the stream.

    python examples/anthropic_wrapper.py

Offline it talks to a simulated provider; with ANTHROPIC_API_KEY set, to Anthropic itself.
"""

from __future__ import annotations

import anthropic
from simulated_provider import anthropic_http

import allotment as al
from allotment.integrations.anthropic import wrap_anthropic


def main() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=1, period="day",
                     degrade=[al.Degrade(below=0.5, max_tokens=300)])
    client = wrap_anthropic(anthropic.Anthropic(api_key="sk-simulated",
                                                http_client=anthropic_http()),
                            guard, tenant="acme", agent="writer")
    ask = [{"role": "user", "content": "Summarise why tenants need their own budgets."}]

    reply = client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ask)
    print("answer:", reply.content[0].text)
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=1024,
                                messages=ask) as stream:
        final = stream.get_final_message()
    print("streamed usage:", final.usage.input_tokens, "in,", final.usage.output_tokens, "out")

    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "anthropic:other"),
                 al.usd("0.6"))  # spend elsewhere: now less than half remains
    capped = guard.decide(al.Subject(tenant="acme", agent="writer"),
                          al.Action("llm.completion", "anthropic:claude-sonnet-4-6"),
                          al.usd("0.01"))
    print("now capped:", capped.caps)
    client.messages.create(model="claude-sonnet-4-6", max_tokens=1024, messages=ask)

    for record in guard.audit("acme", types=["reservation.committed"]):
        print(f"{record.reservation_id}: estimate {record.estimate[0]} charged "
              f"{record.charged[0]}")


if __name__ == "__main__":
    main()
