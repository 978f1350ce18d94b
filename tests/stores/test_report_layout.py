"""How report counters are stored: per UTC day, days past the retention dropped from storage
(not only hidden from reads), and a Redis report hash written before the day index existed
still read and brought under the retention."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import redis

import allotment as al
from allotment.stores.redis import tenant_keys

from support import LLM
from support.stores import START_MS

DAY_MS = 86_400_000
USD = al.Unit.USD_MICROCENTS
WHO = al.Subject(tenant="acme", workspace="w", dimensions={"user": "u-1"})


def stored_days(store: Any) -> set[str]:
    """The day labels the store still keeps report (and usage) counters for."""
    if isinstance(store, al.MemoryStore):
        state = store._tenants["acme"]
        return {_label(day) for day in (*state.report, *state.usage)}
    raw = redis.Redis.from_url(store.url, decode_responses=True)
    report, index = tenant_keys("acme")[9], tenant_keys("acme")[10]
    fields = {*raw.hkeys(report), *raw.zrange(index, 0, -1)}
    return {_day_of(field) for field in fields}


def _day_of(field: str) -> str:
    """A counter's day: "day|scope|counter", or a usage counter's "u|day|scope|model"."""
    parts = field.split("|", 2)
    return parts[1] if parts[0] == "u" else parts[0]


def _label(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, timezone.utc).strftime("%Y-%m-%d")


def test_days_past_the_retention_leave_storage(store: Any, clock: al.ManualClock) -> None:
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=100)
    guard.record(WHO, LLM, al.usd(1))
    clock.advance(DAY_MS)
    guard.record(WHO, LLM, al.usd(1))
    assert stored_days(store) == {"2026-11-28", "2026-11-29"}
    clock.advance(al.REPORT_RETENTION_DAYS * DAY_MS)
    guard.record(WHO, LLM, al.usd(1))
    assert stored_days(store) == {"2027-03-01"}


def test_a_shorter_retention_is_a_store_setting(clock: al.ManualClock) -> None:
    guard = al.Guard(al.MemoryStore(clock, report_retention_days=2))
    guard.set_budget("tenant:acme", usd=100)
    guard.record(WHO, LLM, al.usd(1))
    clock.advance(DAY_MS)
    assert [row.records for row in guard.report("acme", period="day", at=START_MS)] == [1, 1]
    clock.advance(DAY_MS)
    assert guard.report("acme", period="day", at=START_MS) == ()


def test_a_report_hash_of_the_previous_layout_is_read_and_pruned(
        clock: al.ManualClock) -> None:
    from support.stores import make_store

    store = make_store("redis", clock)
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=100)
    raw = redis.Redis.from_url(store.url, decode_responses=True)
    report = tenant_keys("acme")[9]
    raw.hset(report, mapping={  # as the previous layout wrote them: no day index
        "2026-11-28|tenant:acme/workspace:w|commits": 2,
        "2026-11-28|tenant:acme/workspace:w|reserved:USD_MICROCENTS": 400_000_000,
        "2026-11-28|tenant:acme/workspace:w|committed:USD_MICROCENTS": 300_000_000,
        "2026-11-28|tenant:acme/workspace:w|denials:BUDGET_EXCEEDED": 1,
        "2026-06-01|tenant:acme|commits": 7,  # long past the retention
    })
    rows = {row.scope: row for row in guard.report("acme")}
    assert set(rows) == {"tenant:acme", "tenant:acme/workspace:w"}
    assert rows["tenant:acme"].commits == rows["tenant:acme/workspace:w"].commits == 2
    assert rows["tenant:acme"].committed == {USD: 300_000_000}
    assert rows["tenant:acme/workspace:w"].committed_ratio() == Decimal("0.75")
    assert guard.report("acme", at=START_MS - 180 * DAY_MS) == ()
    assert not raw.hexists(report, "2026-06-01|tenant:acme|commits")
    guard.reserve(WHO, LLM, al.usd(1)).commit(al.usd(1))
    rows = {row.scope: row for row in guard.report("acme")}
    assert rows["tenant:acme/workspace:w"].commits == 3
    assert rows["tenant:acme/workspace:w"].committed == {USD: 400_000_000}
    store.close()


def test_the_day_index_is_declared_with_the_tenant_keys() -> None:
    keys = tenant_keys("acme")
    assert keys[9:11] == ("al:{acme}:report", "al:{acme}:report:days")


def test_a_redis_report_read_fetches_only_the_days_and_rows_asked_for(
        clock: al.ManualClock) -> None:
    from allotment.stores import operations as ops

    from support.stores import make_store

    store = make_store("redis", clock)
    guard = al.Guard(store)
    guard.set_budget("tenant:acme", usd=100)
    guard.record(WHO, LLM, al.usd(1))
    clock.advance(DAY_MS)
    guard.record(WHO, LLM, al.usd(2))
    raw = redis.Redis.from_url(store.url, decode_responses=True)

    def fetched(**kwargs: Any) -> list[str]:
        call = store._flows.call(ops.Report(tenant="acme", **kwargs))
        reply = json.loads(raw.execute_command(*call.command))
        return list(reply["counts"] or [])[::2]  # field, value, ... (none: an empty object)

    yesterday = fetched(period=al.Period.DAY, at_ms=START_MS, by=None)
    assert yesterday and all(f.startswith("2026-11-28|") for f in yesterday)
    assert all("user:" not in f for f in yesterday)
    per_user = fetched(period=al.Period.MONTH, at_ms=None, by="user")
    assert {f.split("|")[1] for f in per_user} == {"tenant:acme/workspace:w/user:u-1"}
    assert {f.split("|")[0] for f in per_user} == {"2026-11-28", "2026-11-29"}
    assert fetched(period=al.Period.DAY, at_ms=START_MS, by="run") == []
    store.close()


def test_the_redis_store_checks_its_report_retention() -> None:
    from allotment.stores.redis import RedisStore

    with pytest.raises(al.InvalidRequest, match="report_retention_days"):
        RedisStore(url="redis://localhost:1/0", report_retention_days=0)
