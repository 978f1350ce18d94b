"""What a sweep costs on Redis when most tenants are idle.

    .venv/bin/python bench/redis_sweep.py                     # 1,000, 10,000 and 50,000 tenants
    .venv/bin/python bench/redis_sweep.py --tenants 2000

The sweeper of every process sharing a store runs every second (one at a time, under a
lease). A platform has many tenants and few of them busy: what a sweep costs per idle tenant
decides whether it keeps up. For each count, that many tenants get one budget each on a
private redis-server; then three sweeps run with nothing due (the first also starts each
tenant's pruning pass), and then one with one reservation past its deadline in every 100th
tenant. For each sweep: wall ms, this process's CPU ms, the server's FCALLs and their µs
(INFO commandstats), and the writes it made (rdb_changes_since_last_save).

Baseline of the same run: one pipelined HMGET per tenant of the same page size (500), the
least a sweep that looks at every tenant can do; ×floor is the idle sweep over it.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis
from redis_ops import redis_server  # this folder's: a private redis-server

import allotment as al
from allotment.stores.redis import TENANTS_KEY, RedisStore, tenant_keys

LLM = al.Action("llm.completion", "openai:gpt-4o")


def _server_stats(client: redis.Redis) -> tuple[int, int, int]:
    fcall = client.info("commandstats").get("cmdstat_fcall", {})
    return (int(fcall.get("calls", 0)), int(fcall.get("usec", 0)),
            int(client.info("persistence")["rdb_changes_since_last_save"]))


def _timed(client: redis.Redis, run: object) -> tuple[float, float, int, int, int]:
    client.config_resetstat()
    _, _, writes = _server_stats(client)
    wall, cpu = time.perf_counter(), time.process_time()
    run()  # type: ignore[operator]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    calls, usec, after = _server_stats(client)
    return wall * 1000, cpu * 1000, calls, usec, after - writes


def _floor(client: redis.Redis) -> None:
    """One pipelined HMGET per tenant, a page of the registry at a time."""
    cursor = 0
    while True:
        cursor, page = client.sscan(TENANTS_KEY, cursor, count=500)
        with client.pipeline(transaction=False) as pipe:
            for name in page:
                pipe.hmget(tenant_keys(name.decode())[6], "prune_at")
            pipe.execute()
        if not cursor:
            return


def run(count: int) -> None:
    with redis_server() as url:
        clock = al.ManualClock()
        guard = al.Guard(RedisStore(url=url, clock=clock))
        for i in range(count):
            guard.set_budget(f"tenant:t{i}", tokens=1_000)
        client = redis.Redis.from_url(url)
        floor = min(_timed(client, lambda: _floor(client))[0] for _ in range(3))
        print(f"\n{count:,} tenants (floor: pipelined HMGET per tenant {floor:.0f} ms)")
        print("  sweep                        wall ms  cpu ms  FCALLs  server µs/call  writes"
              "  ×floor")
        for label in ("idle, first (passes start)", "idle, second", "idle, third"):
            clock.advance(1_000)
            wall, cpu, calls, usec, writes = _timed(client, guard.sweep)
            per = f"{usec / calls:14.1f}" if calls else f"{'-':>14}"
            print(f"  {label:<27}{wall:9.0f}{cpu:8.0f}{calls:8d}{per}{writes:8d}"
                  f"{wall / floor:8.1f}")
        for i in range(0, count, 100):
            guard.reserve(al.Subject(tenant=f"t{i}"), LLM, al.tokens(1), ttl_ms=1_000,
                          grace_ms=0)
        clock.advance(2_000)
        wall, cpu, calls, usec, writes = _timed(client, guard.sweep)
        per = f"{usec / calls:14.1f}" if calls else f"{'-':>14}"
        print(f"  {'1 in 100 with one expiring':<27}{wall:9.0f}{cpu:8.0f}{calls:8d}{per}"
              f"{writes:8d}{wall / floor:8.1f}")
        guard.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", default="1000,10000,50000",
                        help="comma-separated tenant counts")
    args = parser.parse_args()
    print(f"allotment Redis sweep benchmark — Python {sys.version.split()[0]}, "
          f"redis-py {redis.__version__}")
    for count in (int(n) for n in args.tenants.split(",")):
        run(count)


if __name__ == "__main__":
    main()
