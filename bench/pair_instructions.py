"""Reserve+commit pairs at depth 3 on the memory store, for counting instructions.

Wall-clock figures on a shared machine move by tens of percent; the number of instructions
a pair executes does not. Run the script twice under callgrind, with N pairs and with none,
and divide the difference by N (the command is in BENCHMARKS.md). Comparing two checkouts
this way shows what a change costs the hot path, whatever else the machine is doing.

`--reduce` runs the N pairs (after the warm-up) inside one `functools.reduce`, so one run
under `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce`
counts only them (the call to the lambda adds about 0.9 k per pair); `--floor` runs
`core_ops.py`'s floor pair (a lock and three dict ledgers) the same way.
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable

import allotment as al

WARM_UP = 200


def _depth3() -> tuple[al.Guard, al.Subject, al.Action, al.Amount, al.Amount]:
    """The guard, subject, action, estimate and actual of `core_ops.py`'s depth-3 pair."""
    guard = al.Guard()
    subject = al.Subject(tenant="acme", workspace="production", app="assistant")
    for scope in subject.scopes():
        guard.set_budget(scope, usd=10_000_000)
    return guard, subject, al.Action("llm.completion", "openai:gpt-4o"), al.usd("0.05"), \
        al.usd("0.031")


def guard_pair() -> Callable[[], object]:
    """One `guard.reserve(...).commit(...)` at depth 3, as `core_ops.py` makes it."""
    guard, subject, action, estimate, actual = _depth3()
    return lambda: guard.reserve(subject, action, estimate).commit(actual)


def floor_pair() -> Callable[[], object]:
    """DESIGN §10's floor pair at depth 3, as `core_ops.py`'s `Floor`: under one lock, check
    room on three dict ledgers and hold the estimate; then release and charge."""
    lock = threading.Lock()
    ledgers = [{"allocated": 10**15, "reserved": 0, "spent": 0} for _ in range(3)]
    held, actual = al.usd("0.05").amount, al.usd("0.031").amount

    def pair() -> None:
        with lock:
            for ledger in ledgers:
                if ledger["allocated"] - ledger["reserved"] - ledger["spent"] < held:
                    raise RuntimeError("the floor's budget ran out")
            for ledger in ledgers:
                ledger["reserved"] += held
        with lock:
            for ledger in ledgers:
                ledger["reserved"] -= held
                ledger["spent"] += actual

    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", type=int, nargs="?", default=2_000)
    parser.add_argument("--reduce", action="store_true",
                        help="run the pairs inside one functools.reduce (see above)")
    parser.add_argument("--floor", action="store_true", help="the floor pair instead")
    args = parser.parse_args()
    if not (args.reduce or args.floor):  # the loop as first written, so figures compare
        guard, subject, action, estimate, actual = _depth3()
        for _ in range(WARM_UP + args.pairs):
            guard.reserve(subject, action, estimate).commit(actual)
        return
    pair = floor_pair() if args.floor else guard_pair()
    for _ in range(WARM_UP):
        pair()
    if args.reduce:
        functools.reduce(lambda _, __: pair(), range(args.pairs), None)
    else:
        for _ in range(args.pairs):
            pair()


if __name__ == "__main__":
    main()
