"""What a sweep costs on the embedded store when most tenants are idle.

    .venv/bin/python bench/memory_sweep.py                    # 1,000, 10,000 and 100,000 tenants
    .venv/bin/python bench/memory_sweep.py --tenants 1000,5000

The sweeper runs every second, under the store's lock a few hundred tenants at a time. For
each count, that many tenants get one budget each (and every 10th a per-run template with a
run's ledger, whose idle ledgers a sweep must look for); then three sweeps run with nothing
due, then one with a reservation past its deadline in every 100th tenant. For each: wall ms
and what it expired.

Baseline of the same run: one attribute read per tenant of the store (its expiry heap), in
one loop, the least a sweep that looks at every tenant can do; ×floor is the idle sweep
over it (below 1: the sweep does not look at every tenant).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import allotment as al

LLM = al.Action("llm.completion", "openai:gpt-4o")


def _ms(run: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000, result


def _floor(store: al.MemoryStore) -> int:
    """One attribute read per tenant, under the lock, as a sweep that visits all would."""
    with store._lock:
        return sum(1 for t in store._tenants.values() if t.expiry)


def measure(count: int) -> None:
    clock = al.ManualClock(1_800_000_000_000)
    store = al.MemoryStore(clock)
    guard = al.Guard(store)
    for i in range(count):
        guard.set_budget(f"tenant:t{i}", usd=10)
        if i % 10 == 0:
            guard.set_budget(f"tenant:t{i}", usd=1, per="run")
            guard.record(al.Subject(tenant=f"t{i}", dimensions={"run": "r1"}), LLM, al.usd(1))
    guard.sweep()  # the tenants just touched: each looked at once, then scheduled
    clock.advance(1_000)
    floors = [_ms(lambda: _floor(store))[0] for _ in range(5)]
    idle = []
    for _ in range(3):
        clock.advance(1_000)
        idle.append(_ms(guard.sweep)[0])
    for i in range(0, count, 100):
        guard.reserve(al.Subject(tenant=f"t{i}"), LLM, al.usd(1), ttl_ms=1_000, grace_ms=0)
    clock.advance(2_000)
    due_ms, expired = _ms(guard.sweep)
    floor = statistics.median(floors)
    print(f"{count:>9,} tenants  floor {floor:8.2f} ms  idle sweeps "
          + " ".join(f"{ms:8.3f}" for ms in idle)
          + f" ms  ×floor {statistics.median(idle) / floor:6.3f}"
          + f"  | 1 in 100 due: {due_ms:7.2f} ms, {expired} expired")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tenants", default="1000,10000,100000",
                        help="comma-separated tenant counts")
    args = parser.parse_args()
    print(f"allotment embedded-store sweep benchmark — Python {sys.version.split()[0]}")
    for count in (int(n) for n in args.tenants.split(",")):
        measure(count)


if __name__ == "__main__":
    main()
