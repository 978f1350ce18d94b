"""When the store fails (DESIGN §3.12): fail closed or open, recover by itself, never drop
spend; strict durability; the background sweeper. Real redis-server processes only."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

import allotment as al
from allotment.stores.redis import RedisStore

from support import LLM
from support.redis_server import free_port, redis_server

ACME = al.Subject(tenant="acme")


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with redis_server(port=port) as (url, _):
        yield url, port


def test_fail_closed_by_default_then_recover_without_restart(server: tuple[str, int]) -> None:
    url, port = server
    guard = al.Guard(RedisStore(url=url, socket_timeout=0.5))
    guard.set_budget("tenant:acme", usd=10)
    guard.reserve(ACME, LLM, al.usd(1)).commit(al.usd(1))
    redis.Redis.from_url(url).shutdown(nosave=True)
    started = time.monotonic()
    with pytest.raises(al.StoreUnavailable, match="redis"):
        guard.reserve(ACME, LLM, al.usd(1))
    assert time.monotonic() - started < 5
    assert guard.store_failures == 1
    with redis_server(port=port):
        guard.set_budget("tenant:acme", usd=10)  # a fresh server: define again
        r = guard.reserve(ACME, LLM, al.usd(2))  # the same guard works again
        r.commit(al.usd(2))
        assert guard.balances("tenant:acme")[0].spent == al.usd(2).amount


def test_fail_open_lets_calls_through_and_records_their_spend_later(
        server: tuple[str, int]) -> None:
    url, port = server
    guard = al.Guard(RedisStore(url=url, socket_timeout=0.5), on_store_error="allow")
    redis.Redis.from_url(url).shutdown(nosave=True)
    r = guard.reserve(ACME, LLM, al.usd(1))
    assert r.unguarded and r.decision.reason == "STORE_UNAVAILABLE"
    assert guard.store_failures == 1
    with redis_server(port=port):
        guard.set_budget("tenant:acme", usd=10)
        result = r.commit(al.usd("0.75"))  # the spend reaches the ledger as a record
        assert result.charged == (al.usd("0.75"),)
        assert guard.balances("tenant:acme")[0].spent == al.usd("0.75").amount
        assert [rec.charged for rec in guard.audit("acme", types=["event.recorded"])] == [
            (al.usd("0.75"),)]


def test_a_commit_that_never_gets_through_is_not_dropped(server: tuple[str, int]) -> None:
    url, _ = server
    unrecorded: list[al.Notification] = []
    guard = al.Guard(RedisStore(url=url, socket_timeout=0.5), commit_retries=2)
    guard.on("spend.unrecorded", unrecorded.append)
    guard.set_budget("tenant:acme", usd=10)
    r = guard.reserve(ACME, LLM, al.usd(1))
    redis.Redis.from_url(url).shutdown(nosave=True)
    with pytest.raises(al.StoreUnavailable, match="3 tries"):
        r.commit(al.usd("0.40"))
    assert [(n.reservation_id, n.amounts) for n in unrecorded] == [(r.id, (al.usd("0.40"),))]


def test_strict_durability_waits_for_the_write(tmp_path: object) -> None:
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as (url, _):
        strict = al.Guard(RedisStore(url=url, durability="strict"))
        strict.set_budget("tenant:acme", usd=10)
        r = strict.reserve(ACME, LLM, al.usd(1))
        assert r.commit(al.usd(1)).charged == (al.usd(1),)
        waits = redis.Redis.from_url(url).info("commandstats")
        assert any(name in waits for name in ("cmdstat_wait", "cmdstat_waitaof"))
        replicated = al.Guard(RedisStore(url=url, durability="strict", replicas=1,
                                         wait_timeout_ms=50))
        r2 = replicated.reserve(ACME, LLM, al.usd(1))
        with pytest.raises(al.StoreUnavailable, match="not confirmed durable"):
            replicated.commit(r2.id, al.usd(1), idempotency_key="c-1")
        # the write itself was applied: a retry with the same key replays it
        fast = al.Guard(RedisStore(url=url))
        again = fast.commit(r2.id, al.usd(1), idempotency_key="c-1")
        assert again.charged == (al.usd(1),)
        assert fast.balances("tenant:acme")[0].spent == al.usd(2).amount
        with pytest.raises(al.InvalidRequest, match="durability"):
            RedisStore(url=url, durability="eventually")


def test_background_sweeper_one_at_a_time_returns_abandoned_budget(
        server: tuple[str, int]) -> None:
    url, _ = server
    guards = [al.Guard(RedisStore(url=url)) for _ in range(2)]
    guards[0].set_budget("tenant:acme", usd=10)
    for _ in range(5):
        guards[0].reserve(ACME, LLM, al.usd(2), ttl_ms=1_000, grace_ms=0)
    assert guards[0].balances("tenant:acme")[0].remaining == 0
    time.sleep(1.1)  # all five are now past ttl + grace; no operation of acme runs
    for guard in guards:
        guard.start_sweeper(interval_s=0.05)
    sweepers = [g._sweeper for g in guards]
    deadline = time.monotonic() + 5
    while sum(s.expired for s in sweepers if s) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    holder = redis.Redis.from_url(url).get("al:lease:sweeper")
    for guard in guards:
        guard.stop_sweeper()
    (b,) = guards[1].balances("tenant:acme")
    assert (b.reserved, b.remaining) == (0, al.usd(10).amount)
    assert holder is not None and holder.decode() in {s.owner for s in sweepers if s}
    assert sum(s.expired for s in sweepers if s) == 5


def test_memory_store_sweeper(clock: al.ManualClock) -> None:
    guard = al.Guard(al.MemoryStore(clock))
    guard.set_budget("tenant:acme", usd=1)
    guard.reserve(ACME, LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    clock.advance(2_000)
    guard.start_sweeper(interval_s=0.01)
    sweeper = guard._sweeper
    assert sweeper is not None
    deadline = time.monotonic() + 5
    while sweeper.expired == 0 and time.monotonic() < deadline:  # no other operation runs
        time.sleep(0.01)
    guard.close()
    assert sweeper.expired == 1
    assert guard.balances("tenant:acme")[0].reserved == 0


def test_bad_failure_policy_is_refused() -> None:
    with pytest.raises(al.InvalidRequest, match="on_store_error"):
        al.Guard(on_store_error="maybe")
