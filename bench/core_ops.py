"""Latency and throughput of the in-memory enforcement core: reserve, commit, and both.

    .venv/bin/python bench/core_ops.py            # full run (about a minute)
    .venv/bin/python bench/core_ops.py --quick    # a few seconds, for a smoke test

For each scope depth (1, 3, 6 budgeted scopes) and thread count (1, 8 threads sharing one
guard) a fresh `al.Guard(al.MemoryStore())` runs rounds of six phases, each phase timing
every call with `time.perf_counter_ns`:

    floor reserve   the floor's hold: under one threading.Lock, check room on `depth` dict
                    ledgers and hold the estimate on each
    floor commit    the floor's settle: under the lock, release each hold, charge the actual
    floor pair      both, timed as one pair (DESIGN §10: the memory store's yardstick)
    reserve         guard.reserve(subject, action, usd(0.05))
    commit          reservation.commit(usd(0.031)) of the reservations just made
    reserve+commit  both, timed as one pair

The phases of one configuration are interleaved round by round, so machine noise and heap
growth hit them alike; each guard figure is also printed as a multiple of the matching floor
figure of the same rounds (×f: latency ÷ floor latency, floor ops/s ÷ ops/s). After every
configuration the ledger identity is checked, the floor's ledgers too; a broken ledger exits
with status 1.
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
FLOOR_OF = {"reserve": "floor reserve", "commit": "floor commit",
            "reserve+commit": "floor pair"}
"""Each guard phase, and the floor phase it is measured against."""
PHASES = ("floor reserve", "floor commit", "floor pair", "reserve", "commit", "reserve+commit")
BUDGET_USD = 10_000_000  # never exhausted: every call is allowed
ESTIMATE = al.usd("0.05")
ACTUAL = al.usd("0.031")
ACTION = al.Action("llm.completion", "openai:gpt-4o")
TARGET_OP, TARGET_DEPTH, TARGET_RATIO = "reserve+commit", 3, 10.0
FLOOR_FACTOR = 10  # floor calls per round = 10 × the others: its phases last long enough


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


class Floor:
    """DESIGN §10's floor for the memory store: one `threading.Lock` and `depth` dict ledgers;
    a reserve checks room on every ledger and holds the estimate on each, a commit releases
    each hold and charges the actual, each under the lock."""

    def __init__(self, depth: int) -> None:
        self.lock = threading.Lock()
        self.ledgers = [{"allocated": BUDGET_USD * 10**8, "reserved": 0, "spent": 0}
                        for _ in range(depth)]

    def reserve(self, amount: int) -> int:
        with self.lock:
            for ledger in self.ledgers:
                if ledger["allocated"] - ledger["reserved"] - ledger["spent"] < amount:
                    raise RuntimeError("the floor's budget ran out")
            for ledger in self.ledgers:
                ledger["reserved"] += amount
        return amount

    def commit(self, held: int, actual: int) -> None:
        with self.lock:
            for ledger in self.ledgers:
                ledger["reserved"] -= held
                ledger["spent"] += actual


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
                 floor: Floor) -> None:
        self.guard, self.subject, self.floor = guard, subject, floor
        self.held: list[al.Reservation | None] = [None] * per_round
        self.floor_held = [0] * (per_round * FLOOR_FACTOR)
        self.commits = self.floor_commits = 0

    def floor_reserve(self, i: int) -> None:
        self.floor_held[i] = self.floor.reserve(ESTIMATE.amount)

    def floor_commit(self, i: int) -> None:
        self.floor.commit(self.floor_held[i], ACTUAL.amount)
        self.floor_held[i] = 0
        self.floor_commits += 1

    def floor_pair(self, i: int) -> None:
        floor = self.floor
        floor.commit(floor.reserve(ESTIMATE.amount), ACTUAL.amount)
        self.floor_commits += 1

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
        return {"floor reserve": self.floor_reserve, "floor commit": self.floor_commit,
                "floor pair": self.floor_pair, "reserve": self.reserve, "commit": self.commit,
                "reserve+commit": self.pair}


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_configuration(depth: int, threads: int, settings: Settings
                      ) -> tuple[list[Row], list[LedgerCheck]]:
    """All phases for one depth and thread count on a fresh guard, then its ledger check."""
    guard, subject = make_guard(depth)
    per_round = math.ceil(settings.samples / (settings.rounds * threads))
    floor = Floor(depth)
    workers = [Worker(guard, subject, per_round, floor) for _ in range(threads)]
    sizes = {op: per_round * (FLOOR_FACTOR if op in FLOOR_OF.values() else 1) for op in PHASES}
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
    commits = sum(w.commits for w in workers)
    floor_commits = sum(w.floor_commits for w in workers)
    return rows, check_ledgers(guard, depth, threads, commits) + check_floor(
        floor, depth, threads, floor_commits)


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


def check_floor(floor: Floor, depth: int, threads: int, commits: int) -> list[LedgerCheck]:
    """The floor's ledgers, checked as the guard's: nothing held, every commit charged."""
    expected = commits * ACTUAL.amount
    checks = []
    for index, ledger in enumerate(floor.ledgers):
        allocated, reserved, spent = ledger["allocated"], ledger["reserved"], ledger["spent"]
        balance = al.Balance(f"floor:{index}", al.Unit.USD_MICROCENTS, None, "", allocated,
                             reserved, spent, 0, 0, False, al.BudgetStatus.ACTIVE)
        checks.append(LedgerCheck(depth, threads, balance, expected,
                                  ok=reserved == 0 and spent == expected))
    return checks


def ratio(value: float, base: float) -> str:
    return f"{value / base:8.1f}" if base > 0 else "       -"


def rate(ops_s: float) -> str:
    return f"{ops_s / 1e6:.2f}M" if ops_s >= 1e6 else f"{ops_s / 1e3:.1f}k"


def print_table(rows: list[Row]) -> None:
    """Raw figures, then each guard figure as a multiple of its floor figure (same rounds)."""
    print(f"{'op':<15}{'depth':>6}{'thr':>4}{'p50 µs':>9}{'p99 µs':>9}{'ops/s':>9}"
          f"{'gc µs/op':>9}{'p50 ×f':>8}{'p99 ×f':>8}{'ops ×f':>8}")
    floors: dict[str, Row] = {}
    for row in rows:
        if row.op == PHASES[0] and row is not rows[0]:
            print()
        line = (f"{row.op:<15}{row.depth:>6}{row.threads:>4}{row.p50_us:>9.2f}"
                f"{row.p99_us:>9.2f}{rate(row.ops_s):>9}{row.gc_us:>9.2f}")
        floor = floors.get(FLOOR_OF.get(row.op, ""))
        if floor is None:
            floors[row.op] = row
            print(line)
            continue
        print(f"{line}{ratio(row.p50_us, floor.p50_us)}{ratio(row.p99_us, floor.p99_us)}"
              f"{ratio(floor.ops_s, row.ops_s)}")


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
          "agent / toolset);\nreserve usd(0.05), commit usd(0.031); floor = threading.Lock "
          "and one dict ledger per scope (check room + hold; release + charge);\n"
          "×f = cost ÷ the floor's for the same operation\n")
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

    target, floor = (next(r for r in rows if r.op == op and r.depth == TARGET_DEPTH
                          and r.threads == 1) for op in (TARGET_OP, FLOOR_OF[TARGET_OP]))
    times = target.p50_us / floor.p50_us
    verdict = "PASS" if times <= TARGET_RATIO else "MISS"
    print(f"\ntarget {TARGET_OP} p50 ≤ {TARGET_RATIO:.0f}× the floor pair at depth "
          f"{TARGET_DEPTH}, 1 thread: {target.p50_us:.2f} µs ÷ {floor.p50_us:.2f} µs = "
          f"{times:.1f}× → {verdict} (informational)")
    print(f"elapsed {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f} at "
          f"the end")
    broken = [c for c in checks if not c.ok]
    if broken:
        print(f"LEDGER CHECK FAILED on {len(broken)} ledger(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
