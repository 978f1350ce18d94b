"""Replaying recorded provider interactions (see cassettes/THIRD_PARTY.md for their origin)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import vcr
from genai_prices import Usage, calc_price

import allotment as al

DIRECTORY = Path(__file__).resolve().parents[1] / "integrations" / "cassettes"
SENT: list[dict[str, Any]] = []
"""The bodies the SDK really sent, in order (vcrpy's cassette only shows recorded ones)."""


def _capture(sent: Any, recorded: Any) -> None:
    SENT.append(json.loads(sent.body) if sent.body else {})


# Bodies are not matched: the integration changes them (caps, include_usage) on purpose;
# the first matcher only captures what was sent.
_vcr = vcr.VCR(cassette_library_dir=str(DIRECTORY), record_mode="none",
               match_on=["method", "scheme", "host", "path"])
_vcr.register_matcher("capture", _capture)


@contextmanager
def replay(name: str, **options: Any) -> Iterator[Any]:
    """A cassette context; `.play_count` counts the replays, `sent` holds the bodies.
    `options` go to vcrpy (`ignore_localhost=True` lets a local server answer for real)."""
    SENT.clear()
    with _vcr.use_cassette(name, match_on=["capture", "method", "scheme", "host", "path"],
                           **options) as c:
        yield c


def sent(index: int = 0) -> dict[str, Any]:
    """The JSON body of the index-th request the SDK sent in the last replay."""
    return SENT[index]


def spent(guard: al.Guard, scope: str = "tenant:acme") -> tuple[int, int]:
    """(USD_MICROCENTS, TOKENS) spent at `scope`, once every reservation has settled."""
    by_unit = {b.unit: b for b in guard.balances(scope, include_children=False)}
    usd, tok = by_unit[al.Unit.USD_MICROCENTS], by_unit[al.Unit.TOKENS]
    assert usd.reserved == 0 and tok.reserved == 0, "every reservation settled"
    return usd.spent, tok.spent


def expected_cost(provider: str, model: str, input_tokens: int, output_tokens: int,
                  cache_read: int = 0, cache_write: int = 0, tier: str | None = None) -> int:
    """The recorded usage priced straight from genai-prices, in USD_MICROCENTS (rounded up),
    at service tier `tier` (genai-prices' `service_tier` price context; None: standard).
    `input_tokens` includes cached tokens, as genai-prices counts them."""
    price = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                             cache_read_tokens=cache_read, cache_write_tokens=cache_write),
                       model_ref=model, provider_id=provider,
                       price_context=None if tier is None else {"service_tier": tier}).total_price
    return al.usd(Decimal(price)).amount


def expected_hold(provider: str, model: str, reserved: Any, tier: str | None = None,
                  max_tokens: int = 4_096) -> int:
    """The dollars a `reservation.reserved` record should hold at `tier`'s prices: its input
    tokens (its TOKENS less the output bound) and `max_tokens` of output, each rounded up as
    the elastic estimate rounds them."""
    prompt = reserved.estimate[1].amount - max_tokens
    return (expected_cost(provider, model, prompt, 0, tier=tier)
            + expected_cost(provider, model, 0, max_tokens, tier=tier))
