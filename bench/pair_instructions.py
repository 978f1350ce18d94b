"""Reserve+commit pairs at depth 3 on the memory store, for counting instructions.

Wall-clock figures on a shared machine move by tens of percent; the number of instructions
a pair executes does not. Run the script twice under callgrind, with N pairs and with none,
and divide the difference by N (the command is in BENCHMARKS.md). Comparing two checkouts
this way shows what a change costs the hot path, whatever else the machine is doing.
"""

from __future__ import annotations

import sys

import allotment as al

WARM_UP = 200


def main(pairs: int) -> None:
    guard = al.Guard()
    subject = al.Subject(tenant="acme", workspace="production", app="assistant")
    for scope in subject.scopes():
        guard.set_budget(scope, usd=10_000_000)
    action = al.Action("llm.completion", "openai:gpt-4o")
    estimate, actual = al.usd("0.05"), al.usd("0.031")
    for _ in range(WARM_UP + pairs):
        guard.reserve(subject, action, estimate).commit(actual)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000)
