"""Prices of model calls, from `genai-prices`, behind a small `Pricer` that takes overrides.

Token counts follow one convention here, whatever the provider reports: `input_tokens`
counts every input token, cached reads and cache writes included (OpenAI reports it so;
Anthropic reports cache tokens apart, and its adapter adds them back). Reasoning tokens are a
part of `output_tokens`. An unknown model is never free: it is refused, unless a fallback
price is configured.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Any

from pydantic import field_validator

from .amounts import Amount, Unit, to_decimal, usd_to_microcents
from .errors import Denied
from .models import Decision, Outcome
from .validation import MAX_AMOUNT, Model

PRICE_UNKNOWN = "PRICE_UNKNOWN"


class TokenUsage(Model):
    """What one call used, in the convention above."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @field_validator("*")
    @classmethod
    def _count(cls, value: int) -> int:
        if not 0 <= value <= MAX_AMOUNT:
            raise ValueError(f"a token count is within 0..{MAX_AMOUNT}")
        return value

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ModelPrice(Model):
    """USD per million tokens. Cache prices default to the input price."""

    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _exact(cls, value: object) -> object:
        return None if value is None else to_decimal(value, "price")

    def cost(self, usage: TokenUsage) -> Decimal:
        cache_read = self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok
        cache_write = (self.cache_write_mtok if self.cache_write_mtok is not None
                       else self.input_mtok)
        uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
        total = (uncached * self.input_mtok + usage.cache_read_tokens * cache_read
                 + usage.cache_write_tokens * cache_write + usage.output_tokens * self.output_mtok)
        return total / 1_000_000

    @cached_property
    def output_rate(self) -> Amount:
        """The output price as a per-million amount, for an elastic estimate."""
        return Amount(Unit.USD_MICROCENTS, usd_to_microcents(self.output_mtok, "output_mtok"))


class Pricer:
    """Prices usage in USD_MICROCENTS (rounded up). Overrides win over genai-prices, per
    model (`"openai:gpt-4o"` or just `"gpt-4o"`) and per tenant; `fallback` prices models
    nobody knows (without it they are refused with PRICE_UNKNOWN)."""

    def __init__(self, overrides: dict[str, ModelPrice | dict[str, Any]] | None = None, *,
                 tenants: dict[str, dict[str, ModelPrice | dict[str, Any]]] | None = None,
                 fallback: ModelPrice | dict[str, Any] | None = None) -> None:
        self.overrides = {k: _price(v) for k, v in (overrides or {}).items()}
        self.tenants = {t: {k: _price(v) for k, v in prices.items()}
                        for t, prices in (tenants or {}).items()}
        self.fallback = None if fallback is None else _price(fallback)
        self._known: dict[tuple[str, str], ModelPrice | None] = {}

    def price_of(self, provider: str, model: str, tenant: str | None = None) -> ModelPrice:
        """The price of a model, or `Denied(PRICE_UNKNOWN)`."""
        for table in (self.tenants.get(tenant or "", {}), self.overrides):
            for key in (f"{provider}:{model}", model):
                if key in table:
                    return table[key]
        known = self._lookup(provider, model)
        if known is not None:
            return known
        if self.fallback is not None:
            return self.fallback
        raise Denied(Decision(Outcome.DENY, reason=PRICE_UNKNOWN,
                              scope=f"{provider}:{model}"))

    def cost(self, provider: str, model: str, usage: TokenUsage,
             tenant: str | None = None) -> Amount:
        dollars = self.price_of(provider, model, tenant).cost(usage)
        return Amount(Unit.USD_MICROCENTS, usd_to_microcents(dollars, "cost"))

    def _lookup(self, provider: str, model: str) -> ModelPrice | None:
        cached = self._known.get((provider, model), False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        price = _from_genai_prices(provider, model)
        self._known[(provider, model)] = price
        return price


def _price(value: ModelPrice | dict[str, Any]) -> ModelPrice:
    return value if isinstance(value, ModelPrice) else ModelPrice(**value)


def _from_genai_prices(provider: str, model: str) -> ModelPrice | None:
    """Per-million prices read off genai-prices by pricing a million of each kind."""
    from genai_prices import Usage, calc_price

    def dollars(**tokens: int) -> Decimal | None:
        try:
            return calc_price(Usage(**tokens), model_ref=model, provider_id=provider).total_price
        except LookupError:
            return None

    million = 1_000_000
    input_mtok = dollars(input_tokens=million)
    if input_mtok is None:
        return None
    return ModelPrice(
        input_mtok=input_mtok, output_mtok=dollars(output_tokens=million) or Decimal(0),
        cache_read_mtok=dollars(input_tokens=million, cache_read_tokens=million),
        cache_write_mtok=dollars(input_tokens=million, cache_write_tokens=million))
