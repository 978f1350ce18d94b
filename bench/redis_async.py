"""The async Redis path against the sync one, in one process, on a private redis-server.

    .venv/bin/python bench/redis_async.py                  # 9 rounds, about a minute
    .venv/bin/python bench/redis_async.py --profile "async pair"   # cProfile of one kind
    .venv/bin/python bench/redis_async.py --only "async pair" --pairs 2000   # for callgrind

The HTTP server calls the guard's async twins (`areserve`, `acommit`), which run
`RedisStore.aexecute`; the in-process figure DESIGN §10 (a) compares it with is the sync
`reserve`. This bench times, sequentially in one process and one event loop, at depth 3
(three USD budgets): a trivial FCALL through the store's own sync and async step (`_step`,
`_astep`: the batcher, the packed send, the pool), and `reserve` + `commit` sync and async,
with an idempotency key on each call and without. Kinds alternate in rounds whose order is
reversed every other round; each kind's figures are the medians over rounds of its p50
wall-clock µs per pair and its process CPU µs per pair (`time.process_time`: user + system,
so the kernel's socket work counts), and each async kind is shown as a multiple of its sync
twin, the median of the rounds' own ratios.

`--only KIND --pairs N` runs one kind N times after a warm-up and nothing else: run it under
`valgrind --tool=callgrind` with N and with 0 pairs and divide the difference by N, as
bench/redis_client_cpu.py, to count the client's instructions per pair.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import pstats
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis_ops as shared  # the server and budgets of the main Redis bench

import allotment as al
from allotment.stores.redis import RedisStore
from allotment.stores.redis.flow import Call

DEPTH = 3
KINDS = ("sync trivial", "async trivial", "sync pair", "async pair", "sync keyed",
         "async keyed")
TWINS = {"async trivial": "sync trivial", "async pair": "sync pair",
         "async keyed": "sync keyed"}
WARM_UP = 300
Pair = Callable[[], Any] | Callable[[], Awaitable[Any]]


def pairs_of(url: str) -> dict[str, Pair]:
    """One pair per kind (two trivial calls, or a reserve and its commit), on one store."""
    store = RedisStore(url=url)
    store.client.function_load(shared.TRIVIAL_FUNCTION, replace=True)
    guard = al.Guard(store, ttl_ms=3_600_000)
    subject = shared.subject_of("async", DEPTH)
    shared.set_budgets(guard, subject)
    action, estimate, actual = shared.ACTION, shared.ESTIMATE, shared.ACTUAL
    trivial = Call("bench_trivial", [], [])
    keys = itertools.count()

    def sync_trivial() -> None:
        store._step(trivial)
        store._step(trivial)

    async def async_trivial() -> None:
        on = store._loops.get(asyncio.get_running_loop()) or store._on_loop()
        await store._astep(on, trivial)
        await store._astep(on, trivial)

    def sync_keyed() -> None:
        n = next(keys)
        guard.reserve(subject, action, estimate, idempotency_key=f"r{n}").commit(
            actual, idempotency_key=f"c{n}")

    async def async_pair() -> None:
        await (await guard.areserve(subject, action, estimate)).acommit(actual)

    async def async_keyed() -> None:
        n = next(keys)
        held = await guard.areserve(subject, action, estimate, idempotency_key=f"r{n}")
        await held.acommit(actual, idempotency_key=f"c{n}")

    return {"sync trivial": sync_trivial, "async trivial": async_trivial,
            "sync pair": lambda: guard.reserve(subject, action, estimate).commit(actual),
            "async pair": async_pair, "sync keyed": sync_keyed, "async keyed": async_keyed}


async def timed(pair: Pair, count: int) -> tuple[float, float]:
    """The p50 wall-clock µs of `count` pairs and their process CPU µs per pair."""
    walls: list[float] = []
    clock = time.perf_counter
    is_async = asyncio.iscoroutinefunction(pair)
    start_cpu = time.process_time()
    for _ in range(count):
        start = clock()
        if is_async:
            await pair()  # type: ignore[misc]
        else:
            pair()
        walls.append(clock() - start)
    cpu = (time.process_time() - start_cpu) / count * 1e6
    return statistics.median(walls) * 1e6, cpu


async def measure(url: str, rounds: int, count: int) -> dict[str, list[tuple[float, float]]]:
    pairs = pairs_of(url)
    for pair in pairs.values():
        await timed(pair, WARM_UP)
    found: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            found[kind].append(await timed(pairs[kind], count))
    return found


def report(found: dict[str, list[tuple[float, float]]]) -> None:
    print(f"{'kind':<15}{'p50 µs':>9}{'cpu µs':>9}{'p50 ×sync':>11}{'cpu ×sync':>11}"
          "   (per pair; median over rounds)")
    for kind in KINDS:
        rows = found[kind]
        line = (f"{kind:<15}{statistics.median(r[0] for r in rows):>9.0f}"
                f"{statistics.median(r[1] for r in rows):>9.0f}")
        twin = TWINS.get(kind)
        if twin is not None:
            for i in (0, 1):
                ratio = statistics.median(a[i] / s[i] for a, s in zip(rows, found[twin],
                                                                       strict=True))
                line += f"{ratio:>11.2f}"
        print(line)


async def only(url: str, kind: str, count: int) -> None:
    pair = pairs_of(url)[kind]
    await timed(pair, WARM_UP + count)


async def profile(url: str, kind: str, count: int, order: str) -> None:
    pair = pairs_of(url)[kind]
    await timed(pair, WARM_UP)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    await timed(pair, count)
    profiler.disable()
    pstats.Stats(profiler).sort_stats(order).print_stats(40)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pairs", type=int, default=400, help="pairs per kind and round")
    parser.add_argument("--only", choices=KINDS, help="run one kind --pairs times, no report")
    parser.add_argument("--profile", choices=KINDS, help="cProfile one kind")
    parser.add_argument("--sort", default="tottime", help="the profile's order (pstats)")
    args = parser.parse_args(argv)
    with shared.redis_server() as url:
        if args.only:
            asyncio.run(only(url, args.only, args.pairs))
            return 0
        if args.profile:
            asyncio.run(profile(url, args.profile, args.pairs * 4, args.sort))
            return 0
        print(f"sync and async pairs, one process, depth {DEPTH}: redis-py "
              f"{redis.__version__}, Python {sys.version.split()[0]}, load "
              f"{os.getloadavg()[0]:.2f}, {args.rounds} rounds × {args.pairs} pairs")
        found = asyncio.run(measure(url, args.rounds, args.pairs))
    report(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
