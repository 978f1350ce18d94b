"""Tiers from plans.yaml: a Starter tenant degrades to shorter answers before its month runs
out, upgrades to Pro mid-month keeping its spend, and a new tenant gets Free on first sight.

    python examples/tiers.py
"""

from __future__ import annotations

from pathlib import Path

import allotment as al

PLANS = al.Plan.load_all(Path(__file__).with_name("plans.yaml"))
CALL = al.Action("llm.completion", "openai:gpt-4o-mini")


def month(guard: al.Guard, tenant: str) -> al.Balance:
    return next(b for b in guard.balances(f"tenant:{tenant}", include_children=False)
                if b.unit is al.Unit.USD_MICROCENTS and b.period == "month")


def main() -> None:
    guard = al.Guard(default_plan=PLANS["free"])
    guard.assign_plan("acme", PLANS["starter"])
    capped = False
    for n in range(100):
        session = al.Subject(tenant="acme", dimensions={"session": f"s{n}"})
        try:
            r = guard.reserve(session, CALL, al.usd("1.90"))
        except al.BudgetExceeded as denied:
            print(f"starter: month used up after {n} sessions: {denied}")
            break
        if r.caps is not None and r.caps.max_tokens and not capped:
            capped = True
            print(f"starter: from session {n} on, answers are capped at "
                  f"max_tokens={r.caps.max_tokens} (under 20% of the month left)")
        r.commit(al.usd("1.90"))
        if n == 25:
            guard.assign_plan("acme", PLANS["pro"])
            b = month(guard, "acme")
            print(f"upgraded to pro: allocated {al.format_amount(b.unit, b.allocated)}, "
                  f"spend kept {al.format_amount(b.unit, b.spent)}")
            break

    newcomer = guard.reserve(al.Subject(tenant="newco"), CALL, al.usd("0.01"))
    print(f"newco on free: caps {newcomer.caps}; month "
          f"{al.format_amount(al.Unit.USD_MICROCENTS, month(guard, 'newco').allocated)}")
    newcomer.release()
    try:
        guard.reserve(al.Subject(tenant="newco"), al.Action("llm.completion", "openai:o1"),
                      al.usd("0.01"))
    except al.NotAllowed as refused:
        print(f"newco: {refused}")


if __name__ == "__main__":
    main()
