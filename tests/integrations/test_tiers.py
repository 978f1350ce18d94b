"""The shipped tiers (examples/plans.yaml) through the real SDK wrappers, with HTTP replayed
from recorded cassettes: Starter answers shorter before its month runs out, Pro switches to a
cheaper model of the same provider — for OpenAI and Anthropic calls alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import pytest

import allotment as al
from allotment.integrations.anthropic import wrap_anthropic
from allotment.integrations.openai import wrap_openai

from support.cassettes import expected_cost, replay, sent

PLANS = al.Plan.load_all(Path(__file__).resolve().parents[2] / "examples" / "plans.yaml")
TENANT = "acme"


@dataclass(frozen=True)
class Provider:
    name: str
    cassette: str
    model: str  # what the caller asks for
    cheaper: str  # what the Pro plan degrades it to
    usage: tuple[int, int]  # the recorded input and output tokens


OPENAI = Provider("openai", "openai_chat.yaml", "gpt-4o", "gpt-4o-mini", (9, 9))
ANTHROPIC = Provider("anthropic", "anthropic_messages.yaml", "claude-sonnet-4-6",
                     "claude-haiku-4-5", (14, 11))
PROVIDERS = pytest.mark.parametrize("provider", [OPENAI, ANTHROPIC], ids=lambda p: p.name)


def ask(guard: al.Guard, provider: Provider, max_tokens: int) -> tuple[str, int]:
    """One call through the provider's wrapped client: the model and max_tokens it sent."""
    messages = [{"role": "user", "content": "Hello!"}]
    with replay(provider.cassette) as cassette:
        if provider is OPENAI:
            wrap_openai(openai.OpenAI(api_key="sk-test", max_retries=0), guard,
                        tenant=TENANT).chat.completions.create(
                model=provider.model, messages=messages, max_tokens=max_tokens)
        else:
            wrap_anthropic(anthropic.Anthropic(api_key="sk-test", max_retries=0), guard,
                           tenant=TENANT).messages.create(
                model=provider.model, messages=messages, max_tokens=max_tokens)
    assert cassette.play_count == 1
    return sent()["model"], sent()["max_tokens"]


def spend(guard: al.Guard, dollars: str) -> None:
    """Spend of the month made elsewhere (other calls of the tenant)."""
    guard.record(al.Subject(tenant=TENANT), al.Action("llm.completion", "openai:gpt-4o"),
                 al.usd(dollars))


def month_spent(guard: al.Guard) -> int:
    (month,) = [b for b in guard.balances(f"tenant:{TENANT}", include_children=False)
                if b.unit is al.Unit.USD_MICROCENTS and b.period == "month"]
    assert month.reserved == 0, "every call settled"
    return month.spent


@PROVIDERS
def test_starter_answers_shorter_when_a_fifth_of_its_month_is_left(
        guard: al.Guard, provider: Provider) -> None:
    guard.assign_plan(TENANT, PLANS["starter"])
    assert ask(guard, provider, 1_024) == (provider.model, 1_024)
    spend(guard, "40.50")  # $50 a month: under 20% left
    assert ask(guard, provider, 1_024) == (provider.model, 512)  # same model, shorter


@PROVIDERS
def test_pro_switches_to_a_cheaper_model_of_the_same_provider(
        guard: al.Guard, provider: Provider) -> None:
    guard.assign_plan(TENANT, PLANS["pro"])
    assert ask(guard, provider, 2_000) == (provider.model, 2_000)
    spend(guard, "401")  # $500 a month: under 20% left
    before = month_spent(guard)
    assert ask(guard, provider, 2_000) == (provider.cheaper, 2_000)
    # charged at the cheaper model's price
    assert month_spent(guard) - before == expected_cost(provider.name, provider.cheaper,
                                                        *provider.usage)
    spend(guard, "75")  # under 5% left: the cheaper model, and shorter
    assert ask(guard, provider, 2_000) == (provider.cheaper, 1_024)
