"""Degrade targets: the model a degrade rule switches a call to, per provider, checked
against the price data (genai-prices, as the `Pricer` reads it) when the rule is set.

A rule that names a model nobody prices, or a model of another provider, would otherwise
turn every call it degrades into a `PRICE_UNKNOWN` denial; refused here, it never reaches a
store. A single name becomes the providers that price it, so a rule written for OpenAI
leaves Anthropic calls alone.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

from .errors import InvalidRequest
from .policy import TARGETS_EXAMPLE, Degrade

EXTRAS = "pip install 'allotment[openai]' (or [anthropic], [langchain], [llamaindex])"


def resolve(rule: Degrade, field: str) -> Degrade:
    """`rule` with its model as a provider → model mapping, each priced by genai-prices,
    or `InvalidRequest` naming the near matches."""
    if rule.model is None:
        return rule
    if isinstance(rule.model, str):
        targets = _single(rule.model, field)
    else:
        targets = {provider: _checked(provider, model, field)
                   for provider, model in rule.model.items()}
    return rule.model_copy(update={"model": dict(sorted(targets.items()))})


def _single(model: str, field: str) -> dict[str, str]:
    """`provider:model`, or a bare model for every provider that prices it."""
    prefix, colon, rest = model.partition(":")
    if colon and prefix in _catalogue(field):
        return {prefix: _checked(prefix, rest, field)}
    providers = [p for p in _catalogue(field) if _priced(p, model)]
    if not providers:
        every = sorted({m for models in _catalogue(field).values() for m in models})
        raise InvalidRequest(f"{field}: genai-prices has no price for {model!r} at any "
                             f"provider{_near(model, every)}; a degrade rule switches to a "
                             f"model the call's provider prices, e.g. {TARGETS_EXAMPLE}")
    return dict.fromkeys(providers, model)


def _checked(provider: str, model: str, field: str) -> str:
    catalogue = _catalogue(field)
    if provider not in catalogue:
        raise InvalidRequest(f"{field}: {provider!r} is not a provider genai-prices knows"
                             f"{_near(provider, list(catalogue))}; name providers as the "
                             f"adapters do, e.g. {TARGETS_EXAMPLE}")
    if not _priced(provider, model):
        elsewhere = [p for p in catalogue if _priced(p, model)]
        priced = f"; it is priced at {', '.join(elsewhere)}" if elsewhere else ""
        raise InvalidRequest(f"{field}: genai-prices has no price for {model!r} at "
                             f"{provider}{_near(model, catalogue[provider])}{priced}; calls "
                             f"to {provider} degraded to it would be refused (PRICE_UNKNOWN)")
    return model


def _near(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else " (no close match)"


def _catalogue(field: str) -> dict[str, list[str]]:
    try:
        return _models_by_provider()
    except ImportError:
        raise InvalidRequest(f"{field}: a degrade model is checked against the price data "
                             f"of genai-prices, which is not installed: {EXTRAS}") from None


@lru_cache(maxsize=1)
def _models_by_provider() -> dict[str, list[str]]:
    """Every provider genai-prices knows, with the ids of its models (for near matches)."""
    from genai_prices.data import providers

    return {p.id: [m.id for m in p.models] for p in providers}


@lru_cache(maxsize=4096)
def _priced(provider: str, model: str) -> bool:
    """Whether the `Pricer` finds a price for `provider:model` in genai-prices (a model may
    match under another id, or through a provider's fallback providers)."""
    from genai_prices import Usage, calc_price

    try:
        calc_price(Usage(input_tokens=1), model_ref=model, provider_id=provider)
    except LookupError:
        return False
    return True

