"""Per-run budgets in agent code: every run of an agent gets its own $2, and a tool loop that
would run forever is stopped by its run's budget while the tenant keeps its money.

    python examples/per_run_budgets.py
"""

from __future__ import annotations

import allotment as al

AGENT = "tenant:acme/workspace:production/workflow:research/agent:analyst"
SEARCH = al.Action("tool.call", "web_search")
THINK = al.Action("llm.completion", "openai:gpt-4o")


def agent_step(guard: al.Guard) -> None:
    """One step: a model call, then a tool call; the subject comes from al.scope."""
    with guard.reserve(None, THINK, al.usd("0.05")) as r:
        r.commit(al.usd("0.031"))
    with guard.reserve(None, SEARCH, al.usd("0.01")) as r:
        r.commit(al.usd("0.01"))


def main() -> None:
    guard = al.Guard()
    guard.set_budget("tenant:acme", usd=1_500, period="month")
    guard.set_budget(AGENT, usd=2, per="run")
    guard.set_quota("tenant:acme", concurrent=20)

    for run in ("run-7a3f", "run-8b4c"):
        steps = 0
        with al.scope(tenant="acme", workspace="production", workflow="research",
                      agent="analyst", run=run):
            try:
                while True:  # a loop that never decides it is done
                    agent_step(guard)
                    steps += 1
            except al.BudgetExceeded as stopped:
                print(f"{run}: stopped after {steps} steps: {stopped}")

    (month,) = guard.balances("tenant:acme", include_children=False)
    print(f"tenant spent {al.format_amount(month.unit, month.spent)}, remaining "
          f"{al.format_amount(month.unit, month.remaining)}")


if __name__ == "__main__":
    main()
