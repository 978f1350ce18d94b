"""How Redis keeps a required template: a scope's packed definitions carry a flags byte
(version 3) only while one of its templates is required, so every other scope stays in the
form earlier versions read."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import allotment as al

from support import LLM
from support.stores import START_MS, make_store

AGENT = "tenant:acme/agent:a"


@pytest.fixture
def store() -> Iterator[Any]:
    made = make_store("redis", al.ManualClock(START_MS))
    yield made
    made.close()


def versions(store: Any) -> dict[str, int]:
    client = redis.Redis.from_url(store.url)
    return {field.decode(): raw[0] for field, raw in client.hgetall("al:{acme}:defs").items()}


def test_only_a_scope_with_a_required_template_takes_the_flags_byte(
        store: Any) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=10)
    guard.set_budget(AGENT, usd=1, per="run", required=True)
    guard.set_budget(AGENT, usd=2, period="day")
    assert versions(store) == {"tenant:acme": 2, AGENT: 3}
    subject = al.Subject(tenant="acme", agent="a")
    with pytest.raises(al.Denied, match="DIMENSION_REQUIRED"):
        guard.reserve(subject, LLM, al.usd(1))
    guard.set_budget(AGENT, usd=1, per="run")  # no longer required: the earlier form
    assert versions(store) == {"tenant:acme": 2, AGENT: 2}
    guard.reserve(subject, LLM, al.usd(1)).release()
    (daily,) = [b for b in guard.balances(AGENT) if b.period == "day"]
    assert daily.allocated == al.usd(2).amount  # the scope's other budget read back intact
