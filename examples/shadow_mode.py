"""Shadow mode: run a week of real traffic without denying anything, then read what enforce
mode would have refused, and size the budgets from the data.

    python examples/shadow_mode.py
"""

from __future__ import annotations

import random

import allotment as al

CALL = al.Action("llm.completion", "openai:gpt-4o")


def main() -> None:
    clock = al.ManualClock(1_794_787_200_000)  # 2026-11-10, a simulated week
    guard = al.Guard(al.MemoryStore(clock), mode="shadow")
    guard.set_budget("tenant:acme", usd=20, period="day")
    guard.set_quota("tenant:acme", calls=30, window="minute")
    rng = random.Random(7)
    for _ in range(7 * 24):  # an hour at a time
        for _ in range(rng.randint(0, 60)):
            r = guard.reserve(al.Subject(tenant="acme", workflow="chat"), CALL, al.usd("0.30"))
            r.commit(al.usd(rng.choice(["0.05", "0.12", "0.28"])))
        clock.advance(3_600_000)

    (tenant, *_) = guard.report("acme", period="month")  # reports count everything; the
    print(f"enforce mode would have denied {sum(tenant.denials.values())} calls: "  # audit
          f"{tenant.denials}")  # log keeps the latest records only
    latest = guard.audit("acme", types=["reservation.observed_denied"], limit=1)
    print(f"the latest would-be denial on record: {latest[0].reason} at {latest[0].scopes[0]}")
    for row in guard.report("acme", period="month"):
        ratio = row.committed_ratio()
        print(f"{row.scope:30} reservations {row.reservations:5}  committed/reserved "
              f"{ratio:.2f}  observed denials {sum(row.denials.values())}")
    start = 1_794_787_200_000
    daily = [guard.report("acme", period="day", at=start + day * 86_400_000)[0]
             for day in range(7)]
    spend = [row.committed[al.Unit.USD_MICROCENTS] for row in daily]
    print("daily spend vs the $20 budget:",
          ", ".join(al.format_amount(al.Unit.USD_MICROCENTS, s) for s in spend))
    print("a daily budget that would have denied nothing:",
          al.format_amount(al.Unit.USD_MICROCENTS, max(spend)))


if __name__ == "__main__":
    main()
