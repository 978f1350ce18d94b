"""A degrade rule never turns a call the budget allows into a denial: when the model it
names cannot take the call, the wrapped client sends the call at its own model."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import openai
import pytest

import allotment as al
from allotment.budgets import set_budget_op
from allotment.integrations.openai import wrap_openai

from support.cassettes import replay, sent

ACME = "tenant:acme"
HELLO = [{"role": "user", "content": "Hello!"}]


def chat(guard: al.Guard) -> tuple[str, int]:
    """A gpt-4o-mini call through the wrapped client: the model and the bound it sent."""
    client = wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), guard, tenant="acme")
    with replay("openai_chat.yaml") as cassette:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert cassette.play_count == 1
    return sent()["model"], sent()["max_completion_tokens"]


def used(guard: al.Guard, dollars: str) -> None:
    guard.record(al.Subject(tenant="acme"), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd(dollars))


def test_a_stored_rule_naming_an_unpriced_model_leaves_the_call_its_model(
        guard: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    # a rule written before models were checked, as a store may still hold it
    rule = al.Degrade(below=1.0, model="gpt-4o-mnii", max_tokens=100)
    guard.store.execute(replace(set_budget_op(ACME, usd=10), degrade=(rule,)))
    used(guard, "0.01")
    with caplog.at_level(logging.DEBUG, logger="allotment"):
        assert chat(guard) == ("gpt-4o-mini", 100)  # its own model, the rule's other caps
    assert "names gpt-4o-mnii for openai:gpt-4o-mini, refused with PRICE_UNKNOWN" in caplog.text


def test_a_target_whose_hold_does_not_fit_leaves_the_call_its_model(
        guard: al.Guard, caplog: pytest.LogCaptureFixture) -> None:
    # gpt-4o's output costs 16 times gpt-4o-mini's: 256 tokens of it do not fit in $0.0009
    guard.set_budget(ACME, usd="0.001", degrade=[al.Degrade(below=1.0, model="gpt-4o")])
    used(guard, "0.0001")
    with caplog.at_level(logging.DEBUG, logger="allotment"):
        model, max_tokens = chat(guard)
    assert model == "gpt-4o-mini" and 256 <= max_tokens < 4_096  # allowed, shrunk to fit
    assert "refused with BUDGET_EXCEEDED; the call keeps its model" in caplog.text
    (usd,) = guard.balances(ACME, include_children=False)
    assert usd.reserved == 0 and usd.spent > al.usd("0.0001").amount


def test_the_async_client_keeps_the_call_too(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd="0.001", degrade=[al.Degrade(below=1.0, model="gpt-4o")])
    used(guard, "0.0001")

    async def main() -> None:
        client = wrap_openai(openai.AsyncOpenAI(api_key="sk-test", max_retries=0), guard,
                             tenant="acme")
        with replay("openai_chat.yaml") as cassette:
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        assert cassette.play_count == 1

    asyncio.run(main())
    assert sent()["model"] == "gpt-4o-mini"
    (usd,) = guard.balances(ACME, include_children=False)
    assert usd.reserved == 0 and usd.spent > al.usd("0.0001").amount
