"""Prices of model calls, from `genai-prices`, behind a small `Pricer` that takes overrides.

Token counts follow one convention here, whatever the provider reports: `input_tokens`
counts every input token, cached reads and cache writes included (OpenAI reports it so;
Anthropic reports cache tokens apart, and its adapter adds them back). Reasoning tokens are a
part of `output_tokens`. An unknown model is never free: it is refused, unless a fallback
price is configured.

Service tiers (OpenAI's flex and priority, batch...) are priced as genai-prices prices them,
named as the providers name them. A call is held at the highest price it could be billed at
(`hold_price`) and charged at the tier it was served at (`price_of`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any, TypeVar

from pydantic import BaseModel, field_validator

from .amounts import MICROCENTS_PER_USD, Amount, Unit, to_decimal, usd_to_microcents
from .errors import Denied, InvalidRequest
from .models import Decision, Outcome, Reason
from .validation import MAX_AMOUNT, Model

PRICE_UNKNOWN = Reason.PRICE_UNKNOWN
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("allotment")

COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "reasoning_tokens")
PER_MTOK = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
MAX_TIER_LENGTH = 64
MAX_UNKNOWN_TIERS = 16  # per model: a flood of odd names is not logged on and on
STANDARD_TIERS = frozenset({"default", "standard", "standard_only"})
"""Tier names meaning the standard price: OpenAI's `default`, Anthropic's `standard` (and
its request's `standard_only`)."""
AUTO = "auto"
"""A request leaving the tier to the provider (what both providers do when none is named);
as a served tier, an echo of that request: the standard price."""
BATCH = "batch"
"""Anthropic's name for a batch-processed call; genai-prices' `processing: batch`."""


def tier_of(value: object) -> str | None:
    """A service tier as a request or response names it: a short string, else None (not
    named; a hostile or broken value must not fail the call's commit)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_TIER_LENGTH:
        return value
    return None


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
    service_tier: str | None = None
    """The tier the provider says it served the call at, in its words (`flex`, `priority`,
    `batch`...); None: it did not say."""

    @field_validator(*COUNTS)
    @classmethod
    def _count(cls, value: int) -> int:
        if not 0 <= value <= MAX_AMOUNT:
            raise ValueError(f"a token count is within 0..{MAX_AMOUNT}")
        return value

    @field_validator("service_tier")
    @classmethod
    def _tier(cls, value: str | None) -> str | None:
        if value is not None and tier_of(value) is None:
            raise ValueError(f"a service tier is 1..{MAX_TIER_LENGTH} characters")
        return value

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def counted(cls, input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                cache_write_tokens: int = 0, reasoning_tokens: int = 0,
                service_tier: str | None = None) -> TokenUsage:
        """What the constructor makes, for the counts adapters read off every response:
        plain in-range ints (and a `tier_of` tier) skip pydantic's validation (it would cost
        more than pricing the call); anything else goes through it."""
        fields: dict[str, Any] = {
            "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens, "cache_write_tokens": cache_write_tokens,
            "reasoning_tokens": reasoning_tokens, "service_tier": service_tier}
        if service_tier is not None and tier_of(service_tier) is None:
            return cls(**fields)
        for name in COUNTS:
            value = fields[name]
            if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
                return cls(**fields)
        return assemble(cls, fields)


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

    @cached_property
    def per_mtok(self) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """The `PER_MTOK` prices, the cache ones defaulted."""
        return (self.input_mtok,
                self.cache_read_mtok if self.cache_read_mtok is not None else self.input_mtok,
                self.cache_write_mtok if self.cache_write_mtok is not None else self.input_mtok,
                self.output_mtok)

    def cost(self, usage: TokenUsage) -> Decimal:
        """The exact dollar cost of `usage` at this price."""
        _, cache_read, cache_write, _ = self.per_mtok
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
        rates = [price * MICROCENTS_PER_USD for price in self.per_mtok]
        if any(rate != rate.to_integral_value() for rate in rates):
            return None
        return int(rates[0]), int(rates[1]), int(rates[2]), int(rates[3])

    @cached_property
    def output_rate(self) -> Amount:
        """The output price as a per-million amount, for an elastic estimate."""
        return Amount(Unit.USD_MICROCENTS, usd_to_microcents(self.output_mtok, "output_mtok"))


@dataclass(frozen=True, slots=True)
class TierPrices:
    """One model's prices: standard, at each service tier genai-prices knows for it (named as
    the provider names them; `batch` for batch processing), and the highest of them all."""

    standard: ModelPrice
    tiers: Mapping[str, ModelPrice]
    highest: ModelPrice
    unknown: set[str] = field(default_factory=set, compare=False, repr=False)  # logged

    def held(self, tier: str | None) -> ModelPrice:
        """The most a call asking for `tier` can be billed per token: that tier's price;
        for `auto`, none named, or a tier not known for the model, the highest."""
        if tier in STANDARD_TIERS:
            return self.standard
        return self.tiers.get(tier or AUTO) or self.highest

    def served(self, tier: str | None, scope: str = "") -> ModelPrice:
        """The price of a call served at `tier`: standard when it is not known for the model
        (said once in the log per model and tier: the tier may cost more or less)."""
        price = self.tiers.get(tier or AUTO)
        if price is not None:
            return price
        if (tier is not None and tier != AUTO and tier not in STANDARD_TIERS
                and tier not in self.unknown and len(self.unknown) < MAX_UNKNOWN_TIERS):
            self.unknown.add(tier)
            log.warning("%s: genai-prices has no price for service tier %r; charging the "
                        "standard price", scope, tier)
        return self.standard


class Pricer:
    """Prices usage in USD_MICROCENTS (rounded up). Overrides win over genai-prices, per
    model (`"openai:gpt-4o"` or just `"gpt-4o"`) and per tenant, at every service tier;
    `fallback` prices models nobody knows (without it they are refused with PRICE_UNKNOWN)."""

    def __init__(self, overrides: dict[str, ModelPrice | dict[str, Any]] | None = None, *,
                 tenants: dict[str, dict[str, ModelPrice | dict[str, Any]]] | None = None,
                 fallback: ModelPrice | dict[str, Any] | None = None) -> None:
        self.overrides = {k: _price(v) for k, v in (overrides or {}).items()}
        self.tenants = {t: {k: _price(v) for k, v in prices.items()}
                        for t, prices in (tenants or {}).items()}
        self.fallback = None if fallback is None else _price(fallback)
        self._known: dict[tuple[str, str], TierPrices | None] = {}

    def price_of(self, provider: str, model: str, tenant: str | None = None,
                 tier: str | None = None) -> ModelPrice:
        """The price of a model served at `tier` (None: the standard price), or
        `Denied(PRICE_UNKNOWN)`."""
        found = self._prices(provider, model, tenant)
        if isinstance(found, ModelPrice):
            return found
        return found.served(tier, f"{provider}:{model}")

    def hold_price(self, provider: str, model: str, tenant: str | None = None,
                   tier: str | None = None) -> ModelPrice:
        """What to reserve a call asking for `tier` at (None: it names none, so the provider
        picks): an upper bound on the price it is billed at, or `Denied(PRICE_UNKNOWN)`."""
        found = self._prices(provider, model, tenant)
        return found if isinstance(found, ModelPrice) else found.held(tier)

    def _prices(self, provider: str, model: str,
                tenant: str | None) -> ModelPrice | TierPrices:
        """An override or the fallback (one price at every tier), or the model's prices at
        each tier genai-prices knows."""
        override = self._override(provider, model, tenant)
        if override is not None:
            return override
        known = self.tiers_of(provider, model)
        return self._fallback(provider, model) if known is None else known

    def cost(self, provider: str, model: str, usage: TokenUsage,
             tenant: str | None = None) -> Amount:
        """The exact dollar cost of `usage` on `provider:model` for `tenant`'s prices, at the
        tier it was served at."""
        return Amount(Unit.USD_MICROCENTS, self.price_of(provider, model, tenant,
                                                         usage.service_tier).cost_microcents(usage))

    def tiers_of(self, provider: str, model: str) -> TierPrices | None:
        """A model's genai-prices prices at every tier it knows (None: it does not know the
        model); overrides and the fallback aside."""
        cached = self._known.get((provider, model), False)
        if cached is False:
            cached = self._known[(provider, model)] = _from_genai_prices(provider, model)
        return cached  # type: ignore[return-value]

    def _fallback(self, provider: str, model: str) -> ModelPrice:
        """The fallback price, at every tier, or `Denied(PRICE_UNKNOWN)`."""
        if self.fallback is not None:
            return self.fallback
        raise Denied(Decision(Outcome.DENY, reason=PRICE_UNKNOWN,
                              scope=f"{provider}:{model}"))

    def _override(self, provider: str, model: str, tenant: str | None) -> ModelPrice | None:
        if self.tenants or self.overrides:
            for table in (self.tenants.get(tenant or "", {}), self.overrides):
                for key in (f"{provider}:{model}", model):
                    if key in table:
                        return table[key]
        return None


def _microcents(per_million: int, field: str) -> int:
    """Microcents-per-million-tokens times tokens, to whole microcents rounded up."""
    microcents = -(-per_million // 1_000_000)
    if microcents > MAX_AMOUNT:
        raise InvalidRequest(f"{field}: {Decimal(per_million) / 10**14} dollars is more than "
                             "the ledger can hold")
    return microcents


def _price(value: ModelPrice | dict[str, Any]) -> ModelPrice:
    return value if isinstance(value, ModelPrice) else ModelPrice(**value)


def _from_genai_prices(provider: str, model: str) -> TierPrices | None:
    """Per-million prices read off genai-prices by pricing a million of each kind: standard,
    and at each tier its price variants name for the model (`service_tier`, or batch
    `processing`)."""
    from genai_prices import Usage, calc_price

    million = 1_000_000
    try:
        found = calc_price(Usage(input_tokens=million), model_ref=model, provider_id=provider)
    except LookupError:
        return None

    def dollars(context: Mapping[str, str] | None, **tokens: int) -> Decimal:
        return calc_price(Usage(**tokens), model_ref=model, provider_id=provider,
                          price_context=context).total_price

    def price(context: Mapping[str, str] | None) -> ModelPrice:
        return ModelPrice(
            input_mtok=dollars(context, input_tokens=million),
            output_mtok=dollars(context, output_tokens=million),
            cache_read_mtok=dollars(context, input_tokens=million, cache_read_tokens=million),
            cache_write_mtok=dollars(context, input_tokens=million,
                                     cache_write_tokens=million))

    contexts: dict[str, dict[str, str]] = {}
    for variant in found.model.price_variants or ():
        if variant.when == {"processing": BATCH}:
            contexts[BATCH] = variant.when
        elif len(variant.when) == 1 and "service_tier" in variant.when:
            contexts[variant.when["service_tier"]] = variant.when
    standard = price(None)
    tiers = {name: price(context) for name, context in contexts.items()}
    columns = zip(*(p.per_mtok for p in (standard, *tiers.values())), strict=True)
    highest = ModelPrice(**{name: max(column)
                            for name, column in zip(PER_MTOK, columns, strict=True)})
    return TierPrices(standard, tiers, highest)
