"""An enterprise tenant with department workspaces: Marketing exhausts its budget while
Engineering and Support keep working; the admin moves $500 over and Marketing resumes.

    python examples/enterprise_reallocation.py
"""

from __future__ import annotations

from pathlib import Path

import allotment as al

CALL = al.Action("llm.completion", "anthropic:claude-sonnet-4-6")
DEPARTMENTS = {"marketing": 500, "engineering": 5_000, "support": 1_000}


def main() -> None:
    guard = al.Guard()
    guard.assign_plan("bigco", al.Plan.load(Path(__file__).with_name("plans.yaml"),
                                            "enterprise"))
    for name, limit in DEPARTMENTS.items():
        guard.set_budget(f"tenant:bigco/workspace:{name}", usd=limit, period="month")
    admin = guard.tenant("bigco")  # an operator's handle: this tenant and nothing else

    marketing = al.Subject(tenant="bigco", workspace="marketing")
    guard.reserve(marketing, CALL, al.usd(480)).commit(al.usd(480))
    try:
        guard.reserve(marketing, CALL, al.usd(50))
    except al.BudgetExceeded as denied:
        print("marketing:", denied)
    for other in ("engineering", "support"):
        guard.reserve(al.Subject(tenant="bigco", workspace=other), CALL, al.usd(50)).commit(
            al.usd(42))
        print(f"{other}: still working")

    moved = admin.transfer("tenant:bigco/workspace:engineering",
                           "tenant:bigco/workspace:marketing", al.usd(500),
                           idempotency_key="q4-realloc-1")
    print(f"moved $500: marketing now has "
          f"{al.format_amount(moved.destination.unit, moved.destination.remaining)}")
    guard.reserve(marketing, CALL, al.usd(50)).commit(al.usd(45))
    print("marketing: resumed")
    for b in admin.balances():
        if b.scope != "tenant:bigco" and b.unit is al.Unit.USD_MICROCENTS:
            print(f"{b.scope:35} allocated {al.format_amount(b.unit, b.allocated):>10} "
                  f"spent {al.format_amount(b.unit, b.spent):>8}")
    try:
        admin.transfer("tenant:bigco/workspace:support", "tenant:other/workspace:x",
                       al.usd(1))
    except al.Forbidden as refused:
        print("another tenant's budget:", refused)


if __name__ == "__main__":
    main()
