"""The Redis sweep at scale: one pipeline of reads per page of tenants decides which have
anything to do, so an idle tenant costs two reads and no call, and a sweep of idle tenants
writes nothing; pruning passes start at most every 1/720 of the idle ttl and go on a page
per sweep until through. Real redis-server only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

import allotment as al
from allotment.stores.redis import RedisStore, tenant_keys

from support import LLM
from support.redis_server import redis_server
from support.stores import START_MS

DAY = 86_400_000
IDLE_TTL = 30 * DAY


@pytest.fixture
def url() -> Iterator[str]:
    with redis_server() as (found, _):
        yield found


def counted(url: str) -> tuple[int, int]:
    """FCALLs answered since the last CONFIG RESETSTAT, and writes since the start."""
    server = redis.Redis.from_url(url)
    calls = int(server.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0))
    return calls, int(server.info("persistence")["rdb_changes_since_last_save"])


def test_a_sweep_of_idle_tenants_makes_no_call_and_writes_nothing(url: str) -> None:
    clock = al.ManualClock(START_MS)
    guard = al.Guard(RedisStore(url=url, clock=clock, prune_batch=2))
    for i in range(30):
        guard.set_budget(f"tenant:t{i}", tokens=100)
    guard.sweep()  # the first pass over each tenant's ledgers
    redis.Redis.from_url(url).config_resetstat()
    _, writes = counted(url)
    clock.advance(60_000)
    assert guard.sweep() == 0
    assert counted(url) == (0, writes)

    held = guard.reserve(al.Subject(tenant="t7"), LLM, al.tokens(10), ttl_ms=1_000,
                         grace_ms=0)
    clock.advance(2_000)
    redis.Redis.from_url(url).config_resetstat()
    assert guard.sweep() == 1  # only t7 is called
    assert counted(url)[0] == 1
    assert guard.get(held.id).status is al.ReservationStatus.EXPIRED


@pytest.fixture
def paged_url() -> Iterator[str]:
    """A server that keeps even small hashes as tables, so HSCAN answers in pages (a small
    listpack comes back whole, whatever COUNT says)."""
    with redis_server("--hash-max-listpack-entries", "0") as (found, _):
        yield found


def test_a_pruning_pass_goes_on_a_page_per_sweep_and_the_next_starts_later(
        paged_url: str) -> None:
    url = paged_url
    clock = al.ManualClock(START_MS)
    guard = al.Guard(RedisStore(url=url, clock=clock, prune_batch=1,
                                dimension_idle_ttl_ms=IDLE_TTL))
    guard.set_budget("tenant:acme", tokens=1_000)
    guard.set_budget("tenant:acme", tokens=100, per="run")
    runs = [f"r{i}" for i in range(40)]
    for run in runs:
        subject = al.Subject(tenant="acme", dimensions={"run": run})
        guard.reserve(subject, LLM, al.tokens(1)).commit(al.tokens(1))
    clock.advance(IDLE_TTL + 1)  # all idle now
    sweeps = 0
    while len(guard.balances("tenant:acme")) > 1:
        guard.sweep()
        sweeps += 1
        assert sweeps < 200, "the pass never got through the run ledgers"
    assert sweeps > 5  # a page per sweep
    meta = redis.Redis.from_url(url).hmget("al:{acme}:meta", "prune_ledgers", "prune_at")
    assert meta[0] == b"0" and int(meta[1]) == clock() + IDLE_TTL // 720

    subject = al.Subject(tenant="acme", dimensions={"run": "late"})
    guard.reserve(subject, LLM, al.tokens(1)).commit(al.tokens(1))
    redis.Redis.from_url(url).config_resetstat()
    clock.advance(IDLE_TTL // 720 - 1)
    guard.sweep()  # the last pass is through, and the next is not due yet: no call
    assert counted(url)[0] == 0
    clock.advance(IDLE_TTL)
    while len(guard.balances("tenant:acme")) > 1:  # due again, and "late" is idle now
        guard.sweep()
    assert counted(url)[0] >= 1


def test_an_error_reply_in_a_page_of_reads_leaves_the_connection_in_step(url: str) -> None:
    """A page's reads go out together in one write; an error reply among them fails the
    sweep with the server's word, and the calls after it get their own answers (never a
    reply left over from the page)."""
    clock = al.ManualClock(START_MS)
    guard = al.Guard(RedisStore(url=url, clock=clock))
    for name in ("a", "b", "c"):
        guard.set_budget(f"tenant:{name}", tokens=100)
    guard.sweep()
    server = redis.Redis.from_url(url)
    server.set(tenant_keys("b")[7], "not a sorted set")  # b's deadline index, broken
    with pytest.raises(al.StoreUnavailable, match="WRONGTYPE"):
        guard.sweep()
    for name in ("a", "c"):  # each answer its own, on the connection the page used
        held = guard.reserve(al.Subject(tenant=name), LLM, al.tokens(10))
        assert held.balances[0].reserved == 10 and held.id.startswith(f"{name}:")
        assert guard.balances(f"tenant:{name}")[0].reserved == 10

    async def from_async_code() -> None:  # the asyncio side's own connection, alike
        with pytest.raises(al.StoreUnavailable, match="WRONGTYPE"):
            await guard.asweep()
        held = await guard.areserve(al.Subject(tenant="a"), LLM, al.tokens(5))
        assert held.balances[0].reserved == 15
        assert (await guard.abalances("tenant:c"))[0].reserved == 10

    asyncio.run(from_async_code())
