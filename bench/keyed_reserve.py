"""A reserve that carries its API key (`guard.tenant_for_key`) against the server's path today:
`authenticate_key` (one store call) and then the reserve through the tenant's handle.

    .venv/bin/python bench/keyed_reserve.py                 # 15 rounds, about a minute
    .venv/bin/python bench/keyed_reserve.py --only keyed --calls 2000    # for callgrind

Starts its own redis-server (bench/redis_ops.py's) and, in one client thread with natural
batching off (the server's requests are concurrent; here each call is its own FCALL, so the
figures are per request), alternates rounds of each kind on its own tenant (a USD budget on
each of three scopes):

- plain: `guard.tenant(t).reserve(...)`, no key at all (the floor);
- auth+reserve: `guard.authenticate_key(secret)`, the permission check, then the reserve
  through the tenant's handle: the server's request today;
- keyed: `guard.tenant_for_key(secret, "reservations:create").reserve(...)`: one call,
  the key checked inside it.

Per kind: the median over rounds of client CPU µs per request (`time.process_time`: user +
system of this process, so the socket work counts and waiting for the server does not), wall
µs per request, and the server's µs per request (INFO commandstats usec of the FCALLs, which
the server times around each call). Each also as a multiple of `plain` in the same rounds.

`--only KIND --calls N` runs one kind N times after a warm-up and nothing else, the N calls
inside one `functools.reduce`, so callgrind can count them alone (user space only):

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        .venv/bin/python bench/keyed_reserve.py --only keyed --calls 1000

`--threads N` runs each kind from N threads at once with natural batching on (the server's
situation under load: keyed calls batch with each other) and reports requests per second and
the server's CPU µs per request (INFO cpu), median over rounds.

`--server-instructions` counts instead the server's instructions per request of each kind,
with redis-server under callgrind (bench/redis_server_instructions.py's), everything the
server does for the request's calls included (reading them, the replies).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis_ops as shared  # the server and budgets of the main Redis bench

import allotment as al
from allotment.keys import permits
from allotment.stores.redis import RedisStore

DEPTH = 3
KINDS = ("plain", "auth+reserve", "keyed")
WARM_UP = 300
PERMISSION = "reservations:create"


def calls_of(url: str, batching: bool = False) -> dict[str, Callable[[], Any]]:
    """One reserve per kind, each kind on its own tenant (so none reaps another's)."""
    guard = al.Guard(RedisStore(url=url, batching=batching), ttl_ms=shared.TTL_MS)
    action, estimate = shared.ACTION, al.usd("0.000001")
    subjects = {kind: shared.subject_of(f"kind{i}", DEPTH) for i, kind in enumerate(KINDS)}
    for subject in subjects.values():
        shared.set_budgets(guard, subject)
    secrets = {kind: guard.create_key(subjects[kind].tenant).secret for kind in KINDS}
    handles = {kind: guard.tenant(subjects[kind].tenant) for kind in KINDS}

    def plain() -> Any:
        return handles["plain"].reserve(subjects["plain"], action, estimate)

    def authenticated() -> Any:
        key = guard.authenticate_key(secrets["auth+reserve"])
        if key is None or not permits(key, PERMISSION):
            raise AssertionError("the key was refused")
        return handles["auth+reserve"].reserve(subjects["auth+reserve"], action, estimate)

    def keyed() -> Any:
        return guard.tenant_for_key(secrets["keyed"], PERMISSION).reserve(
            subjects["keyed"], action, estimate)

    return {"plain": plain, "auth+reserve": authenticated, "keyed": keyed}


def timed(call: Callable[[], Any], count: int, admin: redis.Redis) -> tuple[float, ...]:
    """(client CPU µs, wall µs, server µs) per call over `count` calls."""
    admin.config_resetstat()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    fcall = admin.info("commandstats").get("cmdstat_fcall", {"usec": 0})
    return cpu / count * 1e6, wall / count * 1e6, int(fcall["usec"]) / count


def threaded(url: str, threads: int, rounds: int, count: int) -> int:
    """Requests per second and server CPU µs per request, each kind from `threads` threads."""
    calls = calls_of(url, batching=True)
    admin = redis.Redis.from_url(url)
    found: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}

    def one_round(call: Callable[[], Any]) -> tuple[float, float]:
        workers = [threading.Thread(target=lambda: [call() for _ in range(count)])
                   for _ in range(threads)]
        cpu, wall = shared.server_cpu(admin), time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall, cpu = time.perf_counter() - wall, shared.server_cpu(admin) - cpu
        done = threads * count
        return done / wall, cpu / done * 1e6

    for call in calls.values():
        one_round(call)
    for r in range(rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            found[kind].append(one_round(calls[kind]))
    print(f"{threads} threads, batching on, depth {DEPTH}, load {os.getloadavg()[0]:.2f}, "
          f"{rounds} rounds × {threads * count} requests")
    print(f"{'kind':<14}{'requests/s':>11}{'×plain':>8}{'server cpu µs':>15}{'×plain':>8}")
    for kind in KINDS:
        row = f"{kind:<14}"
        for i, width in ((0, 11), (1, 15)):
            ratio = statistics.median(v[i] / p[i] for v, p in zip(found[kind], found["plain"],
                                                                  strict=True))
            row += f"{statistics.median(v[i] for v in found[kind]):>{width}.1f}{ratio:>8.2f}"
        print(row)
    return 0


def server_instructions(count: int) -> int:
    """Server instructions per request of each kind, counted by callgrind."""
    from redis_server_instructions import Counter, counted_server

    with counted_server() as (url, pid, out):
        counter = Counter(pid, out)
        calls = calls_of(url)
        found = {}
        for kind in KINDS:
            for _ in range(50):  # warm: the tenant's keys and the library's caches
                calls[kind]()
            counter.zero()
            for _ in range(count):
                calls[kind]()
            found[kind] = counter.read() / count / 1000
    print(f"server instructions per request (k), {count} requests each, depth {DEPTH}")
    for kind in KINDS:
        print(f"{kind:<14}{found[kind]:>9.1f}  ×plain {found[kind] / found['plain']:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400, help="calls per kind and round")
    parser.add_argument("--only", choices=KINDS, help="run one kind --calls times, no report")
    parser.add_argument("--threads", type=int, default=0, help="N threads, batching on")
    parser.add_argument("--server-instructions", action="store_true",
                        help="the server's instructions per request (callgrind), per kind")
    args = parser.parse_args(argv)
    if args.server_instructions:
        return server_instructions(args.calls)
    with shared.redis_server() as url:
        if args.threads:
            return threaded(url, args.threads, args.rounds, args.calls // args.threads)
        calls = calls_of(url)
        if args.only:
            call = calls[args.only]
            for _ in range(WARM_UP):
                call()
            functools.reduce(lambda _, __: call(), range(args.calls), None)
            return 0
        admin = redis.Redis.from_url(url)
        for call in calls.values():
            timed(call, WARM_UP, admin)
        found: dict[str, list[tuple[float, ...]]] = {kind: [] for kind in KINDS}
        for r in range(args.rounds):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                found[kind].append(timed(calls[kind], args.calls, admin))
    print(f"one reserve per request, one thread, depth {DEPTH}, batching off: redis-py "
          f"{redis.__version__}, Python {sys.version.split()[0]}, load "
          f"{os.getloadavg()[0]:.2f}, {args.rounds} rounds × {args.calls} calls")
    print(f"{'kind':<14}{'client cpu µs':>14}{'×plain':>8}{'wall µs':>10}{'×plain':>8}"
          f"{'server µs':>11}{'×plain':>8}")
    for kind in KINDS:
        row = f"{kind:<14}"
        for i in range(3):
            ratio = statistics.median(v[i] / p[i] for v, p in zip(found[kind], found["plain"],
                                                                  strict=True))
            row += f"{statistics.median(v[i] for v in found[kind]):>{14 if i == 0 else 10}.1f}"
            row += f"{ratio:>8.2f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
