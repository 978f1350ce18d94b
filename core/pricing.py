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
from typing import Any, TypeVar

from pydantic import BaseModel, field_validator

from .amounts import MICROCENTS_PER_USD, Amount, Unit, to_decimal, usd_to_microcents
from .errors import Denied, InvalidRequest
from .models import Decision, Outcome
from .validation import MAX_AMOUNT, Model

PRICE_UNKNOWN = "PRICE_UNKNOWN"
M = TypeVar("M", bound=BaseModel)


def assemble(cls: type[M], fields: dict[str, Any]) -> M:
    """A model from values already checked, every field given — what pydantic's
    `model_construct` does, without its per-field alias and default lookups."""
    if cls.__pydantic_post_init__ or cls.__pydantic_root_model__:
        return cls.model_construct(**fields)
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", fields)
    object.__setattr__(model, "__pydantic_fields_set__", set(fields))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


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

    @classmethod
    def counted(cls, input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> TokenUsage:
        """What the constructor makes, for the counts adapters read off every response:
        plain in-range ints skip pydantic's validation (it would cost more than pricing the
        call); anything else goes through it."""
        counts = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cache_read_tokens": cache_read_tokens,
                  "cache_write_tokens": cache_write_tokens, "reasoning_tokens": reasoning_tokens}
        for value in counts.values():
            if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
                return cls(**counts)
        return assemble(cls, counts)


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
        """The exact dollar cost of `usage` at this price."""
        cache_read = self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok
        cache_write = (self.cache_write_mtok if self.cache_write_mtok is not None
                       else self.input_mtok)
        uncached = max(0, usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens)
        total = (uncached * self.input_mtok + usage.cache_read_tokens * cache_read
                 + usage.cache_write_tokens * cache_write + usage.output_tokens * self.output_mtok)
        return total / 1_000_000

    def cost_microcents(self, usage: TokenUsage) -> int:
        """`cost(usage)` in USD_MICROCENTS, rounded up; in integers when every price is a
        whole number of microcents per million tokens (as real prices are), which gives the
        same amount as the Decimal sum at a fraction of its cost."""
        rates = self._rates
        if rates is None:
            return usd_to_microcents(self.cost(usage), "cost")
        rate_in, rate_read, rate_write, rate_out = rates
        read, write = usage.cache_read_tokens, usage.cache_write_tokens
        uncached = max(0, usage.input_tokens - read - write)
        total = (uncached * rate_in + read * rate_read + write * rate_write
                 + usage.output_tokens * rate_out)
        return _microcents(total, "cost")

    def input_microcents(self, tokens: int) -> int:
        """What `tokens` uncached input tokens cost, in USD_MICROCENTS rounded up."""
        rates = self._rates
        if rates is None:
            return usd_to_microcents(self.input_mtok * tokens / 1_000_000, "usd")
        return _microcents(tokens * rates[0], "usd")

    @cached_property
    def _rates(self) -> tuple[int, int, int, int] | None:
        """Microcents per million input, cache-read, cache-write and output tokens, when
        all are whole numbers."""
        prices = (self.input_mtok,
                  self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok,
                  self.cache_write_mtok if self.cache_write_mtok is not None
                  else self.input_mtok, self.output_mtok)
        rates = [price * MICROCENTS_PER_USD for price in prices]
        if any(rate != rate.to_integral_value() for rate in rates):
            return None
        return int(rates[0]), int(rates[1]), int(rates[2]), int(rates[3])

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
        if self.tenants or self.overrides:
            for table in (self.tenants.get(tenant or "", {}), self.overrides):
                for key in (f"{provider}:{model}", model):
                    if key in table:
                        return table[key]
        known = self._known.get((provider, model)) or self._lookup(provider, model)
        if known is not None:
            return known
        if self.fallback is not None:
            return self.fallback
        raise Denied(Decision(Outcome.DENY, reason=PRICE_UNKNOWN,
                              scope=f"{provider}:{model}"))

    def cost(self, provider: str, model: str, usage: TokenUsage,
             tenant: str | None = None) -> Amount:
        """The exact dollar cost of `usage` on `provider:model` for `tenant`'s prices."""
        return Amount(Unit.USD_MICROCENTS,
                      self.price_of(provider, model, tenant).cost_microcents(usage))

    def _lookup(self, provider: str, model: str) -> ModelPrice | None:
        cached = self._known.get((provider, model), False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        price = _from_genai_prices(provider, model)
        self._known[(provider, model)] = price
        return price


def _microcents(per_million: int, field: str) -> int:
    """Microcents-per-million-tokens times tokens, to whole microcents rounded up."""
    microcents = -(-per_million // 1_000_000)
    if microcents > MAX_AMOUNT:
        raise InvalidRequest(f"{field}: {Decimal(per_million) / 10**14} dollars is more than "
                             "the ledger can hold")
    return microcents


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
