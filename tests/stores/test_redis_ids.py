"""Upgrading a Redis store from the version that lower-cased dimension values.

That version kept every value lower case, in ledger fields (`<path>|<unit>|<period>|<bucket>`
in `al:{tenant}:ledgers`) and in the runs quota's fields (`<quota key>|<run>` in
`al:{tenant}:qruns`). Its state is written here byte for byte as it laid it out; this
version must find it, charge it and count it, and keep a mixed-case id apart from it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis

import allotment as al
from allotment.stores.redis import RedisStore

from support import LLM
from support.redis_server import redis_server

LEDGER = struct.Struct("<Bqqqqqbqhbb")
"""The packed ledger both versions write: version 1, allocated, the limit it follows,
reserved, spent, debt, over-limit, last touch, alerts crossed, exhausted, over-limit noted."""


@pytest.fixture(scope="module")
def client() -> Iterator[tuple[str, redis.Redis]]:
    with redis_server() as (url, _):
        connection = redis.Redis.from_url(url)
        yield url, connection
        connection.close()


def now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def ledger(client: redis.Redis, tenant: str, field: str) -> tuple[int, ...] | None:
    raw = client.hget(f"al:{{{tenant}}}:ledgers", field)
    return None if raw is None else LEDGER.unpack(raw)


def test_state_of_the_folding_version_is_found_charged_and_counted(
        client: tuple[str, redis.Redis]) -> None:
    url, r = client
    guard = al.Guard(RedisStore(url=url))
    guard.set_budget("tenant:up", tokens=1_000)  # definitions are laid out as before
    guard.set_budget("tenant:up", tokens=100, per="user")
    guard.set_quota("tenant:up", runs=1, window="day")
    now = now_ms(r)

    # what the previous version left: "User_AbC" was charged 60 tokens on the folded
    # ledger, and run "R-7" was counted today as "r-7"
    folded = "tenant:up/user:user_abc|TOKENS||"
    r.hset("al:{up}:ledgers", folded, LEDGER.pack(1, 100, 100, 0, 60, 0, 0, now, 0, 0, 0))
    bucket = datetime.fromtimestamp(now / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
    quota = "tenant:up|runs|day|*"
    r.hset("al:{up}:qcount", quota, f"{bucket}|1")
    r.hset("al:{up}:qruns", f"{quota}|r-7", bucket)

    lower = al.Subject(tenant="up", dimensions={"user": "user_abc", "run": "r-7"})
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(lower, LLM, al.tokens(41))
    assert (denied.value.decision.scope, denied.value.decision.remaining) == (
        "tenant:up/user:user_abc", 40)
    guard.reserve(lower, LLM, al.tokens(30)).commit(al.tokens(30))  # same run: not counted
    stored = ledger(r, "up", folded)
    assert stored is not None and (stored[1], stored[3], stored[4]) == (100, 0, 90)
    assert [b.spent for b in guard.balances("tenant:up/user:user_abc")] == [90]

    # the id that used to be folded is now its own user, starting from the template
    mixed = al.Subject(tenant="up", dimensions={"user": "User_AbC"})
    guard.reserve(mixed, LLM, al.tokens(100)).commit(al.tokens(5))
    assert ledger(r, "up", "tenant:up/user:User_AbC|TOKENS||") is not None
    assert {b.scope: b.spent for b in guard.balances("tenant:up", include_children=True)} == {
        "tenant:up": 35, "tenant:up/user:user_abc": 90, "tenant:up/user:User_AbC": 5}
    # an operator who wants an id's earlier spend to follow it debits its new ledger so
    # (here "Carol_X", charged 30 on "carol_x" before the upgrade)
    r.hset("al:{up}:ledgers", "tenant:up/user:carol_x|TOKENS||",
           LEDGER.pack(1, 100, 100, 0, 30, 0, 0, now, 0, 0, 0))
    guard.fund("tenant:up/user:Carol_X", "DEBIT", al.tokens(30))
    carol = al.Subject(tenant="up", dimensions={"user": "Carol_X"})
    with pytest.raises(al.BudgetExceeded) as denied:
        guard.reserve(carol, LLM, al.tokens(71))
    assert denied.value.decision.remaining == 70
    # and so is the run: "R-7" is a second run today, refused by the quota of one
    with pytest.raises(al.QuotaExceeded):
        guard.reserve(al.Subject(tenant="up", dimensions={"run": "R-7"}), LLM, al.tokens(1))
    guard.close()


def test_values_with_separators_stay_in_the_tenants_keys(
        client: tuple[str, redis.Redis]) -> None:
    """Values holding a hash tag's braces, glob characters, `|`, `/` or `%` build no key of
    their own and no field another ledger could read: each is one field, named by its
    quoted form, in the tenant's ledgers hash."""
    url, r = client
    guard = al.Guard(RedisStore(url=url))
    guard.set_budget("tenant:sep", tokens=100, per="user")
    values = ["{other}", "a|TOKENS||", "*", "a/b", "%", "x:y", "[a-z]?"]
    for value in values:
        guard.record(al.Subject(tenant="sep", dimensions={"user": value}), LLM, al.tokens(1))
    fields = {f.decode() for f in r.hkeys("al:{sep}:ledgers")}
    assert fields == {f"tenant:sep/user:{al.quote_value(v)}|TOKENS||" for v in values}
    assert all(k.decode().startswith("al:{sep}:") for k in r.scan_iter("al:*sep*"))
    assert not [k for k in r.scan_iter("*other*")]
    guard.close()

