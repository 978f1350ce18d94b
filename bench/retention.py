"""What a long run leaves behind on the memory store, and what the cyclic collector pays for it.

    .venv/bin/python bench/retention.py              # 100,000 pairs of each kind (about a minute)
    .venv/bin/python bench/retention.py --pairs 20000

A finished reservation stays in the store for `finished_retention_ms` (a day by default) to
answer get() and replays, and a keyed call's answer stays for `idempotency_ttl_ms`. Every
request the server makes is keyed, so a server on the memory store keeps a day of both. What
they are made of decides what the collector walks at each full pass.

For unkeyed and keyed depth-3 reserve+commit pairs (`core_ops.py`'s subject and budgets), on
a fresh guard each, this prints:

- objects the collector tracks, left behind per pair (`gc.get_objects()` before and after
  2,000 pairs; the audit log's entries count here but are bounded by `audit_retention`);
- bytes left behind per pair (`tracemalloc`, the same 2,000 pairs);
- then `--pairs` pairs timed: µs per pair, of which µs in the collector (`gc.callbacks`),
  and the collector's share (the baseline of the same run is the unkeyed pair); then the ms
  of one sweep with all of them kept (none has lapsed: a sweep that walks them all shows).
"""

from __future__ import annotations

import argparse
import gc
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    args = parser.parse_args()
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
