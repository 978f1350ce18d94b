"""The Redis sweep at scale: one pipeline of reads per page of tenants decides which have
anything to do, so an idle tenant costs two reads and no call, and a sweep of idle tenants
writes nothing; pruning passes start at most every 1/720 of the idle ttl and go on a page
per sweep until through. Real redis-server only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

import allotment as al
from allotment.stores.redis import RedisStore

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
