"""What a long run leaves behind on the memory store, and what the cyclic collector pays for it.

    .venv/bin/python bench/retention.py              # 100,000 of each (about two minutes)
    .venv/bin/python bench/retention.py --pairs 20000 --many 20000

A finished reservation stays in the store for `finished_retention_ms` (a day by default) to
answer get() and replays, and a keyed call's answer stays for `idempotency_ttl_ms`. Every
request the server makes is keyed, so a server on the memory store keeps a day of both. What
they are made of decides what the collector walks at each full pass.

First the sweeps (the server's sweeper runs every second under the store's lock): ms of
three sweeps with `--many` run ledgers kept (a per-run budget, every run done), and
reserve+commit pairs on one tenant (p50, p99, longest) while another thread sweeps `--many`
tenants in a loop.

Then, for unkeyed and keyed depth-3 reserve+commit pairs (`core_ops.py`'s subject and
budgets), on a fresh guard each:

- objects the collector tracks, left behind per pair (`gc.get_objects()` before and after
  2,000 pairs; the audit log's entries count here but are bounded by `audit_retention`);
- bytes left behind per pair (`tracemalloc`, the same 2,000 pairs);
- `--pairs` pairs timed: µs per pair, of which µs in the collector (`gc.callbacks`), and the
  collector's share (the baseline of the same run is the unkeyed pair); then the ms of one
  sweep with all of them kept (none has lapsed: a sweep that walks them all shows).
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable

import allotment as al

SUBJECT = al.Subject(tenant="acme", workspace="production", app="assistant")
ACTION = al.Action("llm.completion", "openai:gpt-4o")
ESTIMATE, ACTUAL = al.usd("0.05"), al.usd("0.031")
COUNTED = 2_000


def pairs_of(keyed: bool) -> tuple[al.Guard, Callable[[int], None]]:
    """A fresh guard, and one reserve+commit pair on it per call, keyed as the server's are
    or not."""
    guard = al.Guard(al.MemoryStore())
    for scope in SUBJECT.scopes():
        guard.set_budget(scope, usd=10_000_000)
    tenant = guard.tenant(SUBJECT.tenant)

    def pair(i: int) -> None:
        if keyed:
            held = tenant.reserve(SUBJECT, ACTION, ESTIMATE, idempotency_key=f"r{i}")
            held.commit(ACTUAL, idempotency_key=f"c{i}")
        else:
            tenant.reserve(SUBJECT, ACTION, ESTIMATE).commit(ACTUAL)

    for i in range(200):  # warm: routes, caches, the first audit entries
        pair(-1 - i)
    return guard, pair


def left_behind(keyed: bool) -> tuple[float, float, Counter[str]]:
    """Tracked objects and bytes left per pair, and the tracked objects by type."""
    _, pair = pairs_of(keyed)
    gc.collect()
    before = Counter(type(o).__name__ for o in gc.get_objects())
    tracemalloc.start()
    start = tracemalloc.take_snapshot()
    for i in range(COUNTED):
        pair(i)
    gc.collect()
    grown = tracemalloc.take_snapshot().compare_to(start, "filename")
    tracemalloc.stop()
    after = Counter(type(o).__name__ for o in gc.get_objects())
    by_type = after - before
    return (sum(by_type.values()) / COUNTED, sum(s.size_diff for s in grown) / COUNTED,
            by_type)


def timed(keyed: bool, pairs: int) -> tuple[float, float, float]:
    """µs per pair and µs of it in the collector, over `pairs` pairs on a fresh guard; then
    ms of one sweep with all of them kept (nothing has lapsed: it should find nothing to do)."""
    guard, pair = pairs_of(keyed)
    gc.collect()
    in_gc, started = [0], [0]

    def clock(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            in_gc[0] += time.perf_counter_ns() - started[0]

    gc.callbacks.append(clock)
    begin = time.perf_counter_ns()
    for i in range(pairs):
        pair(i)
    total = time.perf_counter_ns() - begin
    gc.callbacks.remove(clock)
    begin = time.perf_counter_ns()
    guard.sweep()
    swept = time.perf_counter_ns() - begin
    return total / pairs / 1000, in_gc[0] / pairs / 1000, swept / 1e6


def run_ledgers_sweep(runs: int) -> list[float]:
    """ms of three sweeps with `runs` run ledgers kept (a per-run budget, every run done)."""
    guard = al.Guard(al.MemoryStore())
    guard.set_budget("tenant:acme", usd=10_000_000)
    guard.set_budget("tenant:acme", usd=5, per="run")
    for i in range(runs):
        run = al.Subject(tenant="acme", dimensions={"run": f"r{i}"})
        guard.reserve(run, ACTION, ESTIMATE).commit(ACTUAL)
    found = []
    for _ in range(3):
        begin = time.perf_counter_ns()
        guard.sweep()
        found.append((time.perf_counter_ns() - begin) / 1e6)
    return found


def pairs_while_sweeping(tenants: int, seconds: float) -> tuple[float, float, float]:
    """p50 and p99 µs and the longest ms of reserve+commit pairs on one tenant while another
    thread sweeps `tenants` tenants in a loop (the heap made at start-up frozen, so the
    collector's walk of every tenant's objects is left out)."""
    guard = al.Guard(al.MemoryStore())
    for i in range(tenants):
        guard.set_budget(f"tenant:t{i}", usd=100)
    guard.set_budget("tenant:t1", usd=10_000_000)  # the tenant the pairs run on
    subject = al.Subject(tenant="t1")
    gc.collect()
    gc.freeze()
    done = threading.Event()

    def sweeping() -> None:
        while not done.is_set():
            guard.sweep()
            done.wait(0.05)

    sweeper = threading.Thread(target=sweeping)
    sweeper.start()
    times: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        begin = time.perf_counter_ns()
        guard.reserve(subject, ACTION, ESTIMATE).commit(ACTUAL)
        times.append(time.perf_counter_ns() - begin)
    done.set()
    sweeper.join()
    gc.unfreeze()
    times.sort()
    return times[len(times) // 2] / 1000, times[len(times) * 99 // 100] / 1000, times[-1] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--many", type=int, default=100_000,
                        help="run ledgers and tenants of the sweep figures")
    args = parser.parse_args()
    swept = run_ledgers_sweep(args.many)
    print(f"sweeps with {args.many:,} run ledgers kept: "
          + ", ".join(f"{ms:.1f}" for ms in swept) + " ms")
    p50, p99, longest = pairs_while_sweeping(args.many, 3.0)
    print(f"reserve+commit while {args.many:,} tenants are swept in a loop: p50 {p50:.0f} µs, "
          f"p99 {p99:.0f} µs, longest {longest:.1f} ms")
    print(f"memory store, depth 3, {args.pairs:,} timed pairs per kind")
    print(f"{'kind':<10}{'tracked/pair':>14}{'bytes/pair':>12}{'µs/pair':>10}"
          f"{'gc µs/pair':>12}{'gc share':>10}{'× unkeyed':>11}{'sweep ms':>10}")
    baseline = None
    for kind in ("unkeyed", "keyed"):
        keyed = kind == "keyed"
        tracked, size, by_type = left_behind(keyed)
        per_pair, in_gc, sweep_ms = timed(keyed, args.pairs)
        baseline = baseline or per_pair
        print(f"{kind:<10}{tracked:>14.1f}{size:>12,.0f}{per_pair:>10.1f}{in_gc:>12.1f}"
              f"{in_gc / per_pair:>10.0%}{per_pair / baseline:>11.2f}{sweep_ms:>10.1f}")
        print("          tracked by type: " + ", ".join(
            f"{name} {count / COUNTED:.1f}" for name, count in by_type.most_common(6)
            if count / COUNTED >= 0.05))


if __name__ == "__main__":
    main()
