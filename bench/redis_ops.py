"""The Redis store under load: latency, server-side script cost, throughput, scale and memory.

    .venv/bin/python bench/redis_ops.py            # full run (about four minutes)
    .venv/bin/python bench/redis_ops.py --quick    # under a minute, smaller sizes

Starts its own redis-server (no persistence, a free loopback port) and drives it through
`al.Guard(RedisStore(url=...))`. Every figure sits next to a baseline measured in the same run
on the same server and client: a trivial script `return 1` called with EVALSHA.

1. Sequential latency and script cost at scope depth 1, 3 and 6 (a USD budget on each of
   tenant / workspace / app / workflow / agent / toolset): interleaved rounds of trivial,
   reserve and commit phases through the guard, each timed per call (and the FCALL inside
   it) and bracketed by CONFIG RESETSTAT and INFO commandstats / latencystats; then the same
   operations as raw script calls (the store's payloads built first, then sent one after
   another), the server-side cost the targets are judged on, with the commands each script
   ran inside it. The depths take turns round by round (ABC, then CBA), so the figure per
   extra scope compares depths measured at the same moments.
   Beside them, a trivial FCALL round trip and reserve through a store with batching off:
   the sequential reserve (batching on, the default) is judged against the trivial FCALL,
   and must not be slower than with batching off (nothing waits when idle).
2. Throughput: 32 clients (processes × threads, multiprocessing 'spawn') doing reserve+commit
   pairs for a fixed time on one shared budget, on 100 tenants (each pair the next in turn)
   and on one tenant per client, each with natural batching (the default) and with one
   script call per operation ("1call"), against the same clients doing trivial pairs (two
   EVALSHA `return 1`), in ABC(CBA) order; client and server CPU per pair, and the average
   batch (operations per FCALL).
3. Scale: reserve+commit pairs on random tenants among 10, 1,000 and 100,000 (budgets
   pipelined through the store's own script calls), through the guard and as raw script
   calls; bytes per tenant, per active and per finished reservation (INFO memory
   used_memory deltas), and MEMORY USAGE of the reservations' own hashes.

The machine this runs on is shared and noisy: read the ratios to the baselines, and the
latencystats p50 next to the mean usec_per_call (a preempted server inflates the mean).
Targets (DESIGN.md §10) are printed as PASS/MISS for information. The exit status is 1 only
if a ledger check fails: on every ledger allocated == remaining + reserved + spent + debt,
nothing left reserved, and spent == Σ commits × the committed amount.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis

import allotment as al
from allotment.budgets import set_budget_op
from allotment.reservation import commit_op
from allotment.stores import operations as ops
from allotment.stores.redis import TENANTS_KEY, RedisStore

LEVELS = ("tenant", "workspace", "app", "workflow", "agent", "toolset")
NAMES = ("", "production", "assistant", "document-analysis", "analyzer", "web")
DEPTHS = (1, 3, 6)
CONC_DEPTH = 3  # scope depth of the throughput and scale runs
WORKLOADS = ("shared", "many", "isolated")
"""Throughput: one tenant all clients share, 100 tenants each pair picks in turn, one tenant
per client; each with batching on and, as PHASE + ONE_CALL, one script call per operation."""
MANY = 100
ONE_CALL = " 1call"
BUDGET_USD = 10_000_000  # never exhausted: every call is allowed
ESTIMATE = al.usd("0.05")
ACTUAL = al.usd("0.031")
ACTION = al.Action("llm.completion", "openai:gpt-4o")
TTL_MS = 3_600_000  # reservations held across phases never expire mid-run
TRIVIAL_LUA = "return 1"
TRIVIAL_FUNCTION = ("#!lua name=bench_trivial\n"
                    "redis.register_function('bench_trivial', function() return 1 end)")
"""The trivial FCALL round trip the sequential reserve is judged against (batching must add
no latency when idle)."""
SCRIPT_CALLS = ("evalsha", "fcall")
"""How a script runs: the trivial baseline by EVALSHA, the store's operations by FCALL."""
OUTER_COMMANDS = {"call", "evalsha", "fcall", "function|load", "eval", "info",
                  "config|resetstat", "script|load", "sadd", "ping", "client|setinfo", "hello",
                  "memory|usage", "memory|stats", "script|exists"}
"""Commands the benchmark sends itself; every other command in the stats ran inside a script."""


@dataclass(frozen=True)
class Settings:
    """How much of each section to run."""

    seq_rounds: int  # measured rounds per depth (after one warm-up round)
    seq_calls: int  # calls per phase and round
    conc_seconds: float  # length of one throughput phase
    conc_rounds: int  # 1: trivial, shared, isolated; 2: and back again (ABCCBA)
    scale_sizes: tuple[int, ...]
    scale_rounds: int
    scale_calls: int  # pairs (and trivial pairs) per phase and round
    mem_reservations: int


FULL = Settings(seq_rounds=12, seq_calls=300, conc_seconds=5.0, conc_rounds=2,
                scale_sizes=(10, 1_000, 100_000), scale_rounds=6, scale_calls=400,
                mem_reservations=10_000)
QUICK = Settings(seq_rounds=4, seq_calls=150, conc_seconds=2.0, conc_rounds=1,
                 scale_sizes=(10, 1_000, 10_000), scale_rounds=3, scale_calls=200,
                 mem_reservations=2_000)


# -- the server and its statistics ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def started_redis(*, before: Sequence[str] = (), options: Sequence[str] = (),
                  timeout_s: float = 10) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A private redis-server (no RDB, no AOF) on a free loopback port, run under `before`
    (e.g. valgrind) with extra `options`; yields its URL and process once it answers PING."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        process = subprocess.Popen(
            [*before, binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", scratch, *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise
                    time.sleep(0.02)
            client.close()
            yield url, process
        finally:
            process.terminate()
            process.wait(timeout=timeout_s)


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port; yields its URL."""
    with started_redis() as (url, _):
        yield url


@dataclass
class Tally:
    """Server-side command statistics summed over the phases of one kind, and the EVALSHA
    median of each phase (INFO latencystats p50: robust to the server being preempted)."""

    calls: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)
    p50s: list[float] = field(default_factory=list)

    def add(self, stats: Stats) -> None:
        for name, (calls, usec) in stats.commands.items():
            self.calls[name] = self.calls.get(name, 0) + calls
            self.usec[name] = self.usec.get(name, 0) + usec
        if stats.p50 is not None:
            self.p50s.append(stats.p50)

    def per_call(self, name: str = "call") -> float:
        """Mean server µs per call of `name` (usec_per_call over all phases)."""
        calls = self.calls.get(name, 0)
        return self.usec.get(name, 0) / calls if calls else math.nan

    def p50(self) -> float:
        """Median over the phases of the script call p50 (µs)."""
        return statistics.median(self.p50s) if self.p50s else math.nan

    def inner(self) -> dict[str, tuple[float, float]]:
        """Per script call: how many of each inner command ran and their µs (nested in it)."""
        scripts = self.calls.get("call", 0) or 1
        return {name: (self.calls[name] / scripts, self.usec[name] / scripts)
                for name in sorted(self.calls, key=lambda n: -self.usec[n])
                if name not in OUTER_COMMANDS}


def reset_stats(client: redis.Redis) -> None:
    client.config_resetstat()


@dataclass
class Stats:
    """One phase: (calls, usec) per command since CONFIG RESETSTAT, and the EVALSHA p50."""

    commands: dict[str, tuple[int, int]]
    p50: float | None


def read_stats(client: redis.Redis) -> Stats:
    """The phase's commands, plus "call": its script calls (EVALSHA or FCALL, whichever it
    made; a phase makes one kind) with the latencystats p50 of that kind."""
    info = client.info("commandstats")
    commands = {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for name, v in info.items()}
    kind = max(SCRIPT_CALLS, key=lambda name: commands.get(name, (0, 0))[0])
    commands["call"] = tuple(sum(commands.get(name, (0, 0))[i] for name in SCRIPT_CALLS)
                             for i in (0, 1))  # type: ignore[assignment]
    latency = client.info("latencystats").get(f"latency_percentiles_usec_{kind}")
    return Stats(commands, float(latency["p50"]) if isinstance(latency, dict) else None)


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


# -- budgets, pipelining and the ledger check -----------------------------------------------


def subject_of(tenant: str, depth: int) -> al.Subject:
    fields = {LEVELS[0]: tenant}
    fields.update({LEVELS[i]: NAMES[i] for i in range(1, depth)})
    return al.Subject(**fields)


def set_budgets(guard: al.Guard, subject: al.Subject) -> None:
    for scope in subject.scopes():
        guard.set_budget(scope, usd=BUDGET_USD)


def pipelined(store: RedisStore, batch: Sequence[ops.Op[Any]]) -> list[Any]:
    """Run operations through the store's own op → script mapping, in one pipeline (the
    store has no public batch call; this is what `store.execute` does, minus the round
    trips). Tenants of admin ops must already be in `store._flows.known` (see `populate`)."""
    store.load_library()  # a pipeline cannot load it on a miss, as single calls do
    pipe = store.client.pipeline(transaction=False)
    for op in batch:
        pipe.execute_command(*store._flows.call(op).command)
    raws = pipe.execute()
    return [store._flows.result(op, raw) for op, raw in zip(batch, raws, strict=True)]


def populate(store: RedisStore, guard: al.Guard, tenants: Sequence[str], depth: int,
             batch: int = 1_500) -> None:
    """The equivalent of guard.set_budget on each scope of each tenant, pipelined."""
    for start in range(0, len(tenants), batch):
        chunk = tenants[start:start + batch]
        store.client.sadd(TENANTS_KEY, *chunk)
        store._flows.known.update(chunk)  # what the store's first call per tenant would do
        budget_ops: list[ops.Op[Any]] = [
            set_budget_op(scope, usd=BUDGET_USD)
            for tenant in chunk for scope in subject_of(tenant, depth).scopes()]
        pipelined(store, budget_ops)


@dataclass
class LedgerReport:
    """Ledgers checked and the first few that were wrong."""

    ledgers: int = 0
    broken: list[str] = field(default_factory=list)

    def merge(self, other: LedgerReport) -> None:
        self.ledgers += other.ledgers
        self.broken += other.broken


def check_ledgers(store: RedisStore, commits: dict[str, int], depth: int) -> LedgerReport:
    """Every ledger of each tenant: the identity holds, nothing reserved, no debt, and spent
    == the tenant's commits × ACTUAL (each commit charges every scope of the subject)."""
    report = LedgerReport()
    tenants = sorted(commits)
    for start in range(0, len(tenants), 500):
        chunk = tenants[start:start + 500]
        found = pipelined(store, [ops.Balances(tenant=t, scope=f"tenant:{t}") for t in chunk])
        for tenant, balances in zip(chunk, found, strict=True):
            expected = commits[tenant] * ACTUAL.amount
            if len(balances) != depth:
                report.broken.append(f"{tenant}: {len(balances)} ledgers, expected {depth}")
            for b in balances:
                report.ledgers += 1
                if not (b.allocated == b.remaining + b.reserved + b.spent + b.debt
                        and b.reserved == 0 and b.debt == 0 and b.spent == expected
                        and b.allocated == BUDGET_USD * 10**8):
                    report.broken.append(
                        f"{b.scope}: allocated {b.allocated} remaining {b.remaining} reserved "
                        f"{b.reserved} spent {b.spent} (expected {expected}) debt {b.debt}")
    return report


# -- helpers for timing ---------------------------------------------------------------------


def percentile(samples: Sequence[int | float], q: float) -> float:
    """Nearest-rank percentile (of unsorted samples)."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def us(ns: float) -> float:
    return ns / 1e3


def timed(call: Callable[[int], object], count: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        call(i)
        out.append(clock() - start)


class TimedCalls:
    """Stands in for the store's sync step: records the time of each reserve and commit
    function call (request out, script run, reply back: no payload building, no reply
    parsing), by phase."""

    def __init__(self, store: RedisStore) -> None:
        self.step = store._step
        names = store._flows.names
        self.phases = {names["reserve"]: "reserve", names["settle"]: "commit"}
        self.samples: dict[str, list[int]] = {"reserve": [], "commit": []}
        store._step = self  # type: ignore[method-assign]

    def __call__(self, step: Any) -> Any:
        start = time.perf_counter_ns()
        reply = self.step(step)
        phase = self.phases.get(getattr(step, "function", None))
        if phase is not None:
            self.samples[phase].append(time.perf_counter_ns() - start)
        return reply


def trivial_raw(client: redis.Redis, trivial: Any, count: int) -> Stats:
    """`count` trivial EVALSHA one after another, nothing done between them."""
    reset_stats(client)
    for _ in range(count):
        trivial()
    return read_stats(client)


def script_call(store: RedisStore, op: ops.Op[Any]) -> tuple[str, list[str], list[Any]]:
    """The store's own script call for `op`: the function's name, its keys and arguments."""
    call = store._flows.call(op)
    return call.function, call.keys, call.args


def raw_calls(store: RedisStore, batch: Sequence[ops.Op[Any]]) -> tuple[list[Any], Stats]:
    """The store's own EVALSHA calls for `batch`: payloads built first, then the calls one
    after another with nothing between them, then the replies parsed. Returns the results
    and the server statistics of the calls alone."""
    calls = [store._flows.call(op) for op in batch]
    reset_stats(store.client)
    raws = [store._step(call) for call in calls]
    stats = read_stats(store.client)
    return [store._flows.result(op, raw) for op, raw in zip(batch, raws, strict=True)], stats


def pairs_raw(store: RedisStore, guard: al.Guard,
              subjects: Sequence[al.Subject]) -> tuple[Stats, Stats]:
    """Reserve on each subject, then commit each reservation, through `raw_calls`: the
    script cost without the guard's Python work (and idle server) between calls."""
    reserve_ops = [guard._reserve_op(s, ACTION, ESTIMATE) for s in subjects]
    outcomes, reserved = raw_calls(store, reserve_ops)
    _, committed = raw_calls(store, [commit_op(outcome.reservation.id, ACTUAL)
                                     for outcome in outcomes])
    return reserved, committed


# -- 1. sequential latency and script cost by depth -----------------------------------------


@dataclass
class DepthResult:
    """One depth: client latencies (ns samples) and server statistics per phase."""

    depth: int
    latency: dict[str, list[int]]  # trivial, reserve, commit (whole call)
    wire: dict[str, list[int]]  # reserve, commit: the EVALSHA alone
    server: dict[str, Tally]  # the sequential guard calls above, as the server saw them
    raw: dict[str, Tally]  # the same operations as raw script calls (pairs_raw)
    ledgers: LedgerReport
    idle: dict[str, list[int]] = field(default_factory=dict)
    """Whole calls (ns): a trivial FCALL, and reserve through a store with batching off."""


PHASES = ("trivial", "reserve", "commit")


class DepthRun:
    """One depth's tenant, guard and tallies; `round` runs its trivial, reserve and commit
    phases and then the raw script calls once. Rounds of all depths are interleaved (see
    run_depths), so the per-scope figure compares depths measured minutes apart at most."""

    def __init__(self, url: str, depth: int) -> None:
        self.depth = depth
        self.store = RedisStore(url=url)
        self.guard = al.Guard(self.store, ttl_ms=TTL_MS)
        self.subject = subject_of(f"seq-d{depth}", depth)
        set_budgets(self.guard, self.subject)
        self.trivial = self.store.client.register_script(TRIVIAL_LUA)
        self.timer = TimedCalls(self.store)
        self.latency: dict[str, list[int]] = {p: [] for p in PHASES}
        self.wire: dict[str, list[int]] = {"reserve": [], "commit": []}
        self.server = {p: Tally() for p in PHASES}
        self.raw = {p: Tally() for p in PHASES}
        self.held: list[al.Reservation] = []
        self.commits = 0
        self.store.client.function_load(TRIVIAL_FUNCTION, replace=True)
        self.plain = al.Guard(RedisStore(url=url, batching=False), ttl_ms=TTL_MS)
        self.idle: dict[str, list[int]] = {"fcall": [], "reserve, batching off": []}

    def call(self, phase: str, i: int) -> None:
        if phase == "trivial":
            self.trivial()
        elif phase == "reserve":
            self.held.append(self.guard.reserve(self.subject, ACTION, ESTIMATE))
        else:
            self.held[i].commit(ACTUAL)

    def round(self, measured: bool, calls: int) -> None:
        """One round; an unmeasured one warms up (script load, connection, caches)."""
        client = self.store.client
        for phase in PHASES:
            samples: list[int] = []
            for samples_of_phase in self.timer.samples.values():
                samples_of_phase.clear()
            reset_stats(client)
            timed(partial(self.call, phase), calls, samples)
            stats = read_stats(client)
            if measured:
                self.latency[phase] += samples
                self.server[phase].add(stats)
                if phase in self.timer.samples:
                    self.wire[phase] += self.timer.samples[phase]
        self.commits += len(self.held)
        self.held.clear()
        fcall: list[int] = []
        timed(lambda i: client.fcall("bench_trivial", 0), calls, fcall)
        plain: list[int] = []
        timed(lambda i: self.held.append(self.plain.reserve(self.subject, ACTION, ESTIMATE)),
              calls, plain)
        for reservation in self.held:
            reservation.commit(ACTUAL)
        self.commits += len(self.held)
        self.held.clear()
        if measured:
            self.idle["fcall"] += fcall
            self.idle["reserve, batching off"] += plain
        trivial_stats = trivial_raw(client, self.trivial, calls)
        reserved, committed = pairs_raw(self.store, self.guard, [self.subject] * calls)
        self.commits += calls
        if measured:
            self.raw["trivial"].add(trivial_stats)
            self.raw["reserve"].add(reserved)
            self.raw["commit"].add(committed)

    def result(self) -> DepthResult:
        ledgers = check_ledgers(self.store, {self.subject.tenant: self.commits}, self.depth)
        self.guard.close()
        self.plain.close()
        return DepthResult(self.depth, self.latency, self.wire, self.server, self.raw, ledgers,
                           self.idle)


def run_depths(url: str, settings: Settings) -> list[DepthResult]:
    """Rounds of every depth in turn, in ABC then CBA order, after one warm-up round each."""
    runs = [DepthRun(url, depth) for depth in DEPTHS]
    for r in range(1 + settings.seq_rounds):
        for run in runs if r % 2 == 0 else runs[::-1]:
            run.round(r > 0, settings.seq_calls)
    return [run.result() for run in runs]


def print_depths(results: list[DepthResult]) -> None:
    print("1a. Sequential guard calls, one client. Client side (µs): the whole call (p50, p99), "
          "the script call\n    round trip inside it (p50, FCALL), python = the rest (payload, "
          "reply parsing, the guard).\n    Server side (µs) of the same calls: commandstats "
          "usec_per_call (mean), latencystats p50.\n    ×t = multiple of the trivial EVALSHA "
          "measured in the same rounds.")
    print(f"{'depth':>5} {'op':<8}{'p50':>8}{'p99':>8}{'p50 ×t':>7}{'call':>8}{'python':>7}"
          f"{'srv mean':>9}{'×t':>6}{'srv p50':>8}{'×t':>6}")
    for res in results:
        t50 = percentile(res.latency["trivial"], 0.5)
        tmean, tp50 = res.server["trivial"].per_call(), res.server["trivial"].p50()
        print(f"{res.depth:>5} {'trivial':<8}{us(t50):>8.1f}"
              f"{us(percentile(res.latency['trivial'], 0.99)):>8.1f}{1:>7.2f}{us(t50):>8.1f}"
              f"{0:>7.1f}{tmean:>9.2f}{1:>6.1f}{tp50:>8.2f}{1:>6.1f}")
        for op in ("reserve", "commit"):
            p50, p99 = percentile(res.latency[op], 0.5), percentile(res.latency[op], 0.99)
            w50 = percentile(res.wire[op], 0.5)
            mean, sp50 = res.server[op].per_call(), res.server[op].p50()
            print(f"{res.depth:>5} {op:<8}{us(p50):>8.1f}{us(p99):>8.1f}{p50 / t50:>7.2f}"
                  f"{us(w50):>8.1f}{us(p50 - w50):>7.1f}{mean:>9.1f}{mean / tmean:>6.1f}"
                  f"{sp50:>8.1f}{sp50 / tp50:>6.1f}")
    print("\n1b. Server-side script cost of the same operations as raw script calls: the store's "
          "own FCALL\n    payloads built first, then sent one after another (no guard work "
          "between calls, during which\n    other jobs evict the idle server's caches). "
          "usec_per_call (mean) and latencystats p50 in µs;\n    /scope = (cost@6 − cost@1) / 5")
    print(f"{'op':<9}" + "".join(f"{'d' + str(r.depth) + ' mean':>9}{'×t':>6}{'p50':>7}{'×t':>6}"
                                  for r in results) + f"{'/scope':>8}{'p50':>6}")
    by_depth = {r.depth: r for r in results}
    for op in ("trivial", "reserve", "commit"):
        line = f"{op:<9}"
        for r in results:
            t = r.raw["trivial"]
            line += (f"{r.raw[op].per_call():>9.1f}{r.raw[op].per_call() / t.per_call():>6.1f}"
                     f"{r.raw[op].p50():>7.1f}{r.raw[op].p50() / t.p50():>6.1f}")
        if 1 in by_depth and 6 in by_depth:
            first, last = by_depth[1].raw[op], by_depth[6].raw[op]
            line += (f"{(last.per_call() - first.per_call()) / 5:>8.1f}"
                     f"{(last.p50() - first.p50()) / 5:>6.1f}")
        print(line)


def print_breakdown(res: DepthResult) -> None:
    """What the scripts spend their server time on, from the commands they ran."""
    print(f"\n    Inside the scripts at depth {res.depth}, raw calls (per call: count × µs of "
          "each command it ran;\n    the rest of its time is Lua itself)")
    for op in ("reserve", "commit"):
        tally = res.raw[op]
        total = tally.per_call()
        inner = tally.inner()
        spent = sum(u for _, u in inner.values())
        parts = ", ".join(f"{name} {n:.0f}×{u / n:.1f}" for name, (n, u) in inner.items()
                          if u >= 0.05)
        print(f"    {op:<8}{total:6.1f} µs = commands {spent:5.1f} ({parts})\n"
              f"{'':>12}+ Lua {total - spent:5.1f} (decoding arguments, definitions and "
              "ledgers,\n"
              f"{'':>20}building the audit record, the reservation and the reply, the "
              "interpreter)")


# -- 2. throughput over processes and threads -----------------------------------------------


def client_process(url: str, proc: int, threads: int, commands: Any, results: Any) -> None:
    """One process of the throughput run: `threads` clients sharing one guard (one redis-py
    connection pool); runs each phase it is sent and reports per-thread figures."""
    store = RedisStore(url=url)
    guard = al.Guard(store, ttl_ms=TTL_MS)
    plain = al.Guard(RedisStore(url=url, batching=False), ttl_ms=TTL_MS)
    trivial = store.client.register_script(TRIVIAL_LUA)
    shared = subject_of("shared", CONC_DEPTH)
    isolated = [subject_of(f"iso-{proc * threads + t}", CONC_DEPTH) for t in range(threads)]
    many = [subject_of(f"many-{i}", CONC_DEPTH) for i in range(MANY)]
    results.put(("ready", proc))
    while True:
        command = commands.get()
        if command is None:
            break
        phase, start_at, end_at = command
        outs: list[dict[str, Any]] = [{"lat": [], "commits": {}, "errors": 0, "error": ""}
                                      for _ in range(threads)]

        def work(t: int, phase: str = phase, start_at: float = start_at,
                 end_at: float = end_at, outs: list[dict[str, Any]] = outs) -> None:
            out = outs[t]
            workload, off, _ = phase.partition(ONE_CALL)
            subjects = {"trivial": None, "shared": shared, "isolated": isolated[t],
                        "many": None, "warm": isolated[t] if t % 2 else shared}
            subject = subjects[workload]
            on = plain if off else guard
            commits: dict[str, int] = {}
            turn = proc * threads + t
            time.sleep(max(0.0, start_at - time.time()))
            end_ns = time.perf_counter_ns() + int((end_at - time.time()) * 1e9)
            clock = time.perf_counter_ns
            lat, done = out["lat"], 0
            while True:
                started = clock()
                if started >= end_ns:
                    break
                try:
                    if workload == "trivial":
                        trivial()
                        trivial()
                    else:
                        which = subject or many[(turn + done * 7) % MANY]
                        on.reserve(which, ACTION, ESTIMATE).commit(ACTUAL)
                        done += 1
                        commits[which.tenant] = commits.get(which.tenant, 0) + 1
                except Exception as error:  # counted and shown; the ledger check decides
                    out["errors"] += 1
                    out["error"] = repr(error)
                lat.append(clock() - started)
            out["commits"] = commits

        cpu = time.process_time()
        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        results.put(("done", proc, phase, outs, time.process_time() - cpu))


@dataclass
class ConcPhase:
    """One timed phase of the throughput run, all clients together."""

    name: str
    seconds: float
    pairs: int
    latency: list[int]
    errors: int
    error: str
    client_cpu_s: float
    server_cpu_s: float
    server: Tally

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


def run_throughput(url: str, procs: int, threads: int, settings: Settings,
                   seconds: float) -> tuple[list[ConcPhase], LedgerReport, int]:
    """Spawn the client processes, run the phases, then check every ledger they touched."""
    store = RedisStore(url=url)
    guard = al.Guard(store, ttl_ms=TTL_MS)
    tenants = ["shared", *(f"iso-{i}" for i in range(procs * threads)),
               *(f"many-{i}" for i in range(MANY))]
    for tenant in tenants:
        set_budgets(guard, subject_of(tenant, CONC_DEPTH))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    queues = [ctx.Queue() for _ in range(procs)]
    workers = [ctx.Process(target=client_process, args=(url, p, threads, queues[p], results),
                           daemon=True) for p in range(procs)]
    for worker in workers:
        worker.start()
    for _ in workers:
        results.get(timeout=120)
    order = ["trivial", *(w + way for w in WORKLOADS for way in ("", ONE_CALL))]
    if settings.conc_rounds > 1:
        order += order[::-1]
    phases: list[ConcPhase] = []
    commits: dict[str, int] = dict.fromkeys(tenants, 0)
    try:
        for name in ["warm", *order]:
            length = 1.0 if name == "warm" else seconds
            start_at = time.time() + 0.3
            end_at = start_at + length
            for q in queues:
                q.put((name, start_at, end_at))
            time.sleep(max(0.0, start_at - 0.1 - time.time()))
            reset_stats(store.client)
            cpu0 = server_cpu(store.client)
            time.sleep(max(0.0, end_at - time.time()))
            cpu1 = server_cpu(store.client)
            stats = read_stats(store.client)
            latency: list[int] = []
            errors, error, client_cpu, pairs = 0, "", 0.0, 0
            for _ in workers:
                _, _, _, outs, cpu = results.get(timeout=length + 120)
                client_cpu += cpu
                for out in outs:
                    latency += out["lat"]
                    pairs += len(out["lat"])
                    errors += out["errors"]
                    error = error or out["error"]
                    for tenant, n in out["commits"].items():
                        commits[tenant] += n
            tally = Tally()
            tally.add(stats)
            if name != "warm":
                phases.append(ConcPhase(name, length, pairs, latency, errors, error,
                                        client_cpu, cpu1 - cpu0, tally))
    finally:
        for q in queues:
            q.put(None)
        for worker in workers:
            worker.join(timeout=30)
    ledgers = check_ledgers(store, commits, CONC_DEPTH)
    guard.close()
    return phases, ledgers, sum(commits.values())


def merged(phases: list[ConcPhase], name: str) -> ConcPhase:
    """All phases of one kind as one (rates over their summed time)."""
    same = [p for p in phases if p.name == name]
    tally = Tally()
    for p in same:
        tally.add(Stats({k: (p.server.calls[k], p.server.usec[k]) for k in p.server.calls},
                        p.server.p50()))
    return ConcPhase(name, sum(p.seconds for p in same), sum(p.pairs for p in same),
                     [v for p in same for v in p.latency], sum(p.errors for p in same),
                     next((p.error for p in same if p.error), ""),
                     sum(p.client_cpu_s for p in same), sum(p.server_cpu_s for p in same),
                     tally)


def print_throughput(phases: list[ConcPhase], procs: int, threads: int) -> None:
    print(f"\n2. Throughput: {procs * threads} clients = {procs} processes × {threads} threads, "
          f"depth {CONC_DEPTH}; a pair = reserve+commit (or two trivial EVALSHA)")
    print("   each phase in run order:  " + ", ".join(
        f"{p.name} {p.rate:,.0f}/s" for p in phases))
    print(f"{'phase':<15}{'pairs/s':>9}{'×trivial':>9}{'×1call':>7}{'batch':>6}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'errors':>7}{'client cpu':>11}{'×t':>6}{'server cpu':>11}{'srv mean':>9}"
          f"{'p50':>6}")
    base = merged(phases, "trivial")
    names = ["trivial", *(w + way for w in WORKLOADS for way in ("", ONE_CALL))]
    for name in names:
        p = merged(phases, name)
        versus = ("" if name == "trivial" or name.endswith(ONE_CALL)
                  else f"{p.rate / merged(phases, name + ONE_CALL).rate:.2f}")
        fcalls = p.server.calls.get("fcall", 0)
        size = f"{2 * p.pairs / fcalls:.2f}" if fcalls and name != "trivial" else ""
        print(f"{name:<15}{p.rate:>9,.0f}{p.rate / base.rate:>9.2f}{versus:>7}{size:>6}"
              f"{percentile(p.latency, 0.5) / 1e6:>8.2f}{percentile(p.latency, 0.99) / 1e6:>8.2f}"
              f"{p.errors:>7}{p.client_cpu_s / p.pairs * 1e6:>9.0f}µs"
              f"{p.client_cpu_s / p.pairs / (base.client_cpu_s / base.pairs):>6.2f}"
              f"{p.server_cpu_s / p.pairs * 1e6:>9.0f}µs{p.server.per_call():>9.1f}"
              f"{p.server.p50():>6.1f}")
        if p.error:
            print(f"   first error: {p.error}")
    print("   client cpu / server cpu = CPU time per pair of all client processes / of "
          "redis-server (the\n   machine has", os.cpu_count(), "cores for both, and other jobs); "
          "×t = client cpu ÷ the trivial pair's; "
          "srv = server µs per script call (usec_per_call, p50); ×1call = pairs/s with "
          "batching\n   over the same clients making one script call per operation; batch = "
          "operations per FCALL (2 × pairs / FCALLs)")


# -- 3. scale and memory ---------------------------------------------------------------------


@dataclass
class ScaleRow:
    """Pairs on random tenants among `tenants`, next to trivial pairs in the same rounds."""

    tenants: int
    added: int  # tenants populated for this row
    populate_s: float
    bytes_per_tenant: float
    pair: list[int]  # guard reserve+commit, client side (ns)
    trivial: list[int]  # two trivial EVALSHA, client side (ns)
    reserve: Tally = field(default_factory=Tally)  # raw script calls (pairs_raw)
    commit: Tally = field(default_factory=Tally)
    raw_trivial: Tally = field(default_factory=Tally)

    def server_pair(self) -> float:
        """Server µs per reserve+commit pair, usec_per_call (mean) of each."""
        return self.reserve.per_call() + self.commit.per_call()

    def server_pair_p50(self) -> float:
        return self.reserve.p50() + self.commit.p50()


@dataclass
class Memory:
    tenants: int
    reservations: int
    active_bytes: float
    finished_bytes: float
    active_key_bytes: float
    finished_key_bytes: float
    audit_bytes: float


def trivial_pair(trivial: Any) -> Callable[[int], None]:
    def call(i: int) -> None:
        trivial()
        trivial()

    return call


def guard_pair(guard: al.Guard, subjects: Sequence[al.Subject]) -> Callable[[int], None]:
    def call(i: int) -> None:
        guard.reserve(subjects[i], ACTION, ESTIMATE).commit(ACTUAL)

    return call


def run_scale(url: str, settings: Settings) -> tuple[list[ScaleRow], Memory, LedgerReport]:
    """Grow the tenant count through `scale_sizes`, measuring at each size; then memory."""
    store = RedisStore(url=url)
    guard = al.Guard(store, ttl_ms=TTL_MS)
    client = store.client
    trivial = client.register_script(TRIVIAL_LUA)
    rng = random.Random(7)
    commits: dict[str, int] = {}
    rows: list[ScaleRow] = []
    have = 0
    for size in settings.scale_sizes:
        names = [f"s{i}" for i in range(have, size)]
        before, started = used_memory(client), time.perf_counter()
        populate(store, guard, names, CONC_DEPTH)
        populate_s = time.perf_counter() - started
        per_tenant = (used_memory(client) - before) / max(1, len(names))
        have = size
        row = ScaleRow(size, len(names), populate_s, per_tenant, [], [])
        for r in range(1 + settings.scale_rounds):
            subjects = [subject_of(f"s{rng.randrange(size)}", CONC_DEPTH)
                        for _ in range(settings.scale_calls)]
            others = [subject_of(f"s{rng.randrange(size)}", CONC_DEPTH)
                      for _ in range(settings.scale_calls)]
            trivial_samples: list[int] = []
            pair_samples: list[int] = []
            timed(trivial_pair(trivial), settings.scale_calls, trivial_samples)
            timed(guard_pair(guard, subjects), settings.scale_calls, pair_samples)
            raw_trivial = trivial_raw(client, trivial, settings.scale_calls)
            reserved, committed = pairs_raw(store, guard, others)
            for s in [*subjects, *others]:
                commits[s.tenant] = commits.get(s.tenant, 0) + 1
            if r > 0:
                row.trivial += trivial_samples
                row.pair += pair_samples
                row.raw_trivial.add(raw_trivial)
                row.reserve.add(reserved)
                row.commit.add(committed)
        rows.append(row)
    memory = measure_memory(store, guard, min(1_000, have), settings.mem_reservations,
                            commits, rng)
    ledgers = check_ledgers(store, commits, CONC_DEPTH)
    # tenants never reserved on must be untouched: sample a few
    untouched = [f"s{i}" for i in rng.sample(range(have), min(have, 300))
                 if f"s{i}" not in commits]
    ledgers.merge(check_ledgers(store, dict.fromkeys(untouched, 0), CONC_DEPTH))
    guard.close()
    return rows, memory, ledgers


def measure_memory(store: RedisStore, guard: al.Guard, tenants: int, count: int,
                   commits: dict[str, int], rng: random.Random) -> Memory:
    """used_memory growth per active reservation, then per finished one (committed, kept
    for the retention period with its audit records), on tenants already in use today."""
    client = store.client
    subjects = [subject_of(f"s{rng.randrange(tenants)}", CONC_DEPTH) for _ in range(count)]
    audit_keys = [f"al:{{{s.tenant}}}:audit" for s in subjects[:50]]
    audit0 = sum(int(client.memory_usage(k) or 0) for k in audit_keys)
    before = used_memory(client)
    held = [guard.reserve(s, ACTION, ESTIMATE) for s in subjects]
    active = used_memory(client)
    sample = held[:200]

    def hash_bytes() -> float:
        return sum(int(client.memory_usage(f"al:{{{r.info.tenant}}}:r:{r.id}", samples=0)
                       or 0) for r in sample) / len(sample)

    active_key_bytes = hash_bytes()
    for reservation in held:
        reservation.commit(ACTUAL)
    finished = used_memory(client)
    for s in subjects:
        commits[s.tenant] = commits.get(s.tenant, 0) + 1
    finished_key_bytes = hash_bytes()
    audit1 = sum(int(client.memory_usage(k) or 0) for k in audit_keys)
    per_res = sum(1 for s in subjects if f"al:{{{s.tenant}}}:audit" in audit_keys)
    return Memory(tenants, count, (active - before) / count, (finished - before) / count,
                  active_key_bytes, finished_key_bytes, (audit1 - audit0) / max(1, per_res))


def print_scale(rows: list[ScaleRow], memory: Memory) -> None:
    print(f"\n3. Scale: reserve+commit pairs on random tenants (depth {CONC_DEPTH}, one client); "
          "×10t = multiple of\n   the 10-tenant row. Client: guard pairs vs two trivial "
          "EVALSHA (p50 µs). Server: the store's\n   raw script calls, µs per pair "
          "(usec_per_call mean, latencystats p50), vs a trivial call.")
    print(f"{'tenants':>8}{'fill s':>7}{'B/tenant':>9}{'pair':>8}{'trivial':>8}{'×triv':>6}"
          f"{'norm ×10t':>10}{'srv mean':>9}{'srv p50':>8}{'triv':>6}{'mean ×10t':>10}"
          f"{'p50 ×10t':>9}")
    first = rows[0]
    f50 = percentile(first.pair, 0.5) / percentile(first.trivial, 0.5)
    for row in rows:
        p50, t50 = percentile(row.pair, 0.5), percentile(row.trivial, 0.5)
        per_tenant = f"{row.bytes_per_tenant:,.0f}" if row.added >= 100 else "-"
        print(f"{row.tenants:>8,}{row.populate_s:>7.1f}{per_tenant:>9}"
              f"{us(p50):>8.1f}{us(t50):>8.1f}{p50 / t50:>6.2f}{p50 / t50 / f50:>10.2f}"
              f"{row.server_pair():>9.1f}{row.server_pair_p50():>8.1f}"
              f"{row.raw_trivial.per_call():>6.1f}{row.server_pair() / first.server_pair():>10.2f}"
              f"{row.server_pair_p50() / first.server_pair_p50():>9.2f}")
    print("   norm ×10t = (pair ÷ trivial) ÷ the same at 10 tenants; fill s = seconds to add "
          "that row's tenants;\n   B/tenant = used_memory growth per tenant added (3 budgets: "
          "definitions, ledgers, audit stream, index;\n   '-' when fewer than 100 were "
          "added)")
    print(f"   memory, {memory.reservations:,} reservations on {memory.tenants:,} tenants already "
          f"in use: {memory.active_bytes:,.0f} B per active reservation, "
          f"{memory.finished_bytes:,.0f} B per\n   finished one (used_memory growth, noisy). "
          f"The reservation's hash (MEMORY USAGE): "
          f"{memory.active_key_bytes:,.0f} B active,\n   {memory.finished_key_bytes:,.0f} B "
          f"finished (kept 1 day); audit stream ≈ {memory.audit_bytes:,.0f} B per "
          f"reserve+commit, capped per tenant")


# -- targets and main -----------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_targets(depths: list[DepthResult], phases: list[ConcPhase], clients: int,
                  rows: list[ScaleRow], ledgers: LedgerReport) -> None:
    """PASS/MISS per target of DESIGN.md §10; server figures from the raw calls (1b), judged
    on usec_per_call (mean) with the latencystats p50 figure beside it."""
    by_depth = {r.depth: r for r in depths}
    d3 = by_depth[3]
    t50 = percentile(d3.latency["trivial"], 0.5)
    r50 = percentile(d3.latency["reserve"], 0.5)
    lines = [("sequential reserve p50 ≤ 2× trivial EVALSHA (depth 3)", f"{r50 / t50:.2f}×", "",
              r50 / t50 <= 2)]
    if d3.idle.get("fcall"):
        f50 = percentile(d3.idle["fcall"], 0.5)
        p50_off = percentile(d3.idle["reserve, batching off"], 0.5)
        lines += [("sequential reserve p50 ≤ 2× trivial FCALL (depth 3)", f"{r50 / f50:.2f}×",
                   "", r50 / f50 <= 2),
                  ("sequential reserve p50, batching on / off (no wait when idle)",
                   f"{r50 / p50_off:.2f}×", "", r50 / p50_off <= 1.1)]
    for op in ("reserve", "commit"):
        mean = {d: r.raw[op].per_call() for d, r in by_depth.items()}
        p50 = {d: r.raw[op].p50() for d, r in by_depth.items()}
        trivial, trivial50 = d3.raw["trivial"].per_call(), d3.raw["trivial"].p50()
        lines.append((f"server {op} at depth 3 ≤ 25× trivial", f"{mean[3] / trivial:.1f}×",
                      f"{p50[3] / trivial50:.1f}×", mean[3] / trivial <= 25))
        if 1 in mean and 6 in mean:
            step = (mean[6] - mean[1]) / 5
            lines.append((f"server {op}: (cost@6 − cost@1)/5 ≤ 5 µs per scope",
                          f"{step:.1f} µs", f"{(p50[6] - p50[1]) / 5:.1f} µs", step <= 5))
    base = merged(phases, "trivial")
    for name in WORKLOADS:
        p, one = merged(phases, name), merged(phases, name + ONE_CALL)
        lines.append((f"{clients} clients {name}: batching ≥ 2× one call per operation",
                      f"{p.rate / one.rate:.2f}×", "", p.rate >= 2 * one.rate))
        p99 = percentile(p.latency, 0.99) / 1e6
        lines += [(f"{clients} clients {name}: ≥ 50 % of trivial pairs/s",
                   f"{p.rate / base.rate:.0%}", "", p.rate >= 0.5 * base.rate),
                  (f"{clients} clients {name}: ≥ 5,000 pairs/s", f"{p.rate:,.0f}/s", "",
                   p.rate >= 5000),
                  (f"{clients} clients {name}: p99 < 5 ms", f"{p99:.2f} ms", "", p99 < 5)]
    last, first = rows[-1], rows[0]
    scale = last.server_pair() / first.server_pair()
    lines.append((f"server µs per pair at {last.tenants:,} tenants ≤ 1.2× at {first.tenants}",
                  f"{scale:.2f}×", f"{last.server_pair_p50() / first.server_pair_p50():.2f}×",
                  scale <= 1.2))
    print("\nTargets (DESIGN.md §10; informational). Server figures: raw calls (1b), judged on "
          "usec_per_call\n(mean); the latencystats p50 figure is shown beside it.")
    print(f"{'':8}{'target':<56}{'measured':>10}{'p50':>9}")
    for text, value, p50_value, ok in lines:
        print(f"  {verdict(ok)}  {text:<56}{value:>10}{p50_value:>9}")
    state = "PASS" if not ledgers.broken else "FAIL"
    print(f"  {state}  {'zero ledger mismatches (exit status)':<56}"
          f"{len(ledgers.broken):>10} of {ledgers.ledgers:,} ledgers")
    for line in ledgers.broken[:10]:
        print(f"        {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the Redis store of allotment.")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and shorter phases (under a minute)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="length of each throughput phase (default 5, quick 2)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--threads", type=int, default=8,
                        help="client threads per process (default 8)")
    parser.add_argument("--only", choices=("sequential", "throughput"),
                        help="run one section alone (its ledger check decides the exit status)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    seconds = args.seconds if args.seconds is not None else settings.conc_seconds
    started = time.perf_counter()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with redis_server() as url:
        probe = redis.Redis.from_url(url)
        version = probe.info("server")["redis_version"]
        probe.close()
        print(f"allotment Redis store — redis-server {version} (no persistence, loopback), "
              f"redis-py {redis.__version__}, Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
              f"{'quick' if args.quick else 'full'} run")
        print("budgets: one USD budget per derived scope (tenant / workspace / app / workflow "
              "/ agent / toolset);\nreserve usd(0.05), commit usd(0.031); trivial = EVALSHA of "
              f"`{TRIVIAL_LUA}` on the same client\n")
        if args.only == "throughput":
            phases, conc_ledgers, _ = run_throughput(url, args.procs, args.threads, settings,
                                                     seconds)
            print_throughput(phases, args.procs, args.threads)
            print(f"\nledgers: {len(conc_ledgers.broken)} mismatches of "
                  f"{conc_ledgers.ledgers:,}; load {os.getloadavg()[0]:.2f} at the end")
            return 1 if conc_ledgers.broken else 0
        depths = run_depths(url, settings)
        if args.only == "sequential":
            print_depths(depths)
            d3 = {r.depth: r for r in depths}[3]
            r50 = percentile(d3.latency["reserve"], 0.5)
            f50 = percentile(d3.idle["fcall"], 0.5)
            off = percentile(d3.idle["reserve, batching off"], 0.5)
            print(f"\nsequential reserve p50 (depth 3) {us(r50):.1f} µs = {r50 / f50:.2f}× a "
                  f"trivial FCALL ({us(f50):.1f} µs); batching on / off {r50 / off:.2f}×")
            broken = [line for r in depths for line in r.ledgers.broken]
            print(f"ledgers: {len(broken)} mismatches")
            return 1 if broken else 0
        print_depths(depths)
        print_breakdown(depths[1])
        phases, conc_ledgers, _ = run_throughput(url, args.procs, args.threads, settings,
                                                 seconds)
        print_throughput(phases, args.procs, args.threads)
        rows, memory, scale_ledgers = run_scale(url, settings)
        print_scale(rows, memory)
    ledgers = LedgerReport()
    for part in [*(d.ledgers for d in depths), conc_ledgers, scale_ledgers]:
        ledgers.merge(part)
    print_targets(depths, phases, args.procs * args.threads, rows, ledgers)
    print(f"\nelapsed {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f} "
          "at the end")
    if ledgers.broken:
        print(f"LEDGER CHECK FAILED on {len(ledgers.broken)} ledger(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
