"""How the Redis store keeps usage counters: one integer field per count, written with
HINCRBY, and an entry an earlier version kept packed in one field still read, then unpacked
into the fields by the next count made on it."""

from __future__ import annotations

import pytest
import redis

import allotment as al
from allotment.stores.redis import tenant_keys

from support import LLM
from support.stores import START_MS, make_store

DAY_MS = 86_400_000
DAY = "2026-11-28"  # START_MS's day
USAGE_BASE = 10_000_000  # where common.lua indexes a usage entry's day
ACME = al.Subject(tenant="acme")
OLD = "old:model"
PACKED = "2,1,10,4,3,5,2,USD_MICROCENTS=300,TOKENS=7"
"""calls, denials, input, cached, cache writes, output, reasoning, spend per unit."""


def _redis_guard(clock: al.ManualClock) -> tuple[al.Guard, redis.Redis, str]:
    store = make_store("redis", clock)
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=100)
    return guard, redis.Redis.from_url(store.url, decode_responses=True), tenant_keys("acme")[9]


def _rows(guard: al.Guard, model: str) -> dict[str, tuple[int, ...]]:
    """unit -> (spend, calls, denials, five token counts) of `model`'s rows this month."""
    return {row.unit.value: (row.spend, row.calls, row.denials, row.input_tokens,
                             row.cached_tokens, row.cache_write_tokens, row.output_tokens,
                             row.reasoning_tokens)
            for row in guard.usage(tenant="acme") if row.model == model}


def _write_packed(client: redis.Redis, report: str, model: str, packed: str) -> str:
    """An entry as an earlier version wrote it: packed in its name's field, indexed."""
    name = f"u|{DAY}|tenant:acme|{model}"
    client.hset(report, name, packed)
    client.zadd(tenant_keys("acme")[10], {name: USAGE_BASE + START_MS // DAY_MS})
    return name


def test_counts_are_integer_fields(clock: al.ManualClock) -> None:
    guard, client, report = _redis_guard(clock)
    held = guard.reserve(ACME, LLM, al.usd(2))
    held.commit(al.usd(1), usage=al.TokenUsage(input_tokens=40, output_tokens=9))
    model = LLM.name
    stored = {k: v for k, v in client.hgetall(report).items() if model in k}
    assert stored == {f"u|{DAY}|tenant:acme|{model}": "1",
                      f"{DAY}|#i|tenant:acme|{model}": "40",
                      f"{DAY}|#o|tenant:acme|{model}": "9",
                      f"{DAY}|#USD_MICROCENTS|tenant:acme|{model}": str(al.usd(1).amount)}
    guard.set_budget("tenant:acme", usd=0)
    with pytest.raises(al.Denied):
        guard.reserve(ACME, LLM, al.usd(2))
    assert _rows(guard, model) == {"USD_MICROCENTS": (al.usd(1).amount, 1, 1, 40, 0, 0, 9, 0)}


def test_an_entry_of_the_packed_form_is_read(clock: al.ManualClock) -> None:
    guard, client, report = _redis_guard(clock)
    guard.record(ACME, LLM, al.usd(1))  # the tenant's first counters
    _write_packed(client, report, OLD, PACKED)
    assert _rows(guard, OLD) == {"USD_MICROCENTS": (300, 2, 1, 10, 4, 3, 5, 2),
                                 "TOKENS": (7, 2, 1, 10, 4, 3, 5, 2)}
    assert _rows(guard, LLM.name) == {"USD_MICROCENTS": (al.usd(1).amount, 1, 0, 0, 0, 0, 0, 0)}


def test_a_count_on_a_packed_entry_unpacks_it(clock: al.ManualClock) -> None:
    guard, client, report = _redis_guard(clock)
    old = al.Action("llm.completion", OLD)
    name = _write_packed(client, report, OLD, PACKED)
    guard.reserve(ACME, old, al.usd(5)).commit(
        al.usd(4), usage=al.TokenUsage(input_tokens=1, cache_read_tokens=1, output_tokens=1))
    usd = al.usd(4).amount + 300
    assert _rows(guard, OLD) == {"USD_MICROCENTS": (usd, 3, 1, 11, 5, 3, 6, 2),
                                 "TOKENS": (7, 3, 1, 11, 5, 3, 6, 2)}
    assert client.hget(report, name) == "3"  # now the calls alone
    assert client.hget(report, f"{DAY}|#TOKENS|tenant:acme|{OLD}") == "7"


def test_a_denial_on_a_packed_entry_unpacks_it(clock: al.ManualClock) -> None:
    guard, client, report = _redis_guard(clock)
    old = al.Action("llm.completion", OLD)
    name = _write_packed(client, report, OLD, PACKED)
    guard.set_budget("tenant:acme", usd=0)
    with pytest.raises(al.Denied):
        guard.reserve(ACME, old, al.usd(5))
    assert _rows(guard, OLD) == {"USD_MICROCENTS": (300, 2, 2, 10, 4, 3, 5, 2),
                                 "TOKENS": (7, 2, 2, 10, 4, 3, 5, 2)}
    assert client.hget(report, name) == "2"


def test_models_whose_names_hold_the_separators_stay_apart(clock: al.ManualClock) -> None:
    guard, _, _ = _redis_guard(clock)
    names = ["m", "m|#d", "m|#USD_MICROCENTS|x", "#d|m", 'q"uote', "back\\slash", "café"]
    for i, model in enumerate(names, 1):  # half recorded, half committed
        action = al.Action("llm.completion", model)
        if i % 2:
            guard.record(ACME, action, al.usd(i))
        else:
            guard.reserve(ACME, action, al.usd(i)).commit(al.usd(i))
    for i, model in enumerate(names, 1):
        assert _rows(guard, model) == {"USD_MICROCENTS": (al.usd(i).amount, 1, 0, 0, 0, 0, 0,
                                                          0)}


def test_entries_past_the_retention_leave_storage_with_their_fields(
        clock: al.ManualClock) -> None:
    guard, client, report = _redis_guard(clock)
    guard.reserve(ACME, LLM, al.usd(2)).commit(al.usd(1), usage=al.TokenUsage(input_tokens=3))
    _write_packed(client, report, OLD, PACKED)
    clock.advance(al.REPORT_RETENTION_DAYS * DAY_MS)
    guard.record(ACME, LLM, al.usd(1))
    assert [k for k in client.hkeys(report) if DAY in k] == []
    assert [k for k in client.zrange(tenant_keys("acme")[10], 0, -1) if DAY in k] == []
    assert _rows(guard, LLM.name)["USD_MICROCENTS"][:2] == (al.usd(1).amount, 1)
