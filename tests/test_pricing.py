"""Prices from genai-prices behind the Pricer; the offline input estimate stays an upper
bound on every recorded request."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import allotment as al
from allotment.amounts import usd_to_microcents
from allotment.estimation import input_tokens, text_tokens
from allotment.pricing import ModelPrice, Pricer, TokenUsage

ROOT = Path(__file__).resolve().parent.parent


def test_prices_come_from_genai_prices_with_cache_rates() -> None:
    price = Pricer().price_of("anthropic", "claude-sonnet-4-6")
    assert (price.input_mtok, price.output_mtok) == (Decimal("3.00"), Decimal("15.00"))
    usage = TokenUsage(input_tokens=1_754, output_tokens=561, cache_write_tokens=1_733)
    expected = (21 * Decimal(3) + 1_733 * Decimal("3.75") + 561 * Decimal(15)) / 10**6
    assert price.cost(usage) == expected


def test_overrides_per_model_and_per_tenant_win() -> None:
    pricer = Pricer(overrides={"openai:gpt-4o": {"input_mtok": 1, "output_mtok": 2}},
                    tenants={"acme": {"gpt-4o": ModelPrice(input_mtok=0, output_mtok=1)}})
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert pricer.cost("openai", "gpt-4o", usage) == al.usd(3)
    assert pricer.cost("openai", "gpt-4o", usage, tenant="acme") == al.usd(1)
    assert pricer.cost("openai", "gpt-4o-mini", usage) == al.usd("0.75")  # genai-prices


def test_an_unknown_model_is_refused_unless_a_fallback_prices_it() -> None:
    with pytest.raises(al.Denied) as denied:
        Pricer().price_of("openai", "not-a-model-9")
    assert (denied.value.decision.reason, denied.value.decision.scope) == (
        "PRICE_UNKNOWN", "openai:not-a-model-9")
    fallback = Pricer(fallback={"input_mtok": "0.5", "output_mtok": "1.5"})
    assert fallback.cost("openai", "not-a-model-9", TokenUsage(output_tokens=2_000_000)) == (
        al.usd(3))
    with pytest.raises(al.InvalidRequest):
        ModelPrice(input_mtok=-1, output_mtok=1)


def test_costs_round_up_to_the_microcent() -> None:
    price = ModelPrice(input_mtok="0.075", output_mtok=0)
    assert Pricer(fallback=price).cost("x", "y", TokenUsage(input_tokens=1)) == al.Amount(
        al.Unit.USD_MICROCENTS, 8)  # 7.5 microcents


def test_the_input_estimate_bounds_every_recorded_request() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from estimator_error import CASSETTES, reported

    from allotment.integrations.anthropic import hidden_prompt_tokens

    for path in sorted(CASSETTES.glob("*.yaml")):
        provider = path.name.split("_")[0]
        for interaction in yaml.safe_load(path.read_text())["interactions"]:
            request = json.loads(interaction["request"]["body"])
            overhead = hidden_prompt_tokens(request) if provider == "anthropic" else 0
            estimate = input_tokens(request, overhead)
            real = reported(provider, interaction["response"]["body"]["string"])
            assert real <= estimate <= 3 * real + 20, path.name


def test_random_looking_text_costs_a_token_per_character() -> None:
    assert text_tokens("1ivE5wmtkDKwFCQT") == 16
    assert text_tokens("the cat sat on the mat") == 6


PRICES = st.decimals(min_value=0, max_value=1_000, places=10, allow_nan=False,
                     allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(PRICES, PRICES, st.none() | PRICES, st.none() | PRICES, st.integers(0, 10**9),
       st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_integer_costs_equal_the_decimal_sum_rounded_up(
        input_mtok: Decimal, output_mtok: Decimal, read_mtok: Decimal | None,
        write_mtok: Decimal | None, prompt: int, output: int, read: int, write: int) -> None:
    price = ModelPrice(input_mtok=input_mtok, output_mtok=output_mtok,
                       cache_read_mtok=read_mtok, cache_write_mtok=write_mtok)
    usage = TokenUsage(input_tokens=prompt, output_tokens=output, cache_read_tokens=read,
                       cache_write_tokens=write)
    assert price.cost_microcents(usage) == usd_to_microcents(price.cost(usage), "cost")
    assert price.input_microcents(prompt) == al.usd(input_mtok * prompt / 1_000_000).amount


def test_counted_usage_is_the_validated_usage() -> None:
    counted = TokenUsage.counted(input_tokens=30, output_tokens=120, reasoning_tokens=7)
    made = TokenUsage(input_tokens=30, output_tokens=120, cache_read_tokens=0,
                      cache_write_tokens=0, reasoning_tokens=7)
    assert counted == made and repr(counted) == repr(made)
    assert counted.model_dump() == made.model_dump() and counted.total_tokens == 150
    with pytest.raises(Exception):  # noqa: B017 - frozen, like every model here
        counted.input_tokens = 1  # type: ignore[misc]
    assert TokenUsage.counted(input_tokens=True) == TokenUsage(input_tokens=1)  # type: ignore[arg-type]
    for bad in (-1, 2**53, "5x"):
        with pytest.raises(al.InvalidRequest):
            TokenUsage.counted(output_tokens=bad)  # type: ignore[arg-type]


# -- service tiers ------------------------------------------------------------------------


def genai_price(model: str, context: dict[str, str] | None = None) -> ModelPrice:
    """genai-prices' per-million prices for an OpenAI model in a price context."""
    from genai_prices import Usage, calc_price

    def per_million(**tokens: int) -> Decimal:
        return calc_price(Usage(**tokens), model_ref=model, provider_id="openai",
                          price_context=context).total_price

    million = 1_000_000
    return ModelPrice(input_mtok=per_million(input_tokens=million),
                      output_mtok=per_million(output_tokens=million),
                      cache_read_mtok=per_million(input_tokens=million,
                                                  cache_read_tokens=million),
                      cache_write_mtok=per_million(input_tokens=million,
                                                   cache_write_tokens=million))


def test_tiers_are_priced_as_genai_prices_prices_them() -> None:
    pricer = Pricer()
    standard = genai_price("gpt-5")
    flex, priority = genai_price("gpt-5", {"service_tier": "flex"}), genai_price(
        "gpt-5", {"service_tier": "priority"})
    assert flex.output_mtok < standard.output_mtok < priority.output_mtok
    assert pricer.price_of("openai", "gpt-5", tier="flex") == flex
    assert pricer.price_of("openai", "gpt-5", tier="priority") == priority
    assert pricer.price_of("openai", "gpt-5", tier="batch") == genai_price(
        "gpt-5", {"processing": "batch"})
    for same in (None, "default", "auto"):
        assert pricer.price_of("openai", "gpt-5", tier=same) == standard


def test_a_hold_is_the_tier_asked_for_or_the_highest_it_could_be_served_at() -> None:
    pricer = Pricer()
    known = pricer.tiers_of("openai", "gpt-5")
    assert known is not None and {"default", "flex", "priority", "batch"} <= set(known.tiers)
    highest = known.highest
    for price in (known.standard, *known.tiers.values()):
        assert all(a <= b for a, b in zip(price.per_mtok, highest.per_mtok, strict=True))
    assert highest == genai_price("gpt-5", {"service_tier": "priority"})
    assert pricer.hold_price("openai", "gpt-5", tier="flex") == known.tiers["flex"]
    for named in ("default", "standard_only"):
        assert pricer.hold_price("openai", "gpt-5", tier=named) == known.standard
    for open_ in (None, "auto", "scale"):  # the provider picks, or a tier nobody prices
        assert pricer.hold_price("openai", "gpt-5", tier=open_) == highest
    # no flex for gpt-4o-mini in genai-prices: held at the highest, charged at standard
    mini = pricer.tiers_of("openai", "gpt-4o-mini")
    assert mini is not None and "flex" not in mini.tiers
    assert pricer.hold_price("openai", "gpt-4o-mini", tier="flex") == mini.highest
    assert pricer.price_of("openai", "gpt-4o-mini", tier="flex") == mini.standard


def test_an_unknown_served_tier_costs_the_standard_price_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer()
    usage = TokenUsage(input_tokens=1_000_000, service_tier="scale")
    with caplog.at_level("WARNING", "allotment"):
        for _ in range(3):
            assert pricer.cost("openai", "gpt-5", usage) == pricer.cost(
                "openai", "gpt-5", TokenUsage(input_tokens=1_000_000))
    assert caplog.text.count("service tier 'scale'") == 1


def test_overrides_and_the_fallback_are_the_price_at_every_tier() -> None:
    own = ModelPrice(input_mtok=1, output_mtok=2)
    pricer = Pricer(overrides={"gpt-5": own}, fallback={"input_mtok": 3, "output_mtok": 4})
    for tier in (None, "auto", "flex", "priority", "batch"):
        assert pricer.price_of("openai", "gpt-5", tier=tier) == own
        assert pricer.hold_price("openai", "gpt-5", tier=tier) == own
        assert pricer.hold_price("openai", "my-finetune", tier=tier) == pricer.fallback
    usage = TokenUsage(input_tokens=1_000_000, service_tier="flex")
    assert pricer.cost("openai", "gpt-5", usage, tenant="acme") == al.usd(1)


def test_a_served_tier_is_a_short_name() -> None:
    from allotment.pricing import tier_of

    assert tier_of("flex") == "flex"
    for bad in ("", "x" * 65, 3, None, b"flex"):
        assert tier_of(bad) is None
    assert TokenUsage.counted(output_tokens=3, service_tier="flex") == TokenUsage(
        output_tokens=3, service_tier="flex")
    for bad in ("", "x" * 65, 3):
        with pytest.raises(al.InvalidRequest):
            TokenUsage.counted(output_tokens=3, service_tier=bad)  # type: ignore[arg-type]
