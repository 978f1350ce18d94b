"""Degrade rules name their model per provider, checked against the price data when they are
set: a typo or another provider's model is refused then, and never turns the calls it
degrades into denials (issue 17, item 1). Every test runs on both stores, sync and async."""

from __future__ import annotations

from typing import Any

import pytest

import allotment as al

ACME = "tenant:acme"
SUBJECT = al.Subject(tenant="acme")
TARGETS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def caps_for(guard: al.Guard, name: str) -> al.Caps | None:
    """The caps a call to `name` gets (its hold given back at once)."""
    r = guard.reserve(SUBJECT, al.Action("llm.completion", name), al.usd("0.01"))
    r.release("probe")
    return r.caps


def spend(guard: al.Guard, dollars: str) -> None:
    guard.record(SUBJECT, al.Action("llm.completion", "openai:gpt-4o"), al.usd(dollars))


def allocated(guard: al.Guard) -> int:
    (balance,) = guard.balances(ACME, include_children=False)
    return balance.allocated


@pytest.mark.parametrize("model, says", [
    ("gpt-4o-mnii", r"no price for 'gpt-4o-mnii' at any provider \(did you mean "
                    r"'gpt-4o-mini'"),
    ({"anthropic": "gpt-4o-mini"}, r"no price for 'gpt-4o-mini' at anthropic.*priced at "
                                   r".*openai"),
    ({"antropic": "claude-haiku-4-5"}, r"'antropic' is not a provider.*'anthropic'"),
    ({"anthropic": "claude-hiaku-4-5"}, r"at anthropic \(did you mean 'claude-haiku-4-5'"),
    ("openai:claude-haiku-4-5", r"no price for 'claude-haiku-4-5' at openai"),
], ids=["typo", "other-providers-model", "provider-typo", "model-typo", "prefixed"])
def test_a_model_without_a_price_is_refused_when_the_rule_is_set(
        guard: al.Guard, model: Any, says: str) -> None:
    guard.set_budget(ACME, usd=10, degrade=[{"below": 1, "max_tokens": 100}])
    spend(guard, "1")
    with pytest.raises(al.InvalidRequest, match=r"degrade\[0\]\.model: .*" + says):
        guard.set_budget(ACME, usd=20, degrade=[{"below": 0.95, "model": model}])
    assert allocated(guard) == al.usd(10).amount  # nothing changed
    assert caps_for(guard, "openai:gpt-4o") == al.Caps(max_tokens=100)


def test_a_plan_with_a_model_without_a_price_does_not_load() -> None:
    with pytest.raises(al.InvalidRequest, match=r"budgets\[0\]: degrade\[0\]\.model: .*"
                                                r"did you mean 'gpt-4o-mini'"):
        al.Plan.from_dict({"budgets": [{"usd": 5, "degrade": [
            {"below": 0.2, "model": "gpt-4o-mnii"}]}]}, "typo")


def test_a_single_model_degrades_only_calls_whose_provider_prices_it(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[al.Degrade(below=1, model="gpt-4o-mini",
                                                       max_tokens=100)])
    spend(guard, "1")
    assert caps_for(guard, "openai:gpt-4o") == al.Caps(max_tokens=100, model="gpt-4o-mini")
    # Claude keeps its model (and the rule's other caps): no PRICE_UNKNOWN for the tenant
    assert caps_for(guard, "anthropic:claude-sonnet-4-6") == al.Caps(max_tokens=100)


def test_a_rule_names_its_model_per_provider(guard: al.Guard) -> None:
    guard.set_budget(ACME, usd=10, degrade=[
        al.Degrade(below=0.95, model=TARGETS),
        al.Degrade(below=0.5, model="openai:gpt-4.1-nano")])
    spend(guard, "1")  # 90% left: the first rule
    assert caps_for(guard, "openai:gpt-4o") == al.Caps(model="gpt-4o-mini")
    assert caps_for(guard, "anthropic:claude-sonnet-4-6") == al.Caps(model="claude-haiku-4-5")
    assert caps_for(guard, "mistral:mistral-large-latest") is None  # not named: undegraded
    assert caps_for(guard, "gpt-4o") is None  # no provider: undegraded
    spend(guard, "5")  # 40% left: the deeper cut where it names the provider
    assert caps_for(guard, "openai:gpt-4o") == al.Caps(model="gpt-4.1-nano")
    assert caps_for(guard, "anthropic:claude-sonnet-4-6") == al.Caps(model="claude-haiku-4-5")


def test_a_rule_as_set_names_its_providers() -> None:
    (rule,) = al.Plan.from_dict({"budgets": [{"usd": 5, "degrade": [
        {"below": 0.2, "model": "claude-haiku-4-5"}]}]}, "p").budgets[0].degrade
    assert rule.model == "claude-haiku-4-5"  # as written; setting it resolves providers
    from allotment.budgets import set_budget_op

    (stored,) = set_budget_op(ACME, usd=5, degrade=[rule]).degrade
    assert isinstance(stored.model, dict) and stored.model["anthropic"] == "claude-haiku-4-5"
    assert "openai" not in stored.model
    (prefixed,) = set_budget_op(ACME, usd=5, degrade=[
        {"below": 0.2, "model": "openai:gpt-4o-mini"}]).degrade
    assert prefixed.model == {"openai": "gpt-4o-mini"}


@pytest.mark.parametrize("model, says", [
    ({}, "1..64 providers"), ({"openai": ""}, "model\\['openai'\\]: must be 1-128"),
    ({"": "gpt-4o-mini"}, "a provider: must be 1-128"),
    ({"openai": 5}, "model\\['openai'\\]: expected a string")],
    ids=["empty", "empty-model", "empty-provider", "not-a-string"])
def test_a_malformed_mapping_is_refused(model: Any, says: str) -> None:
    with pytest.raises(al.InvalidRequest, match=says):
        al.Degrade(below=0.2, model=model)


def test_a_rule_with_a_model_per_provider_is_a_value() -> None:
    one = al.Degrade(below=0.2, model=TARGETS)
    same = al.Degrade(below=0.2, model=dict(reversed(TARGETS.items())))
    assert one == same and len({one, same, al.Degrade(below=0.2, model="gpt-4o-mini")}) == 2
    assert one.caps("anthropic") == al.Caps(model="claude-haiku-4-5")
    assert one.caps() == al.Caps()  # no provider: the call keeps its model
