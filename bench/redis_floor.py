"""How far the store's scripts are from the least a script making their writes can cost.

    .venv/bin/python bench/redis_floor.py            # about 40 s
    .venv/bin/python bench/redis_floor.py --rounds 4 --calls 300

For scope depth 1, 3 and 6 (one USD budget per scope, as in redis_ops.py), the store builds
its own FCALL payloads for reserve and commit, and the same payloads go, one call after
another, to these scripts on one private redis-server:

- trivial: EVALSHA of `return 1`, the baseline of the targets (DESIGN.md §10); its round
           trip is timed as an FCALL of `return 1` (the store's calls are FCALLs);
- store:   the store's own reserve and commit;
- floor:   redis_floor.lua, which runs the commands the store's scripts run for these calls
           (due reservations looked up, and by reserve the tenant's mode and rules;
           definitions and ledgers read and written; the reservation's hash and its expiry
           entry; the audit entry with its sequence number; two report counters; by commit
           the usage counters) on the same stored formats, with none of the store's
           features and one check. The report
           prints the commands both ran per call, which must match;
- reservation: a reserve that holds the estimate on the ledgers and writes the reservation's
           hash and expiry entry (what a later commit needs), and nothing else;
- ledgers: a reserve that only reads definitions and ledgers and writes the ledgers back.

Server µs per call is INFO commandstats usec_per_call; each figure is the median over rounds.
The order of the scripts rotates round by round, so drift on this shared machine spreads
over all of them (10 rounds, the default, give each reserve script each place twice). Every
call's reply is checked: a refused or failed call stops the bench. ×t = multiple of the
trivial script in the same rounds.

The client's round trip of each call (p50 per round, median over rounds) is printed too, as
a multiple of a trivial FCALL's: the floor's says how far a sequential reserve making the
design's writes must be from a trivial round trip before any client work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import redis_ops as shared  # the server, budgets and statistics of the main Redis bench

import allotment as al
from allotment.reservation import commit_op
from allotment.stores.redis import RedisStore

FLOOR_LUA = Path(__file__).with_name("redis_floor.lua")
SCRIPTS = {"reserve": ("trivial", "store", "floor", "reservation", "ledgers"),
           "commit": ("trivial", "store", "floor")}
Call = tuple[list[str], list[Any]]  # keys, arguments


def payloads(store: RedisStore, ops: list[Any]) -> list[Call]:
    return [shared.script_call(store, op)[1:] for op in ops]


def accepted(op: str, reply: Any) -> bool:
    """A reply that did what was asked: an allowed reserve, a commit's charge (a refusal or
    an error is a string), the trivial script's 1."""
    if not isinstance(reply, list):
        return bool(reply == 1)
    return op == "commit" or reply[0] in {"ALLOW", b"ALLOW"}


def server_stats(store: RedisStore, op: str, run: Callable[[], list[Any]]) -> shared.Stats:
    """The server's command statistics of `run` alone; every call must have been accepted
    (a refused reserve costs less and would flatter its script)."""
    shared.reset_stats(store.client)
    replies = run()
    stats = shared.read_stats(store.client)
    refused = [reply for reply in replies if not accepted(op, reply)]
    if refused:
        raise SystemExit(f"{len(refused)} of {len(replies)} {op} calls failed: {refused[0]!r}")
    return stats


class Depth:
    """One tenant with a budget on each of `depth` scopes, and the calls of one round."""

    def __init__(self, url: str, depth: int) -> None:
        self.store = RedisStore(url=url)
        self.guard = al.Guard(self.store, ttl_ms=shared.TTL_MS)
        self.subject = shared.subject_of(f"floor-d{depth}", depth)
        shared.set_budgets(self.guard, self.subject)
        self.trivial = self.store.client.register_script(shared.TRIVIAL_LUA)

    def reserve_calls(self, n: int) -> list[Call]:
        op = partial(self.guard._reserve_op, self.subject, shared.ACTION, shared.ESTIMATE)
        return payloads(self.store, [op() for _ in range(n)])

    def commit_calls(self, n: int) -> list[Call]:
        """Commits of n reservations the store's own reserve makes first."""
        guard, subject = self.guard, self.subject
        held = [guard.reserve(subject, shared.ACTION, shared.ESTIMATE) for _ in range(n)]
        return payloads(self.store, [commit_op(r.id, shared.ACTUAL) for r in held])

    def run(self, op: str, script: str, calls: list[Call],
            times: list[int]) -> shared.Stats:
        """The server's statistics of `calls` to `script`; each call's round trip, as the
        client sees it (ns), appended to `times`."""
        client = self.store.client

        def timed(call: Callable[[], Any]) -> Any:
            start = time.perf_counter_ns()
            reply = call()
            times.append(time.perf_counter_ns() - start)
            return reply

        if script == "trivial":  # its round trip as an FCALL, as the store's calls are
            stats = server_stats(self.store, op, lambda: [self.trivial() for _ in calls])
            for _ in calls:
                timed(lambda: client.fcall("bench_trivial", 0))
            return stats
        name = (self.store._flows.names["reserve" if op == "reserve" else "settle"]
                if script == "store" else f"floor_{op if script == 'floor' else script}")
        return server_stats(self.store, op, lambda: [
            timed(lambda k=k, a=a: client.fcall(name, len(k), *k, *a)) for k, a in calls])


Key = tuple[str, str, int]  # op, script, depth


Measured = tuple[dict[Key, float], dict[Key, shared.Tally], dict[Key, float]]


def measure(rounds: int, calls: int) -> Measured:
    """By (op, script, depth): the median server µs per call, all the commands run, and the
    median of the rounds' client round trip p50s (µs)."""
    samples: dict[Key, list[float]] = {}
    tallies: dict[Key, shared.Tally] = {}
    trips: dict[Key, list[float]] = {}
    with shared.redis_server() as url:
        depths = {d: Depth(url, d) for d in shared.DEPTHS}
        client = depths[shared.DEPTHS[0]].store.client
        client.function_load(FLOOR_LUA.read_text(), replace=True)
        client.function_load(shared.TRIVIAL_FUNCTION, replace=True)
        for r in range(rounds + 1):  # round 0 warms up
            for op, scripts in SCRIPTS.items():
                order = scripts[r % len(scripts):] + scripts[:r % len(scripts)]
                for d, depth in depths.items():
                    for script in order:
                        batch = (depth.reserve_calls(calls) if op == "reserve"
                                 else depth.commit_calls(calls))
                        times: list[int] = []
                        stats = depth.run(op, script, batch, times)
                        if r > 0:
                            n, usec = stats.commands["call"]
                            samples.setdefault((op, script, d), []).append(usec / n)
                            tallies.setdefault((op, script, d), shared.Tally()).add(stats)
                            trips.setdefault((op, script, d), []).append(
                                statistics.median(times) / 1000)
        for depth in depths.values():
            depth.guard.close()
    return ({key: statistics.median(values) for key, values in samples.items()}, tallies,
            {key: statistics.median(values) for key, values in trips.items()})


def commands(tally: shared.Tally) -> str:
    return ", ".join(f"{name} {n:g}" for name, (n, _) in sorted(tally.inner().items()))


def report(med: dict[Key, float], tallies: dict[Key, shared.Tally],
           trips: dict[Key, float]) -> None:
    print("Server µs per call (median over rounds) and ×t, the multiple of the trivial script")
    first, last = shared.DEPTHS[0], shared.DEPTHS[-1]
    for op, scripts in SCRIPTS.items():
        print(f"\n{op:<12}" + "".join(f"{'d' + str(d):>8}{'×t':>6}" for d in shared.DEPTHS)
              + f"{'/scope':>8}")
        for script in scripts:
            line = f"{script:<12}"
            for d in shared.DEPTHS:
                us = med[(op, script, d)]
                line += f"{us:>8.1f}{us / med[(op, 'trivial', d)]:>6.1f}"
            if script != "trivial":  # for `return 1` the difference is noise
                per_scope = (med[(op, script, last)] - med[(op, script, first)]) / (last - first)
                line += f"{per_scope:>8.1f}"
            print(line)
        print("store ÷ floor " + "  ".join(
            f"d{d} {med[(op, 'store', d)] / med[(op, 'floor', d)]:.2f}" for d in shared.DEPTHS))
        for script in ("store", "floor"):  # the floor is fair only if these two lines match
            print(f"commands per call at depth {last}, {script}: "
                  f"{commands(tallies[(op, script, last)])}")
    print("\nRound trip as the client sees it, p50 µs (median over rounds), one raw FCALL after "
          "another\n(no guard, payloads built first); ×t = multiple of a trivial FCALL's round "
          "trip")
    for op, scripts in SCRIPTS.items():
        print(f"{op:<12}" + "".join(f"{'d' + str(d):>8}{'×t':>6}" for d in shared.DEPTHS))
        for script in scripts:
            print(f"  {script:<10}" + "".join(
                f"{trips[(op, script, d)]:>8.1f}"
                f"{trips[(op, script, d)] / trips[(op, 'trivial', d)]:>6.2f}"
                for d in shared.DEPTHS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds (default 10)")
    parser.add_argument("--calls", type=int, default=500, help="calls per script and round")
    args = parser.parse_args()
    report(*measure(args.rounds, args.calls))


if __name__ == "__main__":
    main()
