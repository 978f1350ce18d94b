"""Latency and throughput of the in-memory enforcement core: reserve, commit, and both.

    .venv/bin/python bench/core_ops.py            # full run (about a minute)
    .venv/bin/python bench/core_ops.py --quick    # a few seconds, for a smoke test

For each scope depth (1, 3, 6 budgeted scopes) and thread count (1, 8 threads sharing one
guard) a fresh `al.Guard(al.MemoryStore())` runs rounds of four phases, each phase timing
every call with `time.perf_counter_ns`:

    baseline        a trivial lock-held operation (threading.Lock + dict increment)
    reserve         guard.reserve(subject, action, usd(0.05))
    commit          reservation.commit(usd(0.031)) of the reservations just made
    reserve+commit  both, timed as one pair

The phases of one configuration are interleaved round by round, so machine noise and heap
growth hit them alike; each figure is also printed as a multiple of the baseline measured in
the same rounds (cost ×b: latency ÷ baseline latency, baseline ops/s ÷ ops/s). After every
configuration the ledger identity is checked; a broken ledger exits with status 1.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import allotment as al

LEVELS = (("tenant", "acme"), ("workspace", "production"), ("app", "assistant"),
          ("workflow", "document-analysis"), ("agent", "analyzer"), ("toolset", "web"))
DEPTHS = (1, 3, 6)
THREADS = (1, 8)
PHASES = ("baseline", "reserve", "commit", "reserve+commit")
BUDGET_USD = 10_000_000  # never exhausted: every call is allowed
ESTIMATE = al.usd("0.05")
ACTUAL = al.usd("0.031")
ACTION = al.Action("llm.completion", "openai:gpt-4o")
TARGET_OP, TARGET_DEPTH, TARGET_P50_US = "reserve+commit", 3, 30.0
BASELINE_FACTOR = 10  # baseline calls per round = 10 × the others: its phase lasts long enough


@dataclass(frozen=True)
class Settings:
    samples: int  # timed calls per phase and configuration (over all threads)
    rounds: int
    warmup_rounds: int


FULL = Settings(samples=20_000, rounds=20, warmup_rounds=2)
QUICK = Settings(samples=3_000, rounds=6, warmup_rounds=1)


@dataclass
class Row:
    """One phase of one configuration: percentiles, throughput and GC time."""

    op: str
    depth: int
    threads: int
    p50_us: float
    p99_us: float
    ops_s: float
    gc_us: float  # collector time inside the phase, per call
    samples: int


@dataclass
class LedgerCheck:
    depth: int
    threads: int
    balance: al.Balance
    expected_spent: int
    ok: bool


@dataclass
class GcClock:
    """Total time spent in the cyclic garbage collector, from `gc.callbacks`."""

    total_ns: int = 0
    _started: dict[int, int] = field(default_factory=dict)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            self._started[threading.get_ident()] = now
        else:
            self.total_ns += now - self._started.pop(threading.get_ident(), now)


GC_CLOCK = GcClock()


def timed(call: Callable[[int], object], count: int, out: array[int], at: int) -> None:
    """The timing loop shared by every phase: one perf_counter_ns pair per call."""
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        call(i)
        out[at + i] = clock() - start


def make_guard(depth: int) -> tuple[al.Guard, al.Subject]:
    """A fresh memory-store guard with a USD budget on each of `depth` derived scopes."""
    guard = al.Guard(al.MemoryStore())
    subject = al.Subject(**dict(LEVELS[:depth]))
    for scope in subject.scopes():
        guard.set_budget(scope, usd=BUDGET_USD)
    return guard, subject


class Worker:
    """One thread's calls for each phase, and its count of commits."""

    def __init__(self, guard: al.Guard, subject: al.Subject, per_round: int,
                 lock: threading.Lock, counts: dict[str, int]) -> None:
        self.guard, self.subject, self.lock, self.counts = guard, subject, lock, counts
        self.held: list[al.Reservation | None] = [None] * per_round
        self.commits = 0

    def baseline(self, i: int) -> None:
        with self.lock:
            self.counts["n"] += 1

    def reserve(self, i: int) -> None:
        self.held[i] = self.guard.reserve(self.subject, ACTION, ESTIMATE)

    def commit(self, i: int) -> None:
        reservation = self.held[i]
        assert reservation is not None
        reservation.commit(ACTUAL)
        self.held[i] = None
        self.commits += 1

    def pair(self, i: int) -> None:
        self.guard.reserve(self.subject, ACTION, ESTIMATE).commit(ACTUAL)
        self.commits += 1

    def calls(self) -> dict[str, Callable[[int], None]]:
        return {"baseline": self.baseline, "reserve": self.reserve, "commit": self.commit,
                "reserve+commit": self.pair}


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_configuration(depth: int, threads: int, settings: Settings
                      ) -> tuple[list[Row], list[LedgerCheck]]:
    """All phases for one depth and thread count on a fresh guard, then its ledger check."""
    guard, subject = make_guard(depth)
    per_round = math.ceil(settings.samples / (settings.rounds * threads))
    counts = {"n": 0}
    lock = threading.Lock()
    workers = [Worker(guard, subject, per_round, lock, counts) for _ in range(threads)]
    sizes = {op: per_round * (BASELINE_FACTOR if op == "baseline" else 1) for op in PHASES}
    total_rounds = settings.warmup_rounds + settings.rounds
    samples = {op: [array("q", bytes(8 * sizes[op] * total_rounds)) for _ in workers]
               for op in PHASES}
    # spans[op][round][thread] = (start, end, gc_ns at start, gc_ns at end)
    spans = {op: [[(0, 0, 0, 0)] * threads for _ in range(total_rounds)] for op in PHASES}
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        calls = workers[index].calls()
        try:
            for r in range(total_rounds):
                for op in PHASES:
                    barrier.wait()
                    g0, t0 = GC_CLOCK.total_ns, time.perf_counter_ns()
                    timed(calls[op], sizes[op], samples[op][index], r * sizes[op])
                    t1, g1 = time.perf_counter_ns(), GC_CLOCK.total_ns
                    spans[op][r][index] = (t0, t1, g0, g1)
        except BaseException as error:  # report it; a broken barrier frees the others
            errors.append(error)
            barrier.abort()

    gc.collect()
    pool = [threading.Thread(target=work, args=(i,), name=f"bench-{i}") for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        cause = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                     errors[0])
        raise RuntimeError(f"depth {depth}, {threads} threads: a worker failed") from cause

    rows = []
    for op in PHASES:
        skip = settings.warmup_rounds * sizes[op]
        ordered = sorted(v for per_thread in samples[op] for v in per_thread[skip:])
        wall = gc_ns = 0
        for r in range(settings.warmup_rounds, total_rounds):
            first = min(spans[op][r], key=lambda s: s[0])
            last = max(spans[op][r], key=lambda s: s[1])
            wall += last[1] - first[0]
            gc_ns += last[3] - first[2]
        rows.append(Row(op, depth, threads, percentile(ordered, 0.50) / 1e3,
                        percentile(ordered, 0.99) / 1e3, len(ordered) / (wall / 1e9),
                        gc_ns / len(ordered) / 1e3, len(ordered)))
    if counts["n"] != threads * sizes["baseline"] * total_rounds:
        raise RuntimeError("baseline counter lost an increment")
    commits = sum(w.commits for w in workers)
    return rows, check_ledgers(guard, depth, threads, commits)


def check_ledgers(guard: al.Guard, depth: int, threads: int,
                  commits: int) -> list[LedgerCheck]:
    """allocated == remaining + reserved + spent + debt, nothing left reserved, and every
    ledger charged exactly once per commit."""
    balances = guard.balances(f"tenant:{LEVELS[0][1]}")
    expected = commits * ACTUAL.amount
    checks = [LedgerCheck(depth, threads, b, expected, ok=(
        b.allocated == b.remaining + b.reserved + b.spent + b.debt
        and b.allocated == BUDGET_USD * 10**8 and b.reserved == 0 and b.debt == 0
        and b.spent == expected and not b.is_over_limit)) for b in balances]
    if len(checks) != depth:  # a missing ledger is a broken ledger too
        checks.append(LedgerCheck(depth, threads, balances[0], expected, ok=False))
    guard.close()
    return checks


def ratio(value: float, base: float) -> str:
    return f"{value / base:8.1f}" if base > 0 else "       -"


def rate(ops_s: float) -> str:
    return f"{ops_s / 1e6:.2f}M" if ops_s >= 1e6 else f"{ops_s / 1e3:.1f}k"


def print_table(rows: list[Row]) -> None:
    """Raw figures, then cost as a multiple of the baseline of the same configuration."""
    print(f"{'op':<15}{'depth':>6}{'thr':>4}{'p50 µs':>9}{'p99 µs':>9}{'ops/s':>9}"
          f"{'gc µs/op':>9}{'p50 ×b':>8}{'p99 ×b':>8}{'ops ×b':>8}")
    base: Row | None = None
    for row in rows:
        if row.op == "baseline":
            base = row
            if row is not rows[0]:
                print()
        assert base is not None
        print(f"{row.op:<15}{row.depth:>6}{row.threads:>4}{row.p50_us:>9.2f}"
              f"{row.p99_us:>9.2f}{rate(row.ops_s):>9}{row.gc_us:>9.2f}"
              f"{ratio(row.p50_us, base.p50_us)}{ratio(row.p99_us, base.p99_us)}"
              f"{ratio(base.ops_s, row.ops_s)}")


def print_ledgers(checks: list[LedgerCheck]) -> None:
    print("\nLedger identity (allocated == remaining + reserved + spent + debt, reserved == 0,"
          " spent == commits × $0.031):")
    for c in checks:
        b = c.balance
        tail = b.scope.rsplit("/", 1)[-1]
        line = (f"  {'ok  ' if c.ok else 'FAIL'} depth {c.depth}, {c.threads} thr, {tail:<27} "
                f"{b.allocated} == {b.remaining} + {b.reserved} + {b.spent} + {b.debt}")
        print(line if c.ok else f"{line}  (spent expected {c.expected_spent})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the in-memory enforcement core.")
    parser.add_argument("--quick", action="store_true", help="short run (smoke test)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    gc.callbacks.append(GC_CLOCK)

    load = os.getloadavg()[0]
    print(f"allotment core ops — memory store, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {load:.2f}, "
          f"{'quick' if args.quick else 'full'} run: {settings.samples:,} timed calls per "
          f"op and configuration ({settings.rounds} rounds, {settings.warmup_rounds} warm-up)")
    print("budgets: one USD budget per derived scope (tenant / workspace / app / workflow / "
          "agent / toolset);\nreserve usd(0.05), commit usd(0.031); baseline = "
          "threading.Lock + dict increment; ×b = cost ÷ baseline\n")
    started = time.perf_counter()
    rows: list[Row] = []
    checks: list[LedgerCheck] = []
    for threads in THREADS:
        for depth in DEPTHS:
            found, checked = run_configuration(depth, threads, settings)
            rows += found
            checks += checked
            gc.collect()
    print_table(rows)
    print_ledgers(checks)

    target = next(r for r in rows if r.op == TARGET_OP and r.depth == TARGET_DEPTH
                  and r.threads == 1)
    verdict = "PASS" if target.p50_us <= TARGET_P50_US else "MISS"
    print(f"\ntarget {TARGET_OP} p50 ≤ {TARGET_P50_US:.0f} µs at depth {TARGET_DEPTH}, "
          f"1 thread: {target.p50_us:.1f} µs → {verdict} (informational)")
    print(f"elapsed {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f} at "
          f"the end")
    broken = [c for c in checks if not c.ok]
    if broken:
        print(f"LEDGER CHECK FAILED on {len(broken)} ledger(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
