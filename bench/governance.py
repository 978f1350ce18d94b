"""The governance reads over a long audit log: a page of events or audit entries, newest
first, against the same list in an order that reads every record kept.

    .venv/bin/python bench/governance.py                 # memory store and Redis
    .venv/bin/python bench/governance.py --tenants 20 --records 1000

A guard with `--tenants` tenants, each with `--records` budget credits on record (written
in process), serves `allotment.server.create_app` through httpx's ASGI transport (the app's
whole work, no network). For each store, the median wall ms of `--rounds` requests of:
the first page of `GET /v1/admin/events` (limit 50, newest first, the dashboard's default),
its second page (the cursor), the first page of `GET /v1/admin/audit/logs`, and the first
page of events oldest first (`sort_dir=asc`), which reads every tenant's whole log as every
list did before reads stopped at the page; the ratio of each to that last one.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import httpx
from redis_ops import redis_server  # this folder's: a private redis-server

import allotment as al
from allotment.server import create_app
from allotment.stores.redis import RedisStore

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
QUERIES = {
    "events, first page": "/v1/admin/events?limit=50",
    "events, second page": None,  # the first page's cursor
    "audit log, first page": "/v1/admin/audit/logs?limit=50",
    "events oldest first (reads all)": "/v1/admin/events?limit=50&sort_dir=asc",
}


def _fill(guard: al.Guard, tenants: int, records: int) -> None:
    names = [f"t-{i:03d}" for i in range(tenants)]
    for name in names:
        guard.set_budget(f"tenant:{name}", usd=1)
    for _ in range(records - 1):
        for name in names:
            guard.fund(f"tenant:{name}", "CREDIT", al.usd("0.01"))


async def _timed(client: httpx.AsyncClient, path: str, rounds: int) -> tuple[float, Any]:
    samples, body = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        answer = await client.get(path)
        samples.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.text
        body = answer.json()
    return statistics.median(samples), body


async def _measure(guard: al.Guard, rounds: int) -> dict[str, float]:
    app = create_app(guard, admin_key=ADMIN_KEY)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers={"X-Admin-API-Key": ADMIN_KEY}) as client:
        found: dict[str, float] = {}
        cursor = ""
        for name, path in QUERIES.items():
            if path is None:
                path = f"/v1/admin/events?limit=50&cursor={cursor}"
            found[name], body = await _timed(client, path, rounds)
            cursor = body.get("next_cursor", cursor)
    return found


def _report(title: str, found: dict[str, float]) -> None:
    whole = found["events oldest first (reads all)"]
    print(f"\n== {title}: median wall ms")
    for name, ms in found.items():
        print(f"    {name:<34}{ms:>10.1f}{ms / whole:>8.2f}× reading all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--records", type=int, default=4_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.tenants} tenants × {args.records:,} records on record each")
    guard = al.Guard(al.MemoryStore())
    _fill(guard, args.tenants, args.records)
    _report("memory store", asyncio.run(_measure(guard, args.rounds)))
    with redis_server() as url:
        store = RedisStore(url=url)
        guard = al.Guard(store)
        _fill(guard, args.tenants, args.records)
        _report("Redis store", asyncio.run(_measure(guard, args.rounds)))
        store.close()


if __name__ == "__main__":
    main()
