"""The Redis store runs each operation as one flow of Redis steps, driven by the sync client in
`execute` and by the asyncio client in `aexecute`: strict durability waits on both, the async
path never blocks its event loop on the sync client, and both send the same commands. Real
redis-server processes only."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

import allotment as al
from allotment.stores.redis import TENANTS_KEY, RedisStore

from support import LLM
from support.redis_server import free_port, redis_server
from support.stores import START_MS

AOF = ("--appendonly", "yes", "--appendfsync", "always")
ACME = al.Subject(tenant="acme")
STARTER = al.Plan(name="starter", budgets=(al.BudgetSpec(tokens=100),))
"""A default plan, so that a tenant's very first call can be a reserve."""


@pytest.fixture
def aof_url() -> Iterator[str]:
    """A server that fsyncs every write, so a strict store's local wait succeeds."""
    with redis_server(*AOF) as (url, _):
        yield url


def waits(url: str) -> int:
    """WAIT and WAITAOF calls the server has answered since its last CONFIG RESETSTAT."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats[name]["calls"]) for name in ("cmdstat_wait", "cmdstat_waitaof")
               if name in stats)


# -- (a) strict durability, sync and async ------------------------------------------------------


def test_async_commit_and_record_wait_for_durability_like_the_sync_ones(aof_url: str) -> None:
    """Each commit and record of a strict store, sync or async, is followed by one wait."""
    guard = al.Guard(RedisStore(url=aof_url, durability="strict"))
    guard.set_budget("tenant:acme", tokens=1_000)
    admin = redis.Redis.from_url(aof_url)

    admin.config_resetstat()
    guard.reserve(ACME, LLM, al.tokens(10)).commit(al.tokens(4))
    guard.record(ACME, LLM, al.tokens(1))
    assert waits(aof_url) == 2

    async def twins() -> None:
        r = await guard.areserve(ACME, LLM, al.tokens(10))
        assert (await guard.acommit(r.id, al.tokens(4))).charged == (al.tokens(4),)
        await guard.arecord(ACME, LLM, al.tokens(1))

    admin.config_resetstat()
    asyncio.run(twins())
    assert waits(aof_url) == 2
    assert guard.balances("tenant:acme")[0].spent == 2 * (4 + 1)
    guard.close()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_write_no_replica_confirms_raises_on_both_drivers(aof_url: str, driver: str) -> None:
    """With a replica asked for and none there, the wait times out: a commit and a record
    raise StoreUnavailable, async as sync, though the write was applied (a retry with the
    same key replays it)."""
    guard = al.Guard(RedisStore(url=aof_url, durability="strict", replicas=1,
                                wait_timeout_ms=50), commit_retries=0)
    guard.set_budget("tenant:acme", tokens=1_000)
    r = guard.reserve(ACME, LLM, al.tokens(10))

    def commit() -> Any:
        return guard.commit(r.id, al.tokens(4), idempotency_key="c-1")

    def record() -> Any:
        return guard.record(ACME, LLM, al.tokens(1), idempotency_key="e-1")

    async def acommit() -> Any:
        return await guard.acommit(r.id, al.tokens(4), idempotency_key="c-1")

    async def arecord() -> Any:
        return await guard.arecord(ACME, LLM, al.tokens(1), idempotency_key="e-1")

    calls: list[Callable[[], Any]] = [commit, record]
    if driver == "async":
        calls = [lambda: asyncio.run(acommit()), lambda: asyncio.run(arecord())]
    for call in calls:
        with pytest.raises(al.StoreUnavailable, match="not confirmed durable"):
            call()
    fast = al.Guard(RedisStore(url=aof_url))
    assert fast.commit(r.id, al.tokens(4), idempotency_key="c-1").charged == (al.tokens(4),)
    assert fast.balances("tenant:acme")[0].spent == 4 + 1
    guard.close()
    fast.close()


# -- (b) the async path never uses the sync client ---------------------------------------------


def test_async_registration_and_sweep_never_touch_the_sync_client() -> None:
    """A store whose sync client points at a port nobody listens on: the first calls of two
    tenants, async reserves that register each for the sweeper, and an async sweep that
    expires both holds all work, so none of them went through the sync client, which never
    opened a connection (and fails when it is used)."""
    clock = al.ManualClock(START_MS)
    with redis_server() as (url, _):
        dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
        store = RedisStore(dead, aclient=aredis.Redis.from_url(url, decode_responses=True),
                           clock=clock)
        guard = al.Guard(store, default_plan=STARTER)

        async def first_calls() -> tuple[int, list[al.ReservationStatus], int]:
            held = [await guard.areserve(subject, LLM, al.tokens(1), ttl_ms=1_000, grace_ms=0)
                    for subject in (ACME, al.Subject(tenant="beta"))]
            clock.advance(5_000)
            expired = await guard.asweep()
            statuses = [(await guard.aget(r.id)).status for r in held]
            return expired, statuses, (await guard.abalances("tenant:acme"))[0].reserved

        expired, statuses, reserved = asyncio.run(first_calls())
        assert (expired, statuses, reserved) == (2, [al.ReservationStatus.EXPIRED] * 2, 0)
        admin = redis.Redis.from_url(url, decode_responses=True)
        assert admin.smembers(TENANTS_KEY) == {"acme", "beta"}
        assert dead.connection_pool._created_connections == 0  # type: ignore[attr-defined]
        with pytest.raises(al.StoreUnavailable, match="unreachable"):  # the control
            guard.balances("tenant:acme")
        assert dead.connection_pool._created_connections == 1  # type: ignore[attr-defined]
        admin.close()


# -- (c) both drivers send the same commands ------------------------------------------------------

ID = re.compile(r"[0-9a-f]{32}")
SETUP = {"CLIENT", "SELECT", "HELLO", "PING", "AUTH"}
"""Connection setup, which differs between the two clients and is no step of a flow."""


class Monitor:
    """Every command clients send to the server (MONITOR), by database, until stopped; the
    commands scripts run inside are left out (they are the same Lua either way)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[int, str]] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def _listen(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True)
        with client.monitor() as monitor:
            self.ready.set()
            try:
                for line in monitor.listen():
                    if line["command"] == "ECHO monitor-stop":
                        break
                    if line["client_type"] != "lua":
                        self.seen.append((int(line["db"]), line["command"]))
            except redis.ConnectionError:  # the server stopped: a test failed before stop()
                pass
        client.close()

    def mark(self, admin: redis.Redis, label: str) -> None:
        """A boundary between operations, in the order the server saw it."""
        admin.echo(f"mark {label}")

    def stop(self, admin: redis.Redis) -> None:
        admin.echo("monitor-stop")
        self.thread.join(10)

    def by_operation(self, db: int) -> dict[str, list[str]]:
        """The commands sent on `db`, grouped by the mark that followed them, ids masked."""
        groups: dict[str, list[str]] = {}
        current: list[str] = []
        for where, command in self.seen:
            if command.startswith("ECHO mark "):
                groups[command.removeprefix("ECHO mark ")] = current
                current = []
            elif where == db and command.split(" ", 1)[0].upper() not in SETUP:
                current.append(ID.sub("<id>", command))
        return groups


Step = tuple[str, Callable[[al.Guard, dict[str, Any]], Any],
             Callable[[al.Guard, dict[str, Any]], Awaitable[Any]]]
BETA = al.Subject(tenant="beta")
STEPS: list[Step] = [
    ("set_budget", lambda g, s: g.set_budget("tenant:acme", tokens=1_000),
     lambda g, s: g.aset_budget("tenant:acme", tokens=1_000)),
    ("set_budget again", lambda g, s: g.set_budget("tenant:acme/workspace:w", tokens=100),
     lambda g, s: g.aset_budget("tenant:acme/workspace:w", tokens=100)),
    ("reserve", lambda g, s: s.update(r=g.reserve(ACME, LLM, al.tokens(10)).id),
     lambda g, s: _keep(s, "r", g.areserve(ACME, LLM, al.tokens(10)))),
    ("first reserve of a tenant", lambda g, s: g.reserve(BETA, LLM, al.tokens(1)),
     lambda g, s: g.areserve(BETA, LLM, al.tokens(1))),
    ("extend", lambda g, s: g.extend(s["r"], 1_000), lambda g, s: g.aextend(s["r"], 1_000)),
    ("commit", lambda g, s: g.commit(s["r"], al.tokens(4)),
     lambda g, s: g.acommit(s["r"], al.tokens(4))),
    ("release", lambda g, s: g.release(g.reserve(ACME, LLM, al.tokens(2)).id),
     lambda g, s: _release(g)),
    ("record", lambda g, s: g.record(ACME, LLM, al.tokens(1)),
     lambda g, s: g.arecord(ACME, LLM, al.tokens(1))),
    ("get", lambda g, s: g.get(s["r"]), lambda g, s: g.aget(s["r"])),
    ("balances", lambda g, s: g.balances("tenant:acme"),
     lambda g, s: g.abalances("tenant:acme")),
    ("audit", lambda g, s: g.audit("acme"), lambda g, s: g.aaudit("acme")),
    ("report", lambda g, s: g.report("acme"), lambda g, s: g.areport("acme")),
    ("fund", lambda g, s: g.fund("tenant:acme", "CREDIT", al.tokens(5), idempotency_key="f"),
     lambda g, s: g.afund("tenant:acme", "CREDIT", al.tokens(5), idempotency_key="f")),
    ("transfer", lambda g, s: g.transfer("tenant:acme", "tenant:acme/workspace:w",
                                         al.tokens(5), idempotency_key="t"),
     lambda g, s: g.atransfer("tenant:acme", "tenant:acme/workspace:w", al.tokens(5),
                              idempotency_key="t")),
    ("sweep", lambda g, s: g.sweep(), lambda g, s: g.asweep()),
]


async def _keep(state: dict[str, Any], name: str, reserving: Awaitable[al.Reservation]) -> None:
    state[name] = (await reserving).id


async def _release(guard: al.Guard) -> None:
    await guard.arelease((await guard.areserve(ACME, LLM, al.tokens(2))).id)


def test_sync_and_async_drivers_send_the_same_commands() -> None:
    """Each kind of operation, run by a strict store on a server without the library (so
    the first call loads it), sends the same commands through either driver: registration,
    FCALL, FUNCTION LOAD and the retried FCALL, INFO, FCALL + WAIT, SSCAN and the sweep's
    FCALL, in the same order with the same arguments (ids aside)."""
    with redis_server(*AOF) as (url, _):
        admin = redis.Redis.from_url(url)
        monitor = Monitor(url)

        sync_guard = al.Guard(RedisStore(url=f"{url}/1", durability="strict",
                                         clock=al.ManualClock(START_MS)),
                              default_plan=STARTER)
        state: dict[str, Any] = {}
        for name, run, _ in STEPS:
            run(sync_guard, state)
            monitor.mark(admin, f"sync {name}")
        admin.function_flush()  # the async run starts on a server without the library too
        monitor.mark(admin, "flush")

        async_guard = al.Guard(RedisStore(url=f"{url}/2", durability="strict",
                                          clock=al.ManualClock(START_MS)),
                              default_plan=STARTER)

        async def twins() -> None:
            astate: dict[str, Any] = {}
            for name, _, arun in STEPS:
                await arun(async_guard, astate)
                monitor.mark(admin, f"async {name}")

        asyncio.run(twins())
        monitor.stop(admin)
        sent_sync, sent_async = monitor.by_operation(1), monitor.by_operation(2)
        for name, _, _ in STEPS:
            assert sent_sync[f"sync {name}"], name  # every operation sent something
            assert sent_async[f"async {name}"] == sent_sync[f"sync {name}"], name
        flat = [command.split(" ", 1)[0] for name, _, _ in STEPS
                for command in sent_sync[f"sync {name}"]]
        for command in ("FCALL", "SADD", "FUNCTION", "INFO", "WAIT", "SSCAN"):
            assert command in flat, command
        sync_guard.close()
        async_guard.close()
        admin.close()
