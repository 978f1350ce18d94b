"""Client CPU per reserve+commit pair on Redis, against a pair of trivial script calls.

    .venv/bin/python bench/redis_client_cpu.py              # 15 rounds, about a minute
    .venv/bin/python bench/redis_client_cpu.py --profile    # cProfile of the guard pairs
    .venv/bin/python bench/redis_client_cpu.py --only guard --pairs 2000   # for callgrind

Starts its own redis-server (bench/redis_ops.py's) and, in one client thread, alternates
rounds of: two trivial EVALSHA `return 1` (the Script object `redis_ops.py` uses), two
trivial FCALLs, and `guard.reserve(...).commit(...)` at depth 3 (three USD budgets), with
natural batching on (the default) and off. Each round is timed with `time.process_time`
(user + system CPU of this process, so the kernel's socket work counts, and waiting for the
server does not); the figure per kind is the median over rounds of CPU µs per pair, and each
is shown as a multiple of the trivial EVALSHA pair of the same rounds.

`--only KIND --pairs N` runs one kind N times after a warm-up and nothing else: run it under
`valgrind --tool=callgrind` with N and with 0 pairs, as bench/pair_instructions.py, to count
the client's instructions per pair (user space only: the kernel's share is not counted).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import redis
import redis_ops as shared  # the server and budgets of the main Redis bench

import allotment as al
from allotment.stores.redis import RedisStore

DEPTH = 3
KINDS = ("trivial", "fcall", "guard", "guard 1call")
WARM_UP = 300


def pairs_of(url: str) -> dict[str, Callable[[], Any]]:
    """One reserve+commit pair (or trivial pair) per kind, each on its own client."""
    client = redis.Redis.from_url(url, decode_responses=True)
    client.function_load(shared.TRIVIAL_FUNCTION, replace=True)
    trivial = client.register_script(shared.TRIVIAL_LUA)
    guard = al.Guard(RedisStore(url=url), ttl_ms=3_600_000)
    plain = al.Guard(RedisStore(url=url, batching=False), ttl_ms=3_600_000)
    subject = shared.subject_of("cpu", DEPTH)
    shared.set_budgets(guard, subject)

    def trivial_pair() -> None:
        trivial()
        trivial()

    def fcall_pair() -> None:
        client.fcall("bench_trivial", 0)
        client.fcall("bench_trivial", 0)

    action, estimate, actual = shared.ACTION, shared.ESTIMATE, shared.ACTUAL
    return {"trivial": trivial_pair, "fcall": fcall_pair,
            "guard": lambda: guard.reserve(subject, action, estimate).commit(actual),
            "guard 1call": lambda: plain.reserve(subject, action, estimate).commit(actual)}


def cpu_us(pair: Callable[[], Any], count: int) -> float:
    """CPU µs per pair over `count` pairs (process time: user + system)."""
    start = time.process_time()
    for _ in range(count):
        pair()
    return (time.process_time() - start) / count * 1e6


def measure(url: str, rounds: int, count: int) -> dict[str, list[float]]:
    pairs = pairs_of(url)
    for pair in pairs.values():
        cpu_us(pair, WARM_UP)
    out: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(rounds):
        order = KINDS if r % 2 == 0 else KINDS[::-1]
        for kind in order:
            out[kind].append(cpu_us(pairs[kind], count))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=500, help="pairs per kind and round")
    parser.add_argument("--only", choices=KINDS, help="run one kind --pairs times, no report")
    parser.add_argument("--profile", action="store_true", help="cProfile the guard pairs")
    parser.add_argument("--sort", default="tottime", help="the profile's order (pstats)")
    args = parser.parse_args(argv)
    with shared.redis_server() as url:
        if args.only:
            pair = pairs_of(url)[args.only]
            for _ in range(WARM_UP + args.pairs):
                pair()
            return 0
        if args.profile:
            pair = pairs_of(url)["guard"]
            cpu_us(pair, WARM_UP)
            profiler = cProfile.Profile(time.process_time)
            profiler.runcall(cpu_us, pair, args.pairs * 4)
            stats = pstats.Stats(profiler)
            stats.sort_stats(args.sort).print_stats(45)
            return 0
        print(f"client CPU per pair, one thread, depth {DEPTH}: redis-py {redis.__version__}, "
              f"Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}, "
              f"{args.rounds} rounds × {args.pairs} pairs")
        found = measure(url, args.rounds, args.pairs)
    base = statistics.median(found["trivial"])
    ratios = {kind: statistics.median(v / t for v, t in zip(found[kind], found["trivial"],
                                                            strict=True))
              for kind in KINDS}
    print(f"{'kind':<14}{'cpu µs/pair':>12}{'×trivial':>10}{'(median of round ratios)':>26}")
    for kind in KINDS:
        median = statistics.median(found[kind])
        print(f"{kind:<14}{median:>12.1f}{median / base:>10.2f}{ratios[kind]:>26.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
