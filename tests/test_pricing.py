"""Prices from genai-prices behind the Pricer; the offline input estimate stays an upper
bound on every recorded request."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

import allotment as al
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
